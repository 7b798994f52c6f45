"""The train step compiled ahead of time: its compile time, XLA's memory estimate and FLOP count.

`vaflax.train` compiles its step this way before the first step and prints the memory estimate
against the device's memory (MaxText does the same), so a configuration that does not fit fails
in seconds with the numbers, instead of minutes later with an allocator error; `vaflax.benchmark`
and benchmarks/gpu_suite.py read the same numbers.
"""

from __future__ import annotations

import time

GIB = 1024**3


def memory_report(compiled) -> dict | None:
  """XLA's memory analysis of a compiled step, in bytes per device (None where not given)."""
  mem = compiled.memory_analysis()
  if mem is None:
    return None
  memory = {k: int(getattr(mem, f'{k}_in_bytes', 0)) for k in
            ('argument_size', 'output_size', 'alias_size', 'temp_size', 'generated_code_size')}
  # Live at the peak: inputs + outputs not aliased to (donated) inputs + scratch.
  memory['peak_estimate'] = (memory['argument_size'] + memory['output_size']
                             - memory['alias_size'] + memory['temp_size'])
  return memory


def step_flops(compiled, num_devices: int) -> float | None:
  """XLA's FLOP count of one call of a compiled step, over all devices (None where not given)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, list | tuple):  # older jax: one dict per partition
    cost = cost[0] if cost else None
  # The compiled module is the per-device SPMD program: scale its FLOPs by the device count.
  flops = float(cost.get('flops', 0.0)) * num_devices if cost else 0.0
  return flops or None


def compile_step(setup, batch, step_arg, state=None):
  """Compiles `setup.train_step` (vaflax.train.make_setup's) ahead of time for this batch and
  `state` (default: setup.state; a restored state has the same structure and shardings).

  Returns (compiled step, {'compile_s', 'memory_bytes', 'flops_per_step'}).
  """
  t0 = time.perf_counter()
  compiled = setup.train_step.lower(setup.state if state is None else state, batch,
                                    step_arg).compile()
  compile_s = time.perf_counter() - t0
  return compiled, {'compile_s': compile_s, 'memory_bytes': memory_report(compiled),
                    'flops_per_step': step_flops(compiled, setup.mesh.devices.size)}


def device_memory_limit(device) -> int | None:
  """Bytes the allocator may use on `device` (GPU/TPU); None where jax does not say (CPU)."""
  try:
    stats = device.memory_stats()
  except Exception:  # noqa: BLE001 -- not every backend implements it
    return None
  return int(stats['bytes_limit']) if stats and stats.get('bytes_limit') else None


class DoesNotFitError(MemoryError):
  """The compiled step needs more memory per device than the device has."""


def check_fits(info: dict, device, what: str = 'the train step') -> str:
  """One line on the step's memory and compile time; DoesNotFitError when the estimate exceeds
  the device's memory (remedies named)."""
  mem = info.get('memory_bytes') or {}
  peak = mem.get('peak_estimate')
  limit = device_memory_limit(device)
  line = f'{what}: compiled in {info["compile_s"]:.1f} s'
  if peak is not None:
    line += (f'; memory per device: {peak / GIB:.2f} GiB (arguments '
             f'{mem["argument_size"] / GIB:.2f}, temporaries {mem["temp_size"] / GIB:.2f})')
    if limit:
      line += f' of {limit / GIB:.1f} GiB on {device.device_kind}'
  if peak is not None and limit and peak > limit:
    raise DoesNotFitError(
        f'{line}: does not fit. Lower --config.batch_size, use --config.model.dtype=bfloat16, '
        'turn on --config.model.remat=True, or shard the parameters (--config.mesh.fsdp)')
  return line
