#!/usr/bin/env bash
# Start N vaflax processes on this machine, joined through a coordinator on loopback.
#
#   launch/local_multiprocess.sh NUM_PROCESSES --config=configs/resnet_va.py:runlocal --workdir=/tmp/w [--config.x=y ...]
#
# Every process runs the same `python -m vaflax.main` with JAX_COORDINATOR_ADDRESS,
# JAX_NUM_PROCESSES and JAX_PROCESS_ID set; vaflax/main.py calls jax.distributed.initialize() from
# them. Each process reads its own shard of the data (records process_index::process_count); the
# global batch (config.batch_size) is split evenly over processes.
#
# On a CPU-only machine each process gets VAFLAX_LOCAL_CPU_DEVICES (default 4) fake CPU devices
# and Gloo collectives, so this exercises the multi-host code path of a cluster on one machine.
# On a machine with GPUs, set VAFLAX_GPUS_PER_PROCESS=1 to give process i GPU i only.
# Logs: WORKDIR/logs/process_<i>.log (process 0 is also shown on the terminal).
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
n="$1"; shift
workdir=""
for a in "$@"; do
  case "$a" in --workdir=*) workdir="${a#--workdir=}" ;; esac
done
if [[ -z "$workdir" ]]; then
  echo "error: pass --workdir=DIR (every process writes to the same workdir)" >&2
  exit 2
fi
mkdir -p "$workdir/logs"
python="${PYTHON:-python}"
port="${VAFLAX_COORDINATOR_PORT:-$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"

export JAX_COORDINATOR_ADDRESS="127.0.0.1:${port}"
export JAX_NUM_PROCESSES="$n"
if [[ "${JAX_PLATFORMS:-}" == "cpu" ]] || ! "$python" -c 'import jax, sys; sys.exit(jax.default_backend() == "cpu")' 2>/dev/null; then
  export JAX_PLATFORMS=cpu
  export JAX_NUM_CPU_DEVICES="${VAFLAX_LOCAL_CPU_DEVICES:-4}"
  export JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo
fi

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup INT TERM
for ((i = n - 1; i >= 0; i--)); do
  log="$workdir/logs/process_${i}.log"
  if [[ -n "${VAFLAX_GPUS_PER_PROCESS:-}" ]]; then
    export CUDA_VISIBLE_DEVICES="$i"
  fi
  if [[ $i -eq 0 ]]; then
    JAX_PROCESS_ID=$i "$python" -m "${VAFLAX_MODULE:-vaflax.main}" "$@" > >(tee "$log") 2>&1 &
  else
    JAX_PROCESS_ID=$i "$python" -m "${VAFLAX_MODULE:-vaflax.main}" "$@" > "$log" 2>&1 &
  fi
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do
  wait "$p" || status=$?
done
if [[ $status -ne 0 ]]; then
  echo "a process exited with status $status; see $workdir/logs/process_*.log" >&2
fi
exit $status
