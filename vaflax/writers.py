"""Metric writers: DIR/metrics.jsonl (one JSON object per logged step), TensorBoard event files
(tensorboardX, no TensorFlow) and a console progress line with steps/s and ETA.

Only process 0 writes files; every process may print. (Named `writers`, not `logging`, so it
never shadows the standard library module.)
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax
import numpy as np

from vaflax import fileio


def _clean(v):
  v = float(np.asarray(v))
  return v if math.isfinite(v) else None  # JSON has no NaN/inf


class MetricWriter:
  def __init__(self, workdir: str, *, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if self.enabled and tensorboard:
      from tensorboardX import SummaryWriter  # noqa: PLC0415 -- optional at import time

      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled or not metrics:
      return
    rec = {'step': int(step)}
    for k, v in metrics.items():
      rec[k] = _clean(v)
    with open(self.path, 'a') as f:
      f.write(json.dumps(rec) + '\n')
    if self._tb is not None:
      for k, v in rec.items():
        if k != 'step' and v is not None:
          self._tb.add_scalar(k, v, step)
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


FINAL_METRICS = 'final_metrics.json'


def write_final_metrics(workdir: str, step: int, metrics: dict) -> dict:
  """workdir/final_metrics.json (written atomically by process 0): the record a finished run or
  stage leaves; vaflax/stages.py reads it to decide that a stage is finished."""
  rec = {'step': int(step)}
  for k, v in metrics.items():
    rec[k] = v if isinstance(v, str) or v is None else _clean(v)
  if jax.process_index() == 0:
    fileio.write_json(os.path.join(workdir, FINAL_METRICS), rec)
  return rec


def read_final_metrics(workdir: str) -> dict | None:
  path = os.path.join(workdir, FINAL_METRICS)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def results_line(workdir: str, earlier: bool = False) -> str:
  """The last line of a run: where its results are, and its CCC (last and best evaluation)."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  rec = read_final_metrics(workdir) or {}
  history = read_metrics(workdir)
  parts = []
  for key in sorted(k for k, v in rec.items() if k.endswith('ccc_mean') and v is not None):
    seen = [(h[key], h['step']) for h in history if h.get(key) is not None]
    best, at = max(seen) if seen else (rec[key], rec.get('step'))
    parts.append(f'{key} {rec[key]:.4f}' + (f' (best {best:.4f} at step {at})'
                                               if len(seen) > 1 else ''))
  state = ('finished earlier (nothing to train; raise --config.total_steps to train on)'
           if earlier else 'finished')
  return (f'Run {state} at step {rec.get("step", "?")}: {", ".join(parts) or "no CCC recorded"}. '
          f'Results in {workdir}: {FINAL_METRICS}, metrics.jsonl (curves), checkpoints/.')


class Progress:
  """A console line per report: step, steps/s over the last interval, ETA, and a few metrics."""

  def __init__(self, total_steps: int, start_step: int = 0, stream=sys.stdout):
    self.total = total_steps
    self.stream = stream
    self._t, self._s = time.time(), start_step

  def report(self, step: int, metrics: dict | None = None) -> float:
    now = time.time()
    rate = (step - self._s) / max(now - self._t, 1e-9)
    self._t, self._s = now, step
    eta = (self.total - step) / rate if rate > 0 else float('inf')
    eta_s = f'{int(eta // 60)}m{int(eta % 60):02d}s' if math.isfinite(eta) else '?'
    width = 24
    done = int(width * step / max(self.total, 1))
    bar = '#' * done + '.' * (width - done)
    extras = ' '.join(f'{k}={float(v):.4g}' for k, v in (metrics or {}).items())
    if jax.process_index() == 0:
      print(f'[{bar}] {step}/{self.total} {rate:.2f} steps/s ETA {eta_s} {extras}',
            file=self.stream, flush=True)
    return rate
