import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import raw_checkpoint, tiny_config

from vaflax import sharding, train
from vaflax.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _np(x):
  if hasattr(x, 'dtype') and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  return np.asarray(x)


def _run_main(args, env_extra=None, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS='cpu', **(env_extra or {}))
  return subprocess.run([sys.executable, '-m', 'vaflax.main', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_the_loop_learns_va_on_the_synthetic_set(tmp_path, synthetic_data_dir):
  """300 steps of a ResNet-10 (8 wide, 32 px, batch 32): validation CCC well above chance
  (an untrained or constant predictor scores about 0). Measured 0.315 valence / 0.895 arousal
  (mean 0.605); with seeds 1 and 2 means of 0.496 and 0.549 (a ResNet-18's 400 steps: 0.509)."""
  c = tiny_config(synthetic_data_dir, total_steps=300, batch_size=32, eval_every_steps=0,
                  checkpoint_every_steps=0, log_every_steps=100)
  c.optimizer.lr = 3e-3
  c.input.eval_split = 'validation'
  m = train.train_and_evaluate(c, str(tmp_path / 'wd'))
  assert m['val/ccc_arousal'] > 0.6 and m['val/ccc_mean'] > 0.45, m


def _run_steps(config, batches, num_devices, fsdp=1):
  config.mesh.num_devices = num_devices
  config.mesh.fsdp = fsdp
  s = train.make_setup(config, 3072)
  state = s.state
  init = [_np(x) for x in jax.tree.leaves(state)]
  losses = []
  for i, b in enumerate(batches):
    state, m, ok = s.train_step(state, sharding.to_global(b, s.mesh), np.int32(i))
    losses.append(float(m['loss']))
    assert bool(ok)
  return losses, init, [_np(x) for x in jax.tree.leaves(state)], s


@pytest.mark.slow
def test_train_step_on_8_devices_equals_1_device(synthetic_data_dir):
  if jax.device_count() < 8:
    pytest.skip('needs 8 (fake) devices')
  c = tiny_config(synthetic_data_dir, batch_size=16)
  c.optimizer.name = 'sgd'  # Adam divides by sqrt(nu): fp32 noise on near-zero grads blows up
  c.optimizer.lr = 0.01
  ds, _ = pipeline.make_train_dataset(c)
  it = iter(ds)
  batches = [next(it) for _ in range(3)]
  l1, i1, p1, _ = _run_steps(c, batches, 1)
  l8, i8, p8, s8 = _run_steps(c, batches, 8)
  l42, i42, p42, s42 = _run_steps(c, batches, 8, fsdp=2)
  assert s8.mesh.shape == {'data': 8, 'fsdp': 1} and s42.mesh.shape == {'data': 4, 'fsdp': 2}
  # Parameters really are sharded on the fsdp axis somewhere.
  specs = {str(x.sharding.spec) for x in jax.tree.leaves(s42.state)}
  assert any('fsdp' in sp for sp in specs)
  # Same initialisation whatever the mesh.
  for a, b, d in zip(i1, i8, i42, strict=True):
    np.testing.assert_array_equal(b, a)
    np.testing.assert_array_equal(d, a)
  # Step 1 sees identical parameters: only the reduction order differs. Later steps compound
  # that fp32 noise through SGD updates (measured up to 6e-5 relative on a CCC loss of ~1.9).
  np.testing.assert_allclose(l8[0], l1[0], rtol=1e-5)
  np.testing.assert_allclose(l42[0], l1[0], rtol=1e-5)
  np.testing.assert_allclose(l8, l1, rtol=2e-4)
  np.testing.assert_allclose(l42, l1, rtol=2e-4)
  # fp32 reduction order differs across devices; through BatchNorm and a CCC loss on 16
  # examples that noise reaches a few % of the 3-step update of some leaves (measured at most
  # 2.8%, in the momentum of a BN bias). Compare every leaf's disagreement with the size of its
  # own update: a missing all-reduce or per-shard BN statistics would disagree by ~100%.
  for a0, a, b, d in zip(i1, p1, p8, p42, strict=True):
    if not np.issubdtype(a.dtype, np.floating):
      np.testing.assert_array_equal(b, a)
      np.testing.assert_array_equal(d, a)
      continue
    update = np.linalg.norm(a - a0)
    assert np.linalg.norm(b - a) <= 0.1 * update + 1e-6, (a.shape, np.linalg.norm(b - a), update)
    assert np.linalg.norm(d - a) <= 0.1 * update + 1e-6, (a.shape, np.linalg.norm(d - a), update)


@pytest.mark.slow
def test_unwritable_workdir_is_refused(tmp_path, synthetic_data_dir):
  """(An unknown config key: tests/bad_input_test.py.)"""
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  c = tiny_config(synthetic_data_dir)
  with pytest.raises(PermissionError, match='not writable'):
    train.train_and_evaluate(c, str(blocker / 'sub'))
  r = _run_main(['--config=configs/resnet_va.py:runlocal', f'--workdir={blocker}/sub',
                 f'--config.input.data_dir={synthetic_data_dir}'])
  assert r.returncode == 2 and 'not writable' in r.stderr and '--workdir' in r.stderr


def test_init_from_text_and_typed_sources_round_trip():
  """config.init_from <-> runs.WeightSource: every source of a ';' list, each with its own
  SRC=DST mapping (or none), survives parse -> format -> parse; `under` places targets."""
  from vaflax import runs  # noqa: PLC0415

  text = '/r/mae:encoder=encoder;/r/cnn;/r/t:=teacher,backbone=students/0/backbone'
  got = runs.parse_init_from(text)
  assert got == (runs.WeightSource('/r/mae', (('encoder', 'encoder'),)),
                 runs.WeightSource('/r/cnn'),
                 runs.WeightSource('/r/t', (('', 'teacher'), ('backbone', 'students/0/backbone'))))
  assert runs.format_init_from(got) == text and runs.parse_init_from(runs.format_init_from(got)) == got
  assert runs.parse_init_from(' /a ; ;/b: ') == (runs.WeightSource('/a'), runs.WeightSource('/b'))
  assert runs.WeightSource('/r/cnn').pairs() == [('', '')]
  assert runs.WeightSource('/r/cnn').under('students/1').mapping == (('', 'students/1'),)
  assert runs.WeightSource('/x', (('backbone', 'enc'),)).under('s/0').mapping == (('backbone', 's/0/enc'),)
  with pytest.raises(ValueError, match='SOURCE_PREFIX=TARGET_PREFIX'):
    runs.parse_init_from('/r/a:encoder')
  with pytest.raises(ValueError, match='contains'):
    runs.WeightSource('/odd;dir')


@pytest.mark.slow
def test_restore_is_the_saved_state_and_data_position(tmp_path, synthetic_data_dir):
  """train.restore (the loop's resume) returns the model and optimizer state that was saved and
  sets the Grain iterator to the saved position; runs.load_run reads the model alone."""
  from vaflax import runs  # noqa: PLC0415

  c = tiny_config(synthetic_data_dir, total_steps=2, checkpoint_every_steps=2,
                  **{'input.eval_split': ''})  # restore is the subject, not evaluation
  wd = str(tmp_path / 'run')
  train.train_and_evaluate(c, wd)
  _, raw = raw_checkpoint(wd)
  ds, n = pipeline.make_train_dataset(c)
  setup = train.make_setup(c, n, init=False)
  it = iter(ds)
  with runs.checkpoint_manager(wd, async_save=False) as mngr:
    state, meta = train.restore(setup, mngr, it)
  assert meta['step'] == 2
  leaves = [_np(x) for x in jax.tree.leaves(state)]
  want = [_np(x) for x in jax.tree.leaves((raw['model'], raw['optimizer']))]
  assert len(leaves) == len(want)
  for a, b in zip(leaves, want, strict=True):  # what the files hold, read without a target
    np.testing.assert_array_equal(a, b)
  fresh = iter(pipeline.make_train_dataset(c)[0])
  for _ in range(2):  # the two batches the run consumed
    next(fresh)
  np.testing.assert_array_equal(next(it)['index'], next(fresh)['index'])
  run = runs.load_run(wd)
  model_leaves = [_np(x) for x in jax.tree.leaves(run.state)]
  for a, b in zip(model_leaves, [_np(x) for x in jax.tree.leaves(state[0])], strict=True):
    np.testing.assert_array_equal(a, b)
