"""The CPU settings of vaflax, in one place: glibc's allocator and JAX's dispatch on CPU-only
machines (`keep_freed_memory`), and the XLA options every jitted step compiles with on a CPU
(`compiler_options`). (The CPU's convolution backward, vaflax/models/cpu_conv.py, is a layer the
ResNet picks, not a process setting.)

CPU-only runs: XLA's per-step temporaries stay in glibc's heap instead of page-faulting in.

XLA:CPU allocates all temporaries of a compiled step as one block (~300 MB for the ResNet-18
train step at batch 32 x 112 px). glibc serves a block that large with mmap and gives it back
with munmap when it is freed, so every step faults the whole block in again, page by page:
~75k minor faults and 0.14-0.17 s of kernel time per step on a 2-core CPU, about 12 % of the
step's CPU time (benchmarks/RESULTS.md, "CPU: XLA's temporaries and glibc").

`keep_freed_memory()` turns off mmap'd blocks and trimming, so a freed block stays in the heap and
the next step reuses it (after a few steps in which the heap grows), and makes JAX's CPU client
synchronous. The second is needed because only glibc's main arena can hold such a block without
mmap: other threads' arenas are made of 64 MiB heaps, and glibc maps anything bigger whatever
M_MMAP_MAX says. A synchronous client runs a computation on the thread that calls it, the Python
thread, whose arena is the main one. (Limiting glibc to one arena would also do it, but then every
thread waits on one lock: the ResNet runlocal training took 4-24 % longer that way.) The costs:
the process keeps its peak heap, which a training or inference loop reaches again every step
anyway, and Python no longer queues the next step while one runs; on a CPU, where the step uses
every core, the training loop and predict measured no loss from that (same file).

The settings must be made before JAX starts its CPU client: it reads the dispatch mode when it
starts. So every entry point calls `keep_freed_memory()` first, through `vaflax.cli.parse` (once
its flags are parsed). It does nothing

- when the backend may be an accelerator (JAX_PLATFORMS names another platform first, or a JAX
  plugin such as the CUDA one, or libtpu, is installed): host memory is not where those steps
  spend, and asynchronous dispatch is what keeps an accelerator busy;
- when the user has set glibc's malloc variables (MALLOC_ARENA_MAX, MALLOC_MMAP_MAX_,
  MALLOC_TRIM_THRESHOLD_, MALLOC_MMAP_THRESHOLD_, GLIBC_TUNABLES) or
  JAX_CPU_ENABLE_ASYNC_DISPATCH: theirs win, and e.g. `MALLOC_ARENA_MAX=8` (glibc's default on 2
  cores) turns this off;
- on a C library other than glibc, and when JAX's backends have already started (a `main()`
  called from Python after JAX ran).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.metadata
import importlib.util
import os

from absl import logging

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_USER_VARIABLES = ('MALLOC_ARENA_MAX', 'MALLOC_MMAP_MAX_', 'MALLOC_TRIM_THRESHOLD_',
                   'MALLOC_MMAP_THRESHOLD_', 'GLIBC_TUNABLES', 'JAX_CPU_ENABLE_ASYNC_DISPATCH')
_SETTINGS = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))


def backend_is_cpu_only() -> bool:
  """True when JAX can only start its CPU backend here; asks JAX's config and the installed
  packages, not JAX's backends (starting them is what this module must come before)."""
  import jax  # noqa: PLC0415 -- importing JAX starts no backend

  platforms = jax.config.jax_platforms  # JAX_PLATFORMS, or jax.config.update
  if platforms:
    return platforms.split(',')[0].strip().lower() == 'cpu'
  if importlib.metadata.entry_points(group='jax_plugins'):
    return False
  return importlib.util.find_spec('libtpu') is None and importlib.util.find_spec(
      'jax_plugins') is None


def keep_freed_memory() -> bool:
  """Applies the settings (module doc) when they are wanted; True if it did."""
  from jax._src import xla_bridge  # noqa: PLC0415 -- no public way to ask this

  why_not = None
  if getattr(xla_bridge, 'backends_are_initialized', lambda: False)():
    # An entry point's main() called from Python (a notebook, a test), after JAX ran.
    logging.info('keep_freed_memory() called after JAX started its backends: too late, glibc '
                 'malloc left as it is')
    return False
  user = [v for v in _USER_VARIABLES if v in os.environ]
  if user:
    why_not = f'{", ".join(user)} set by the user'
  elif not backend_is_cpu_only():
    why_not = 'the backend may be an accelerator'
  else:
    path = ctypes.util.find_library('c')
    libc = ctypes.CDLL(path) if path else None
    if libc is None or not hasattr(libc, 'gnu_get_libc_version') or not hasattr(libc, 'mallopt'):
      why_not = 'the C library is not glibc'
  if why_not:
    logging.info('glibc malloc left as it is: %s', why_not)
    return False
  failed = [p for p, v in _SETTINGS if libc.mallopt(p, v) != 1]
  if failed:
    logging.warning('mallopt refused parameters %s; XLA:CPU steps may page-fault', failed)
    return False
  import jax  # noqa: PLC0415

  jax.config.update('jax_cpu_enable_async_dispatch', False)
  logging.info('glibc malloc keeps freed memory (no mmap, no trim), JAX CPU dispatch is '
               'synchronous: vaflax/cpu.py')
  return True


# XLA:CPU runs convolutions faster through Eigen than through its default YNNPACK fusions
# (benchmarks/RESULTS.md has the measured ResNet-18 train step); reductions and dots stay on
# YNNPACK.
CPU_COMPILER_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type':
                        'LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_DOT'}


@functools.cache
def compiler_options(platform: str) -> dict | None:
  """XLA options for the jitted steps (train, eval): CPU_COMPILER_OPTIONS on a CPU whose XLA knows
  them, else XLA's defaults."""
  if platform != 'cpu':
    return None
  import jax  # noqa: PLC0415 -- as in backend_is_cpu_only

  try:
    jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(1.0).compile()
  except Exception:  # noqa: BLE001 -- an XLA without these options: keep its defaults
    logging.warning('XLA does not take %s; using its defaults', CPU_COMPILER_OPTIONS)
    return None
  return CPU_COMPILER_OPTIONS
