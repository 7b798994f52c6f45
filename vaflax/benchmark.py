r"""Train-step throughput of a config: examples/s, step time, FLOPs, MFU, input-pipeline share.

  python -m vaflax.benchmark --config=configs/resnet_va.py:runlocal --steps=20
  python -m vaflax.benchmark --config=configs/resnet_va.py --config.batch_size=32 \
      --config.image_size=112 --steps=20 --json

The step is the one `vaflax.train` trains with (same setup, shardings and donation). It is
compiled once, ahead of time, which gives its compile time, XLA's memory estimate and XLA's FLOP
count. Then two timed phases of --steps steps each, after --warmup untimed steps:
  fed     batches come from the real Grain pipeline, dispatched as the train loop does (batch
          N+1 is read while step N runs; step N is waited for after N+1 is dispatched);
  cached  the same loop on one batch already on the devices (compute only).
input_wait_frac = 1 - cached / fed (medians of the step time): the share of a step spent waiting
for input. MFU = XLA FLOPs of the step x steps/s / (peak FLOP/s per device x devices), with the
dense bf16 peak of the device kind (PEAK_FLOPS) or --peak_tflops; null when unknown (CPU).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time

from absl import logging

from vaflax import cli
from vaflax.aot import compile_step, memory_report, step_flops  # noqa: F401 (re-exported)

# Dense (no sparsity) bf16 peak FLOP/s per device, from the vendors' data sheets. Matched as a
# substring of jax.Device.device_kind, first match wins (so the specific names come first).
PEAK_FLOPS = (
    ('H100 PCIe', 756e12),
    ('H100', 989e12),  # SXM
    ('H200', 989e12),
    ('GH200', 989e12),
    ('B200', 2250e12),
    ('A100', 312e12),
    ('L4', 121e12),
    ('V100', 125e12),  # fp16 tensor cores (no bf16)
    ('TPU v4', 275e12),
    ('TPU v5 lite', 197e12),  # v5e
    ('TPU v5e', 197e12),
    ('TPU v5p', 459e12),
    ('TPU v5', 459e12),
    ('TPU v6 lite', 918e12),  # Trillium (v6e)
    ('TPU v6e', 918e12),
)


def peak_flops(device_kind: str) -> float | None:
  """Peak FLOP/s of one device of this kind, or None (CPU, unknown kinds)."""
  for name, peak in PEAK_FLOPS:
    if name.lower() in device_kind.lower():
      return peak
  return None


def _percentile(xs, q):
  import numpy as np  # noqa: PLC0415

  return float(np.percentile(np.asarray(xs, np.float64), q))


def model_flops_utilization(flops_per_step, step_s: float, peak: float | None,
                            num_devices: int) -> float | None:
  """Achieved FLOP/s over the peak of all devices; None without a peak or a FLOP count."""
  if not (peak and flops_per_step and step_s > 0):
    return None
  return flops_per_step / step_s / (peak * num_devices)


def timed_loop(step_fn, state, batches, step_args, n_warmup: int):
  """Runs the steps as the train loop does; returns (state, per-step seconds, last ok).

  Step i's time is the interval between the completions of steps i-1 and i; a step's
  completion is observed right after the next step is dispatched (so input reading overlaps
  device work exactly as in training).
  """
  import jax  # noqa: PLC0415

  times, prev, t_prev = [], None, None
  ok = None
  for i, arg in enumerate(step_args):
    gbatch = batches()
    state, metrics, ok = step_fn(state, gbatch, arg)
    if prev is not None:
      jax.block_until_ready(prev)
      t = time.perf_counter()
      if i - 1 >= n_warmup:  # completion of step i-1
        times.append(t - t_prev)
      t_prev = t
    else:
      t_prev = time.perf_counter()
    prev = metrics
  jax.block_until_ready(prev)
  times.append(time.perf_counter() - t_prev)
  return state, times, ok


def run(config, steps: int = 20, warmup: int = 2, peak_tflops: float = 0.0,
        fed: bool = True) -> dict:
  """Compiles and times the train step of `config`; returns the report as a dict.

  fed=False times the cached phase only (compute; the step time and examples/s are the cached
  ones and input_wait_frac is None).
  """
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from vaflax import sharding, train  # noqa: PLC0415
  from vaflax.data import pipeline  # noqa: PLC0415

  if steps < 1 or warmup < 1:
    raise ValueError(f'--steps ({steps}) and --warmup ({warmup}) must be >= 1')
  pidx, pcount = jax.process_index(), jax.process_count()
  train_ds, num_train = pipeline.make_train_dataset(config, pidx, pcount)
  setup = train.make_setup(config, num_train)
  it = iter(train_ds)
  rep = sharding.replicated(setup.mesh)
  n = warmup + steps
  step_args = [jax.device_put(np.int32(i), rep) for i in range(2 * n)]
  first = sharding.to_global(next(it), setup.mesh)

  compiled, aot = compile_step(setup, first, step_args[0])
  ndev = setup.mesh.devices.size
  flops_step = aot['flops_per_step'] or 0.0
  gb = int(config.batch_size)

  state = setup.state
  state, cached_times, ok_c = timed_loop(compiled, state, lambda: first, step_args[:n], warmup)

  def fed_batch():
    return sharding.to_global(next(it), setup.mesh)

  if fed:
    state, fed_times, ok_f = timed_loop(compiled, state, fed_batch, step_args[n:], warmup)
  else:
    fed_times, ok_f = cached_times, ok_c
  jax.block_until_ready(state)

  med_fed = float(np.median(fed_times))
  med_cached = float(np.median(cached_times))
  eps = gb / med_fed
  kind = jax.devices()[0].device_kind
  peak = peak_tflops * 1e12 if peak_tflops > 0 else peak_flops(kind)
  flops_ex = flops_step / gb if flops_step else None
  mfu = model_flops_utilization(flops_step, med_fed, peak, ndev)
  return {
      'date': datetime.date.today().isoformat(),
      'config_model': config.model_name,
      'task': config.task,
      'platform': jax.devices()[0].platform,
      'device_kind': kind,
      'num_devices': int(ndev),
      'process_count': int(pcount),
      'mesh': dict(setup.mesh.shape),
      'global_batch': gb,
      'image_size': int(config.image_size),
      'steps': steps,
      'warmup': warmup,
      'compile_s': aot['compile_s'],
      'memory_bytes': aot['memory_bytes'],
      'flops_per_step': flops_step or None,
      'flops_per_example': flops_ex,
      'examples_per_sec': eps,
      'step_time_ms_median': 1e3 * med_fed,
      'step_time_ms_p10': 1e3 * _percentile(fed_times, 10),
      'step_time_ms_p90': 1e3 * _percentile(fed_times, 90),
      'step_time_ms_cached_median': 1e3 * med_cached,
      'input_wait_frac': max(0.0, min(1.0, 1.0 - med_cached / med_fed)) if fed else None,
      'peak_flops_per_device': peak,
      'mfu': mfu,
      'finite': bool(ok_c) and bool(ok_f),
      'load_average': list(os.getloadavg()),
      'jax_version': jax.__version__,
  }


def format_report(r: dict) -> str:
  gib = lambda b: f'{b / 2**30:.2f} GiB'
  lines = [
      f"{r['config_model']}/{r['task']} on {r['num_devices']} x {r['device_kind']} "
      f"(mesh {r['mesh']}, {r['process_count']} process(es)), global batch {r['global_batch']}, "
      f"{r['image_size']} px, {r['date']}",
      f"compile            {r['compile_s']:.1f} s",
  ]
  if r['memory_bytes']:
    m = r['memory_bytes']
    lines.append(f"memory (XLA)       peak ~{gib(m['peak_estimate'])} per device (args "
                 f"{gib(m['argument_size'])}, temps {gib(m['temp_size'])})")
  lines += [
      f"examples/s         {r['examples_per_sec']:.1f}",
      f"step time          {r['step_time_ms_median']:.1f} ms median "
      f"(p10 {r['step_time_ms_p10']:.1f}, p90 {r['step_time_ms_p90']:.1f}; "
      f"cached batch {r['step_time_ms_cached_median']:.1f})",
  ]
  if r['input_wait_frac'] is not None:
    lines.append(f"input wait         {100 * r['input_wait_frac']:.1f} % of the step")
  if r['flops_per_example']:
    lines.append(f"FLOPs / example    {r['flops_per_example'] / 1e9:.2f} GFLOP (XLA, fwd+bwd+update)")
  lines.append('MFU                ' + (f"{100 * r['mfu']:.1f} % of "
                                         f"{r['peak_flops_per_device'] / 1e12:.0f} TFLOP/s/device"
                                         if r['mfu'] is not None else 'n/a (no peak for this device)'))
  lines.append(f"load average       {' '.join(f'{x:.2f}' for x in r['load_average'])}")
  if not r['finite']:
    lines.append('WARNING: a step had a non-finite loss or gradient')
  return '\n'.join(lines)


@cli.entry_point
def main(argv) -> int:
  ap = cli.parser('vaflax.benchmark', __doc__)
  ap.add_argument('--config', required=True, help='config file: configs/<x>.py[:args]')
  ap.add_argument('--steps', type=int, default=20, help='timed steps per phase (fed and cached)')
  ap.add_argument('--warmup', type=int, default=2, help='untimed steps before each phase')
  ap.add_argument('--json', action='store_true', help='print one JSON object instead of a table')
  ap.add_argument('--peak_tflops', type=float, default=0.0,
                  help='peak TFLOP/s per device for MFU (0: from the device kind)')
  ap.add_argument('-v', '--verbosity', type=int, default=-1,
                  help='absl logging: -1 warnings (default), 0 info, 1 debug')
  args, overrides = cli.parse(ap, argv, overrides=True)
  logging.set_verbosity(args.verbosity)
  config = cli.load_config(args.config, overrides)
  import jax  # noqa: PLC0415 -- after flag parsing: --help is fast

  env = os.environ
  if env.get('JAX_COORDINATOR_ADDRESS') and int(env.get('JAX_NUM_PROCESSES', '1')) > 1:
    jax.distributed.initialize(coordinator_address=env['JAX_COORDINATOR_ADDRESS'],
                               num_processes=int(env['JAX_NUM_PROCESSES']),
                               process_id=int(env['JAX_PROCESS_ID']))
  report = run(config, args.steps, args.warmup, args.peak_tflops)
  if jax.process_index() == 0:
    print(json.dumps(report) if args.json else format_report(report), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
