#!/usr/bin/env bash
# Quadrants two ways (docs/quadrants.md): regress VA then classify, vs a 4-way quadrant head.
#
#   bash benchmarks/quadrant_comparison.sh [OUT_DIR] [--config.* overrides for both runs]
#   STEPS=1200 bash benchmarks/quadrant_comparison.sh /tmp/qc --config.input.data_dir=/data/tfds
#
# Trains configs/resnet_va.py:runlocal twice for $STEPS steps (default 400) -- plain VA
# regression, and the same with model.quadrant_head=True and loss.quadrant_weight=$QW (default 1)
# -- evaluates both on the test split with `python -m vaflax.evaluate`, and prints a table. For
# real data pass e.g. --config.input.dataset=affectnet (and a larger STEPS); SPLIT picks the split.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/quadrant_comparison}
shift || true
STEPS=${STEPS:-400}
QW=${QW:-1.0}
SPLIT=${SPLIT:-test}
PY=${PYTHON:-python}
COMMON=(--config=configs/resnet_va.py:runlocal "--config.total_steps=$STEPS"
        "--config.eval_every_steps=$STEPS" "--config.checkpoint_every_steps=$STEPS"
        --config.log_every_steps=100 "$@")
$PY -m vaflax.main "${COMMON[@]}" --workdir="$OUT/regress"
$PY -m vaflax.main "${COMMON[@]}" --workdir="$OUT/head" --config.model.quadrant_head=True \
    "--config.loss.quadrant_weight=$QW"
for run in regress head; do
  $PY -m vaflax.evaluate --workdir="$OUT/$run" --split="$SPLIT" --output="$OUT/$run/eval"
done
$PY - "$OUT" "$SPLIT" <<'PYEOF'
import glob, json, sys
out, split = sys.argv[1], sys.argv[2]
def load(run):
  return json.load(open(glob.glob(f'{out}/{run}/eval/metrics_*_{split}.json')[0]))
r, h = load('regress'), load('head')
rows = [('VA regression (CCC loss) -> va_to_quadrant', r, 'quadrant_'),
        ('VA + quadrant head -> va_to_quadrant', h, 'quadrant_'),
        ('VA + quadrant head -> argmax of the head', h, 'quadrant_head_')]
print(f"\n{r['dataset']}/{split}, {r['metrics'].get('quadrant_count', 0):.0f} frames, "
      f"checkpoint step {r['checkpoint_step']}\n")
print('| model -> quadrant | CCC mean | quadrant accuracy | quadrant macro-F1 |')
print('|---|---|---|---|')
for name, rec, p in rows:
  m = rec['metrics']
  print(f"| {name} | {m['ccc_mean']:.3f} | {m[p + 'accuracy']:.3f} | {m[p + 'macro_f1']:.3f} |")
PYEOF
