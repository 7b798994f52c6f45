"""vaflax/cpu.py: with its settings an XLA:CPU computation reuses its temporaries' block
(no page faults); without them glibc maps and unmaps it every call. Each case runs in a fresh
process, since the settings only work before JAX starts its backends."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A jitted function whose 64 MiB temporary (the barrier makes it a buffer of its own) is one
# allocation above glibc's 32 MiB mmap ceiling, like a train step's temporaries.
_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from vaflax import cpu
    kept = cpu.keep_freed_memory()
    if sys.argv[1] == 'no_jax':
      from jax._src import xla_bridge
      print(json.dumps({'kept': kept, 'backends': xla_bridge.backends_are_initialized()}))
      sys.exit()
    import jax, jax.numpy as jnp
    f = jax.jit(lambda x: (jax.lax.optimization_barrier(x + 1.0) * 2.0).sum())
    x = jnp.ones((16 * 2**20,), jnp.float32)
    faults = []
    for _ in range(30):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      f(x).block_until_ready()
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({'kept': kept, 'faults': faults}))
""")


def _run(mode='jax', **env):
  full = {k: v for k, v in os.environ.items()
          if not k.startswith('MALLOC_') and k != 'GLIBC_TUNABLES'}
  full.update({'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': ROOT, **env})
  r = subprocess.run([sys.executable, '-c', _SCRIPT, mode], env=full, capture_output=True,
                     text=True, timeout=120, check=False)
  assert r.returncode == 0, r.stderr[-2000:]
  return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc settings')
def test_settings_stop_the_per_call_page_faults():
  kept = _run()
  assert kept['kept'] is True
  # 64 MiB = 16384 pages: glibc's defaults fault every page in again on every call.
  default = _run(MALLOC_ARENA_MAX='8')  # a user's own glibc variable: vaflax leaves malloc alone
  assert default['kept'] is False
  assert min(default['faults'][1:]) > 16000, default
  # With the settings the freed block is reused once the heap has grown: XLA asks for an aligned
  # block, which glibc carves from a slightly larger one, so a freed block fits the next request
  # only once its neighbours are free too. In 8 runs of 30 calls, 1-5 of the first 10 calls and
  # none of the last 20 faulted; with glibc's defaults all of them do.
  faulting = sum(f > 8000 for f in kept['faults'][10:])
  assert faulting <= 4, kept


def test_not_applied_when_the_backend_may_be_an_accelerator():
  out = _run('no_jax', JAX_PLATFORMS='cuda,cpu')
  assert out == {'kept': False, 'backends': False}


def test_config_loading_starts_no_backend():
  """Entry points call keep_freed_memory() in cli.parse, after importing their module and before
  loading the config file; neither may start JAX's backends, or the call would come too late
  (vaflax.main loads configs/<x>.py, which imports the presets and the models' configs)."""
  code = textwrap.dedent("""
      from vaflax import cli, main
      from jax._src import xla_bridge
      print(xla_bridge.backends_are_initialized())
      cli.load_config('configs/resnet_va.py:runlocal', ['total_steps=3'])
      print(xla_bridge.backends_are_initialized())
  """)
  r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                     timeout=120, check=False, env=dict(os.environ, PYTHONPATH=ROOT))
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.split() == ['False', 'False'], r.stdout
