"""Test session setup: CPU only, 8 fake devices, absl flags parsed, one shared synthetic build."""

import fcntl
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Tests run a handful of steps: XLA's backend optimisations cost more compile time than they save
# (about 25% of the suite's CPU time). Subprocess tests inherit this too.
if '--xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0').strip()

import jax  # noqa: E402

jax.config.update('jax_num_cpu_devices', 8)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

# Grain's mp_prefetch reads absl flags; unparsed, it raises UnparsedFlagAccessError.
flags.FLAGS.mark_as_parsed()


def pytest_configure(config):
  """One persistent XLA compilation cache for the whole test run: its pytest-xdist workers and
  the subprocesses of the CLI tests (JAX_COMPILATION_CACHE_DIR) read what another process
  already compiled (the same tiny models' steps, predict's forward on the shared tiny run, a
  straight, a cut and a resumed run). It saved about a fifth of the CPU time of the predict,
  evaluate and api tests. The first process (the xdist controller, or pytest without xdist)
  makes the folder; the workers it starts inherit its environment. VAFLAX_TEST_XLA_CACHE=''
  turns it off."""
  del config
  import tempfile  # noqa: PLC0415

  if 'VAFLAX_TEST_XLA_CACHE' not in os.environ:
    os.environ['VAFLAX_TEST_XLA_CACHE'] = tempfile.mkdtemp(prefix='vaflax-xla-cache-')
    os.environ['VAFLAX_TEST_XLA_CACHE_OWNER'] = str(os.getpid())
  cache = os.environ['VAFLAX_TEST_XLA_CACHE']
  if not cache:
    return
  settings = {'jax_compilation_cache_dir': cache,
              'jax_persistent_cache_min_compile_time_secs': 0.0,
              'jax_persistent_cache_min_entry_size_bytes': 0}
  for name, value in settings.items():
    jax.config.update(name, value)
    os.environ[name.upper()] = str(value)  # the CLI tests' subprocesses


def pytest_unconfigure(config):
  del config
  import shutil  # noqa: PLC0415

  if os.environ.get('VAFLAX_TEST_XLA_CACHE_OWNER') == str(os.getpid()):
    shutil.rmtree(os.environ['VAFLAX_TEST_XLA_CACHE'], ignore_errors=True)


@pytest.fixture(scope='session')
def synthetic_data_dir(tmp_path_factory):
  """synthetic_va built once per test run (about 13 s on 2 cores), shared by the pytest-xdist
  workers: the first worker to take the lock builds it, the others wait for its marker. (Caches
  written into it later, e.g. balance's VA labels, are written atomically.)"""
  import time  # noqa: PLC0415

  from vaflax.data import build  # noqa: PLC0415

  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent  # the run's base temp, common to its workers
  d, done = root / 'tfds_shared', root / 'tfds_shared.built'
  try:
    os.mkdir(root / 'tfds_shared.lock')
  except FileExistsError:
    t0 = time.time()
    while not done.exists():
      if time.time() - t0 > 900:
        raise TimeoutError(f'{d}: another worker took the build lock and did not finish') from None
      time.sleep(0.5)
    return str(d)
  build.build('synthetic_va', str(d), verbose=False)
  done.write_text('ok')
  return str(d)


def pytest_collection_modifyitems(config, items):
  """The tiers: a test that needs the built synthetic set (a ~13 s build, then training or
  evaluation on it) is slow by that alone; others carry @pytest.mark.slow where they take
  more than a few seconds. `pytest -m "not slow"` is the fast tier of the edit-test loop."""
  del config
  for item in items:
    if 'synthetic_data_dir' in item.fixturenames:
      item.add_marker(pytest.mark.slow)


FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'torch')


def fixture(name):
  return os.path.join(FIXTURES, name)


def rel_diff(got, want) -> float:
  """max |got - want| / max |want|: the fixtures' tolerance is 1e-4."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def set_fields(c, **overrides):
  """Sets dotted config fields in place ('model.width': 8) and returns the config."""
  for k, v in overrides.items():
    node = c
    *path, last = k.split('.')
    for p in path:
      node = node[p]
    node[last] = v
  return c


def tiny_config(data_dir, **overrides):
  """The runlocal ResNet config shrunk to seconds: 8-wide ResNet-10 at 32 px on 1 device (half
  the blocks of ResNet-18: each run traces, lowers and compiles about 1 s less)."""
  from configs import resnet_va  # noqa: PLC0415

  c = resnet_va.get_config('runlocal')
  c.input.data_dir = data_dir
  c.model.depth = 10
  c.model.width = 8
  c.model.head_hidden = 16
  c.image_size = 32
  c.batch_size = 8
  c.total_steps = 4
  c.log_every_steps = 2
  c.eval_every_steps = 4
  c.checkpoint_every_steps = 2
  c.schedule.warmup_steps = 0
  c.mesh.num_devices = 1
  c.tensorboard = False
  c.input.eval_split = 'test'
  return set_fields(c, **overrides)


def tiny_run(tmp_path_factory, data_dir):
  """A workdir written by the real loop: tiny ResNet, 1 train step, no eval (shared by the
  evaluate and predict tests of one session)."""
  from vaflax import train  # noqa: PLC0415

  base = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    base = base.parent  # one run for all xdist workers of the session
  wd = base / 'tiny_run_1step'
  with open(base / 'tiny_run_1step.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be training it right now
    if not (wd / 'final_metrics.json').exists():
      c = tiny_config(data_dir, total_steps=1, checkpoint_every_steps=1, eval_every_steps=1,
                      log_every_steps=1)
      c.input.eval_split = ''
      train.train_and_evaluate(c, str(wd))
  return str(wd)


def raw_checkpoint(workdir, step=None):
  """(step, {'model': pure dict, 'optimizer': pure dict or absent}) of a run's checkpoint, read
  without a target (what a file holds, independent of vaflax's restore code)."""
  import orbax.checkpoint as ocp  # noqa: PLC0415

  from vaflax import checkpoint  # noqa: PLC0415 -- its manager restores off the main thread

  with checkpoint.manager(os.path.join(workdir, 'checkpoints'), async_save=False) as m:
    step = m.latest_step() if step is None else step
    items = ['model'] + (['optimizer'] if 'optimizer' in m.item_metadata(step) else [])
    r = m.restore(step, args=ocp.args.Composite(
        **{k: ocp.args.StandardRestore() for k in items}))
  return step, {k: r[k] for k in items}
