#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM pod slice (v4-32, v5p-64, ...).
#
#   launch/tpu_pod.sh TPU_NAME ZONE --config=configs/mae_va.py --workdir=gs://bucket/runs/mae_va [--config.x=y ...]
#
# Runs the same `python -m vaflax.main` on all workers at once (gcloud ... ssh --worker=all).
# VAFLAX_DISTRIBUTED=auto makes vaflax/main.py call jax.distributed.initialize() without
# arguments: on Cloud TPU, JAX finds the coordinator, the number of processes and this worker's
# id itself. --workdir must be visible to every worker (a GCS bucket or a shared disk); the data
# dir too (--config.input.data_dir=gs://... or the same path on every worker).
#
# Environment: VAFLAX_DIR (where the repository is checked out on the workers; default ~/vaflax),
# PYTHON (default python3; vaflax[tpu] installed there), PROJECT (gcloud project, optional),
# VAFLAX_MODULE (default vaflax.main; vaflax.predict: each worker predicts its own shard of a
# collection, from TPU_WORKER_ID / TPU_WORKER_HOSTNAMES, docs/predict.md).
# First time: put the repository on every worker and install it, e.g.
#   gcloud compute tpus tpu-vm ssh TPU_NAME --zone ZONE --worker=all \
#     --command='git clone <repo> ~/vaflax && cd ~/vaflax && pip install -e ".[tpu]"'
# Maintenance events send SIGTERM: vaflax checkpoints and exits 75; run this script again to resume.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
tpu="$1"; zone="$2"; shift 2
dir="${VAFLAX_DIR:-~/vaflax}"
python="${PYTHON:-python3}"
module="${VAFLAX_MODULE:-vaflax.main}"
args="$(printf ' %q' "$@")"
log="vaflax-\$(hostname).log"
project=()
if [[ -n "${PROJECT:-}" ]]; then project=(--project "$PROJECT"); fi

gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" "${project[@]}" --worker=all \
  --command="set -o pipefail; cd ${dir} && VAFLAX_DISTRIBUTED=auto ${python} -m ${module}${args} 2>&1 | tee ${log}"
