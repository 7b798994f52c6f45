"""Preemption (SIGTERM, SIGKILL) with bit-identical resume, and the non-finite guard."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import raw_checkpoint, tiny_config

from vaflax import tasks, train
from vaflax.tasks import supervised

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _params(workdir, step=None):
  step, st = raw_checkpoint(workdir, step)
  out = []
  for x in jax.tree.leaves(st):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    out.append(np.asarray(x))
  return step, out


def _args(workdir, data_dir, tensorboard=False):
  return [sys.executable, '-m', 'vaflax.main', '--config=configs/resnet_va.py:runlocal',
          f'--workdir={workdir}', f'--config.input.data_dir={data_dir}',
          '--config.model.depth=10', '--config.model.width=8', '--config.model.head_hidden=16',
          '--config.image_size=32', '--config.batch_size=8', '--config.total_steps=10',
          '--config.checkpoint_every_steps=2', '--config.log_every_steps=2',
          '--config.eval_every_steps=10', f'--config.tensorboard={tensorboard}',
          '--config.mesh.num_devices=1', '--config.schedule.warmup_steps=3']


def _env():
  return dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')


def _wait_for_checkpoint(workdir, proc, min_step, timeout=240):
  t0 = time.time()
  d = os.path.join(workdir, 'checkpoints')
  while time.time() - t0 < timeout:
    if proc.poll() is not None:
      raise AssertionError(f'run ended before being killed: {proc.stderr.read()[-2000:]}')
    steps = [int(s) for s in (os.listdir(d) if os.path.isdir(d) else []) if s.isdigit()]
    if steps and max(steps) >= min_step:
      return max(steps)
    time.sleep(0.05)
  raise AssertionError('no checkpoint appeared')


@pytest.mark.slow
def test_killed_run_resumes_bit_identical(tmp_path, synthetic_data_dir):
  """A real SIGKILL at a random checkpoint, then a real SIGTERM at a later checkpoint of the
  resumed run: the third run ends bit-identical to one straight run (a resume of a resume).
  The straight run is `python -m vaflax.main` end to end: its records, config and event files."""
  ref, cut = tmp_path / 'ref', tmp_path / 'cut'
  r = subprocess.run(_args(ref, synthetic_data_dir, tensorboard=True), cwd=REPO, env=_env(),
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  recs = [json.loads(line) for line in open(ref / 'metrics.jsonl')]
  train_recs = [x for x in recs if 'train/loss' in x]
  assert [x['step'] for x in train_recs] == [2, 4, 6, 8, 10]
  assert all(np.isfinite(x['train/loss']) for x in train_recs)
  (val,) = [x for x in recs if 'val/ccc_valence' in x]
  assert val['step'] == 10 and np.isfinite(val['val/ccc_valence'] + val['val/ccc_arousal'])
  assert json.load(open(ref / 'config.json'))['model_name'] == 'resnet'
  assert os.listdir(ref / 'tensorboard')
  s1, p1 = _params(str(ref))
  f1 = json.load(open(ref / 'final_metrics.json'))
  min_step = int(np.random.default_rng(0).integers(2, 5))  # of 10; checkpoints every 2
  for sig in (signal.SIGKILL, signal.SIGTERM):
    p = subprocess.Popen(_args(cut, synthetic_data_dir), cwd=REPO, env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reached = _wait_for_checkpoint(str(cut), p, min_step=min_step)
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    if sig == signal.SIGKILL:
      assert p.returncode == -signal.SIGKILL
      # The resumed run must train and write a checkpoint of its own before its SIGTERM.
      kept = max(int(s) for s in os.listdir(cut / 'checkpoints') if s.isdigit())
      assert reached <= kept <= 6, (reached, kept)
      min_step = kept + 2
    else:
      # Either it was still training (checkpoint + exit 75) or it had just finished (exit 0).
      assert p.returncode in (train.PREEMPTED_EXIT_CODE, 0), err[-2000:]
      if p.returncode == train.PREEMPTED_EXIT_CODE:
        assert 'Preempted' in out
  r = subprocess.run(_args(cut, synthetic_data_dir), cwd=REPO, env=_env(), capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  s2, p2 = _params(str(cut))
  assert s1 == s2 == 10
  for a, b in zip(p1, p2, strict=True):
    np.testing.assert_array_equal(a, b)
  f2 = json.load(open(cut / 'final_metrics.json'))
  assert f1['val/ccc_valence'] == f2['val/ccc_valence']


def _patch_loss(monkeypatch, loss_fn):
  task = tasks.get('supervised')
  monkeypatch.setitem(tasks.TASKS, 'supervised', dataclasses.replace(task, loss_fn=loss_fn))


def _poison(record):
  """A loss_fn that is NaN whenever record `record` is in the batch."""
  clean = supervised.loss_fn

  def loss_fn(model, batch, rng, config):
    loss, m = clean(model, batch, rng, config)
    return jnp.where(jnp.any(batch['index'] == record), jnp.nan, loss), m
  return loss_fn


def _record_first_drawn_at(config, step):
  """A record id that the train iterator draws for the first time at `step`."""
  from vaflax.data import pipeline  # noqa: PLC0415

  it = iter(pipeline.make_train_dataset(config)[0])
  seen = set()
  for _ in range(step):
    seen.update(next(it)['index'].tolist())
  return next(r for r in next(it)['index'].tolist() if r not in seen)


@pytest.mark.slow
def test_nonfinite_stops_with_step_ids_and_last_good_checkpoint(tmp_path, synthetic_data_dir, monkeypatch):
  c = tiny_config(synthetic_data_dir, total_steps=12, checkpoint_every_steps=100, eval_every_steps=100)
  bad = 5
  record = _record_first_drawn_at(c, bad)
  _patch_loss(monkeypatch, _poison(record))
  with pytest.raises(train.NonFiniteError, match=f'at step {bad} ') as e:
    train.train_and_evaluate(c, str(tmp_path / 'w'))
  assert str(record) in str(e.value) and 'skip_nonfinite' in str(e.value)
  # The bad update was not applied; the checkpoint is numbered by the steps it holds (the check
  # runs one step late so the device never idles), with the data iterator at the same position.
  step, got = _params(str(tmp_path / 'w'))
  assert step in (bad + 1, bad + 2)  # checked one step late so the device never idles
  assert all(np.all(np.isfinite(x)) for x in got if x.dtype.kind == 'f')


@pytest.mark.slow
def test_skip_nonfinite_counts_and_finishes(tmp_path, synthetic_data_dir, monkeypatch):
  c = tiny_config(synthetic_data_dir, total_steps=12, checkpoint_every_steps=100, eval_every_steps=100,
                  log_every_steps=12, skip_nonfinite=True, **{'input.eval_split': ''})
  record = _record_first_drawn_at(c, 4)
  _patch_loss(monkeypatch, _poison(record))
  train.train_and_evaluate(c, str(tmp_path / 'w'))
  recs = [json.loads(x) for x in open(tmp_path / 'w' / 'metrics.jsonl')]
  assert [r['train/skipped_nonfinite'] for r in recs if 'train/skipped_nonfinite' in r] == [1]
  _, got = _params(str(tmp_path / 'w'))
  assert all(np.all(np.isfinite(x)) for x in got if x.dtype.kind == 'f')
