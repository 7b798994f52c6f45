r"""The GPU suite: every workload that matters, vaflax and its PyTorch peers, in one command.

  python3 benchmarks/gpu_suite.py --out=$OUT              # one GPU, <= 8 minutes (the goal)
  python benchmarks/gpu_suite.py --smoke --out=/tmp/suite  # every path, 2 steps, tiny, on CPU

Workloads (batch per workload: --batch=mae=256,resnet=256,emofan=64):
  mae     ViT-B/16 MAE pretraining at 224 px (configs/mae_pretrain.py), bf16 compute, f32 params;
  resnet  ResNet-50 VA regression at 112 px (configs/resnet_va.py, Deng et al. 2020), fed by the
          real Grain pipeline on the synthetic set: examples/s of the fed loop and its input-wait
          share (1 - cached / fed step time);
  emofan  EmoNet-size EmoFAN at 256 px (configs/emofan_va.py: 2 stacks of width 256, depth 4;
          no emotion logits, which the synthetic set lacks: a head of 8 outputs, no compute);
  detector  BlazeFace (vaflax/blazeface) on batches of 1080p frames (host letterbox + the jitted
          network, decoding and NMS; frames/s) and the ResNet-50 VA model's forward pass on one
          face crop per frame at 112 px: frames/s of each and of the two in turn.
Each vaflax row is `vaflax.benchmark.run` on the step of `vaflax.train.make_setup` (AOT compile
time, XLA's memory analysis and FLOP count, MFU against PEAK_FLOPS). The PyTorch peers
(benchmarks/torch_peers.py: eager and torch.compile, AdamW, bf16 autocast, channels_last CNNs)
run first, in a subprocess, so that each framework has the whole device; their MFU uses XLA's
FLOP count of the same workload. `vaflax / peer` is the ratio of examples/s on a batch already on
the device (compute only, as the peers are fed). Writes gpu_suite.json and gpu_suite.md to --out
and prints the table.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

WORKLOADS = ('mae', 'resnet', 'emofan')
TITLES = {'mae': 'ViT-B/16 MAE pretrain, 224 px', 'resnet': 'ResNet-50 VA, 112 px, Grain-fed',
          'emofan': 'EmoFAN (EmoNet size), 256 px', 'detector': 'detector + VA, 1080p clip'}
SMOKE_TITLES = {'mae': 'ViT mu/8 MAE, 32 px (smoke)', 'resnet': 'ResNet-10 w8, 32 px (smoke)',
                'emofan': 'FAN 1 stack w16, 64 px (smoke)'}
DEFAULT_BATCH = {'mae': 256, 'resnet': 256, 'emofan': 64}
SMOKE_BATCH = 4
DETECTOR_BATCH, DETECTOR_FRAME = 32, (1080, 1920)  # smoke: 2 frames of 144x256


def detector_row(smoke: bool, steps: int, warmup: int) -> dict:
  """BlazeFace + a VA forward pass per frame (predict's per-frame work on the device)."""
  import cv2  # noqa: PLC0415
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  import skimage.data  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from configs import resnet_va  # noqa: PLC0415
  from vaflax import runs  # noqa: PLC0415
  from vaflax.blazeface import BlazeFace  # noqa: PLC0415

  b, (h, w) = (2, (144, 256)) if smoke else (DETECTOR_BATCH, DETECTOR_FRAME)
  frames = np.zeros((b, h, w, 3), np.uint8)  # the astronaut's face in the middle of each frame
  face = skimage.data.astronaut()[40:200, 150:310]
  side = min(h // 2, face.shape[0])
  frames[:, h // 4:h // 4 + side, w // 2 - side // 2:w // 2 + side // 2 + side % 2] = cv2.resize(
      face, (side, side))
  det = BlazeFace()

  def timed(fn):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0

  compile_s = timed(lambda: det.detect(frames).scores_BxQ)
  for _ in range(warmup):
    det.detect(frames)
  det_s = float(np.median([timed(lambda: det.detect(frames).scores_BxQ) for _ in range(steps)]))
  c = resnet_va.get_config('variant=50')  # bf16 compute, 112 px
  if smoke:
    c.model.update(depth=10, width=8, dtype='float32')
    c.image_size = 32
  model = runs.make_model(c, nnx.Rngs(0))
  model.eval()
  graphdef, state = nnx.split(model)
  fwd = jax.jit(lambda st, x: nnx.merge(graphdef, st)({'image': x})['va'])
  crops = jax.numpy.zeros((b, c.image_size, c.image_size, 3), jax.numpy.float32)
  timed(lambda: fwd(state, crops))
  va_s = float(np.median([timed(lambda: fwd(state, crops)) for _ in range(steps)]))
  found = int(det.detect(frames).valid_BxQ.any(axis=1).sum())
  return {'framework': 'vaflax', 'status': f'ok: {found}/{b} frames with a face',
          'frame_size': f'{w}x{h}', 'batch': b, 'image_size': h, 'compile_s': compile_s,
          'examples_per_sec': b / (det_s + va_s), 'step_time_ms_median': 1e3 * (det_s + va_s),
          'detector_frames_per_sec': b / det_s, 'va_frames_per_sec': b / va_s}


def make_config(name: str, *, smoke: bool, batch: int, data_dir: str, workers: int):
  """The workload's paper config on the synthetic set, one device, bf16 compute."""
  from configs import emofan_va, mae_pretrain, resnet_va  # noqa: PLC0415

  if name == 'mae':
    c = mae_pretrain.get_config()  # B/16 at 224, decoder 8 x 512
    c.schedule.warmup_epochs = 0.0
    if smoke:
      c.model.variant = 'mu/8'
      c.model.update(decoder_width=32, decoder_depth=1, decoder_num_heads=2)
      c.image_size = 32
  elif name == 'resnet':
    c = resnet_va.get_config('variant=50')  # 112 px
    c.input.num_workers = workers
    if smoke:
      c.model.update(depth=10, width=8)
      c.image_size = 32
  elif name == 'emofan':
    c = emofan_va.get_config()  # 2 stacks, width 256, depth 4, 256 px
    c.model.num_emotions = 0  # synthetic_va has no emotion labels
    c.loss.emotion_weight = 0.0
    if smoke:
      c.model.update(num_stacks=1, hourglass_depth=1, width=16, head_width=16, head_blocks=1)
      c.image_size = 64
  else:
    raise ValueError(f'unknown workload {name!r}; known: {", ".join(WORKLOADS)}')
  # bf16 compute, float32 parameters. Smoke: the CNNs in float32 (XLA:CPU compiles bf16
  # convolutions ~1.4x slower), the ViT keeps bf16 so that path is exercised.
  c.model.dtype = 'float32' if smoke and name != 'mae' else 'bfloat16'
  c.input.dataset = 'synthetic_va'
  c.input.data_dir = data_dir
  c.input.eval_split = ''
  c.batch_size = batch
  c.total_steps, c.total_epochs = 10**6, 0.0
  c.mesh.num_devices = 1  # one chip
  c.tensorboard = False
  return c


def torch_spec(name: str, config) -> dict:
  """What torch_peers.py needs to build the same model (plain JSON)."""
  from vaflax.models import vit  # noqa: PLC0415

  m = config.model
  if name == 'mae':
    model = vit.decode_variant(m.variant)
    model.update(decoder_width=m.decoder_width, decoder_depth=m.decoder_depth,
                 decoder_num_heads=m.decoder_num_heads, mask_ratio=m.mask_ratio)
  elif name == 'resnet':
    model = dict(depth=m.depth, width=m.width)
  else:
    model = dict(num_stacks=m.num_stacks, hourglass_depth=m.hourglass_depth, width=m.width,
                 num_landmarks=m.num_landmarks, head_width=m.head_width, head_blocks=m.head_blocks)
  return dict(workload=name, batch=int(config.batch_size), image_size=int(config.image_size),
              bf16=config.model.dtype == 'bfloat16', model=model)


def torch_rows(spec: dict, args) -> list[dict]:
  """The PyTorch peers of one workload, in a subprocess of --torch_python."""
  if not args.torch_python:
    return [{'framework': f'torch {m}', 'status': 'torch not installed'} for m in args.torch_modes]
  cmd = [args.torch_python, os.path.join(REPO, 'benchmarks', 'torch_peers.py'),
         f'--spec={json.dumps(spec)}', f'--modes={",".join(args.torch_modes)}',
         f'--steps={args.steps}', f'--warmup={args.warmup}']
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.torch_timeout_s)
  if r.returncode != 0:
    err = (r.stderr.strip().splitlines() or ['no output'])[-1]
    return [{'framework': f'torch {m}', 'status': f'error: {err}'[:300]} for m in args.torch_modes]
  return json.loads(r.stdout.strip().splitlines()[-1])


def jax_row(name: str, config, args) -> dict:
  from vaflax import benchmark  # noqa: PLC0415

  r = benchmark.run(config, steps=args.steps, warmup=args.warmup, peak_tflops=args.peak_tflops,
                    fed=name == 'resnet')
  mem = r['memory_bytes'] or {}
  return {
      'framework': 'vaflax', 'status': 'ok' if r['finite'] else 'error: non-finite loss',
      'batch': r['global_batch'], 'image_size': r['image_size'],
      'examples_per_sec': r['examples_per_sec'], 'step_time_ms_median': r['step_time_ms_median'],
      'step_time_ms_cached_median': r['step_time_ms_cached_median'],
      'examples_per_sec_cached': r['global_batch'] * 1e3 / r['step_time_ms_cached_median'],
      'input_wait_frac': r['input_wait_frac'], 'mfu': r['mfu'],
      'flops_per_example': r['flops_per_example'], 'peak_flops_per_device': r['peak_flops_per_device'],
      'peak_memory_bytes': mem.get('peak_estimate'), 'compile_s': r['compile_s'],
      'device_kind': r['device_kind'], 'jax_version': r['jax_version'], 'finite': r['finite'],
  }


def _fmt(v, spec: str, scale: float = 1.0) -> str:
  return '-' if v is None else format(v * scale if scale != 1.0 else v, spec)


def markdown(report: dict) -> str:
  lines = [f"GPU suite, {report['date']}, {report['device_kind']}"
           f"{' (smoke)' if report['smoke'] else ''}; steps {report['steps']} after "
           f"{report['warmup']} warm-up; MFU against {_fmt(report['peak_flops'], '.0f', 1e-12)} "
           'TFLOP/s bf16; vaflax / peer: examples/s on a batch already on the device',
           '',
           '| workload | framework | batch | px | examples/s | step ms (median) | MFU | '
           'peak mem GiB | compile s | input wait | vaflax / peer | status |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|']
  for w in report['workloads']:
    for r in w['rows']:
      lines.append('| ' + ' | '.join([
          w['title'], r['framework'], _fmt(r.get('batch'), 'd'), _fmt(r.get('image_size'), 'd'),
          _fmt(r.get('examples_per_sec'), '.1f'), _fmt(r.get('step_time_ms_median'), '.1f'),
          _fmt(r.get('mfu'), '.1%'), _fmt(r.get('peak_memory_bytes'), '.2f', 2**-30),
          _fmt(r.get('compile_s'), '.1f'), _fmt(r.get('input_wait_frac'), '.1%'),
          _fmt(r.get('vaflax_over_peer'), '.2f'), r['status']]) + ' |')
  return '\n'.join(lines)


def _parse_batch(text: str, smoke: bool) -> dict:
  batch = dict.fromkeys(WORKLOADS, SMOKE_BATCH) if smoke else dict(DEFAULT_BATCH)
  for part in filter(None, text.split(',')):
    k, _, v = part.partition('=')
    if k not in batch:
      raise SystemExit(f'--batch: unknown workload {k!r}; known: {", ".join(WORKLOADS)}')
    batch[k] = int(v)
  return batch


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--smoke', action='store_true', help='tiny shapes, 2 steps, CPU is fine')
  ap.add_argument('--out', default=os.path.join(REPO, 'benchmarks'),
                  help='folder for gpu_suite.json and gpu_suite.md')
  ap.add_argument('--workloads', default=','.join(WORKLOADS))
  ap.add_argument('--batch', default='', help='per-workload batch, e.g. mae=128,emofan=32')
  ap.add_argument('--steps', type=int, default=20, help='timed steps (smoke: 2)')
  ap.add_argument('--warmup', type=int, default=3, help='untimed steps first (smoke: 1)')
  ap.add_argument('--workers', type=int, default=None,
                  help='Grain worker processes of the fed ResNet (default 8; smoke: 0)')
  ap.add_argument('--data_dir', default='',
                  help='TFDS dir with synthetic_va (built there if missing; default: a temp dir)')
  ap.add_argument('--peak_tflops', type=float, default=0.0,
                  help='bf16 peak per device for MFU (0: vaflax.benchmark.PEAK_FLOPS)')
  ap.add_argument('--torch_python', default=None,
                  help="interpreter with torch for the peers ('' for none; default: this one if "
                       'it has torch)')
  ap.add_argument('--torch_modes', default='eager,compile')
  ap.add_argument('--torch_timeout_s', type=float, default=600)
  args = ap.parse_args(argv)
  if args.smoke:
    args.steps, args.warmup = 2, 1
  if args.workers is None:
    args.workers = 0 if args.smoke else 8
  if args.torch_python is None:
    args.torch_python = sys.executable if importlib.util.find_spec('torch') else ''
  args.torch_modes = args.torch_modes.split(',')
  names = [n for n in args.workloads.split(',') if n]
  batch = _parse_batch(args.batch, args.smoke)
  t_start = time.perf_counter()
  from absl import flags  # noqa: PLC0415

  flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags

  from vaflax.data import build  # noqa: PLC0415

  data_dir = args.data_dir or tempfile.mkdtemp(prefix='gpu_suite_tfds_')
  if not build.is_built('synthetic_va', data_dir):
    build.build('synthetic_va', data_dir, verbose=False)
  configs = {n: make_config(n, smoke=args.smoke, batch=batch[n], data_dir=data_dir,
                            workers=args.workers) for n in names}

  # The peers first, each in its own process, before JAX takes the device's memory.
  workloads = []
  for n in names:
    spec = torch_spec(n, configs[n])
    print(f'[{time.perf_counter() - t_start:.0f} s] torch peers: {n}', file=sys.stderr, flush=True)
    workloads.append({'name': n, 'title': (SMOKE_TITLES if args.smoke else TITLES)[n],
                      'rows': torch_rows(spec, args)})
  for w in workloads:
    print(f'[{time.perf_counter() - t_start:.0f} s] vaflax: {w["name"]}', file=sys.stderr,
          flush=True)
    try:
      row = jax_row(w['name'], configs[w['name']], args)
    except Exception as e:  # noqa: BLE001 -- an out-of-memory workload must not end the suite
      row = {'framework': 'vaflax', 'status': f'error: {type(e).__name__}: {e}'[:300]}
    for peer in w['rows']:
      if row.get('flops_per_example') and peer.get('examples_per_sec'):
        peak = row['peak_flops_per_device']
        peer['mfu'] = row['flops_per_example'] * peer['examples_per_sec'] / peak if peak else None
        peer['vaflax_over_peer'] = row['examples_per_sec_cached'] / peer['examples_per_sec']
    w['rows'].insert(0, row)
  print(f'[{time.perf_counter() - t_start:.0f} s] vaflax: detector', file=sys.stderr, flush=True)
  try:
    det_row = detector_row(args.smoke, args.steps, args.warmup)
  except Exception as e:  # noqa: BLE001 -- as above
    det_row = {'framework': 'vaflax', 'status': f'error: {type(e).__name__}: {e}'[:300]}
  workloads.append({'name': 'detector', 'title': TITLES['detector'], 'rows': [det_row]})

  import jax  # noqa: PLC0415

  from vaflax import benchmark  # noqa: PLC0415

  kind = jax.devices()[0].device_kind
  report = {
      'date': datetime.date.today().isoformat(), 'smoke': args.smoke,
      'platform': jax.devices()[0].platform, 'device_kind': kind,
      'peak_flops': args.peak_tflops * 1e12 if args.peak_tflops else benchmark.peak_flops(kind),
      'steps': args.steps, 'warmup': args.warmup, 'jax_version': jax.__version__,
      'command': ' '.join([os.path.basename(sys.executable)] + sys.argv),
      'wall_s': time.perf_counter() - t_start, 'workloads': workloads,
  }
  text = markdown(report)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'gpu_suite.json'), 'w') as f:
    json.dump(report, f, indent=1)
  with open(os.path.join(args.out, 'gpu_suite.md'), 'w') as f:
    f.write(text + '\n')
  print(text, flush=True)
  print(f'wrote {args.out}/gpu_suite.json and gpu_suite.md in {report["wall_s"]:.0f} s',
        file=sys.stderr)


if __name__ == '__main__':
  main()
