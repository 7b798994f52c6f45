"""Test session setup: CPU only, 8 fake devices, absl flags parsed, one shared synthetic build."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Tests run a handful of steps: XLA's backend optimisations cost more compile time than they save
# (about 25% of the suite's CPU time). Subprocess tests inherit this too.
if '--xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0').strip()

import jax  # noqa: E402

jax.config.update('jax_num_cpu_devices', 8)

import pytest  # noqa: E402
from absl import flags  # noqa: E402

# Grain's mp_prefetch reads absl flags; unparsed, it raises UnparsedFlagAccessError.
flags.FLAGS.mark_as_parsed()


def _run_root(tmp_path_factory):
  """The run's base temp dir, common to its pytest-xdist workers."""
  root = tmp_path_factory.getbasetemp()
  return root.parent if os.environ.get('PYTEST_XDIST_WORKER') else root


@pytest.fixture(scope='session', autouse=True)
def _xla_compilation_cache(tmp_path_factory):
  """One persistent XLA compilation cache for the run, shared by the xdist workers and the
  subprocesses they start (through the JAX_* environment). Tests build the same tiny models again
  and again (`tiny_config`): a repeated compile becomes a file read. The size limit turns on
  JAX's file lock (the `filelock` package), so no worker reads a half-written entry; a broken
  entry would only be recompiled (JAX warns). Cached and fresh executables are the same binary,
  so bit-identical resume tests are unaffected."""
  from jax.experimental.compilation_cache import compilation_cache  # noqa: PLC0415

  settings = {'jax_compilation_cache_dir': str(_run_root(tmp_path_factory) / 'xla_cache'),
              'jax_persistent_cache_min_compile_time_secs': 0.0,
              'jax_persistent_cache_min_entry_size_bytes': 0,
              'jax_compilation_cache_max_size': 16 << 30}
  for name, value in settings.items():
    jax.config.update(name, value)
    os.environ[name.upper()] = str(value)
  compilation_cache.reset_cache()
  yield


@pytest.fixture(scope='session')
def synthetic_data_dir(tmp_path_factory):
  """synthetic_va built once per test run (about 25 s), shared by the pytest-xdist workers: the
  first worker to take the lock builds it, the others wait for its marker. (Caches written into
  it later, e.g. balance's VA labels, are written atomically.)"""
  import time  # noqa: PLC0415

  from vaflax.data import build  # noqa: PLC0415

  root = _run_root(tmp_path_factory)
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
  """The runlocal ResNet config shrunk to seconds: 8-wide ResNet-18 at 32 px on 1 device."""
  from configs import resnet_va  # noqa: PLC0415

  c = resnet_va.get_config('runlocal')
  c.input.data_dir = data_dir
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


def raw_checkpoint(workdir, step=None):
  """(step, {'model': pure dict, 'optimizer': pure dict or absent}) of a run's checkpoint, read
  without a target (what a file holds, independent of vaflax's restore code)."""
  import orbax.checkpoint as ocp  # noqa: PLC0415

  with ocp.CheckpointManager(os.path.join(workdir, 'checkpoints')) as m:
    step = m.latest_step() if step is None else step
    items = ['model'] + (['optimizer'] if 'optimizer' in m.item_metadata(step) else [])
    r = m.restore(step, args=ocp.args.Composite(
        **{k: ocp.args.StandardRestore() for k in items}))
  return step, {k: r[k] for k in items}
