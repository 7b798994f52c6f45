r"""Examples/s of the Grain training pipeline alone (read + decode + crop + augment + batch).

  JAX_PLATFORMS=cpu python benchmarks/pipeline_throughput.py \
      --config=configs/resnet_va.py:runlocal --workers=0,1,2 --batches=60

No model runs: the loop only pulls batches from `pipeline.make_train_dataset(config)`, the same
dataset the trainer iterates (same ops string, balancing, mixing, windows). For each value of
--workers (config.input.num_workers: 0 = ReadOptions threads in this process, N = N worker
processes through Grain's mp_prefetch) it discards --skip batches (worker start-up, first file
opens), then times --batches batches and prints examples/s, examples/s per worker process, and
the CPU time this process and its children used per example. Config overrides as in main
(--config.image_size=112 --config.input.pp_train=...).

To size a GPU's data loading: workers needed >= (the model's examples/s from
`python -m vaflax.benchmark --json`, cached phase) / (examples/s per worker here).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/<x>.py[:args]).')
_WORKERS = flags.DEFINE_list('workers', ['0', '1', '2'], 'Values of config.input.num_workers.')
_BATCHES = flags.DEFINE_integer('batches', 60, 'Timed batches per setting.')
_SKIP = flags.DEFINE_integer('skip', 5, 'Untimed batches first.')
_JSON = flags.DEFINE_bool('json', False, 'One JSON line per setting.')
flags.mark_flags_as_required(['config'])


def _cpu_seconds() -> float:
  own = resource.getrusage(resource.RUSAGE_SELF)
  kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # finished worker processes only
  return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(config, workers: int, batches: int, skip: int) -> dict:
  from vaflax.data import pipeline  # noqa: PLC0415

  config.input.num_workers = workers
  ds, _ = pipeline.make_train_dataset(config)
  it = iter(ds)
  for _ in range(skip):
    next(it)
  cpu0, t0 = _cpu_seconds(), time.perf_counter()
  n = 0
  for _ in range(batches):
    b = next(it)
    n += len(b['image'])
  wall = time.perf_counter() - t0
  cpu = _cpu_seconds() - cpu0
  del it
  eps = n / wall
  return {'workers': workers, 'examples': n, 'seconds': round(wall, 3),
          'examples_per_sec': round(eps, 1),
          'examples_per_sec_per_worker': round(eps / max(workers, 1), 1),
          # Worker processes' CPU is counted only once they exit (RUSAGE_CHILDREN): with
          # workers > 0 this is the main process alone, a lower bound.
          'main_process_cpu_ms_per_example': round(1000 * cpu / n, 2),
          'image_shape': list(b['image'].shape[1:]), 'load_avg': os.getloadavg()}


def main(argv):
  del argv
  config = _CONFIG.value
  rows = [measure(config, int(w), _BATCHES.value, _SKIP.value) for w in _WORKERS.value]
  for r in rows:
    if _JSON.value:
      print(json.dumps(r))
    else:
      print(f"workers={r['workers']}: {r['examples_per_sec']:8.1f} examples/s "
            f"({r['examples_per_sec_per_worker']:.1f} per worker), "
            f"{r['main_process_cpu_ms_per_example']:.2f} ms main-process CPU per example, "
            f"images {r['image_shape']}, load {r['load_avg'][0]:.2f}")


if __name__ == '__main__':
  app.run(main)
