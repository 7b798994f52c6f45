r"""Throughput of `vaflax.predict` on a generated 640x360 30 fps video, ResNet-18 at 112 px.

  JAX_PLATFORMS=cpu python benchmarks/predict_throughput.py [--seconds=10] [--frame_stride=1]

Writes a workdir with a freshly initialised ResNet-18 (width 64, 112 px input, the resnet_va
recipe; speed does not depend on the weights) and a video of the astronaut photo drifting and
zooming (one face of ~110 px), then times predict end to end (decode, detection and tracking,
crops, model, CSV/JSON; no plots) after a warm-up that compiles the model, through the CLI's
scheduler (`predict.predict_file`: vaflax/predict/collection.py `predict_many` on one input).
Also times the stages alone, to show where the time goes. Prints a Markdown block for
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import tempfile
import time

import cv2
import numpy as np
import skimage.data

W, H, FPS = 640, 360, 30


def make_video(path, seconds: float):
  from vaflax.data import video_io  # noqa: PLC0415

  base = skimage.data.astronaut()
  frames = []
  for i in range(int(seconds * FPS)):
    s = 1.0 + 0.1 * np.sin(i / 40)  # slow zoom in and out
    m = np.float32([[s, 0, 64 + 40 * np.sin(i / 25)], [0, s, -40 + 10 * np.cos(i / 30)]])
    frames.append(cv2.warpAffine(base, m, (W, H), borderMode=cv2.BORDER_REFLECT))
  video_io.write_mp4(path, np.stack(frames), FPS)
  return len(frames)


def make_workdir(workdir):
  """A run directory of an untrained ResNet-18 (runs.write_run, as vaflax.convert writes one)."""
  from flax import nnx  # noqa: PLC0415

  from configs import resnet_va  # noqa: PLC0415
  from vaflax import runs  # noqa: PLC0415

  c = resnet_va.get_config('variant=18')
  c.input.dataset = 'synthetic_va'  # crop framing of the synthetic set (112 px, margin 0.2)
  c.total_steps = 1
  c.mesh.num_devices = 1
  model = runs.make_model(c, nnx.Rngs(0))  # eager: no compile
  runs.write_run(workdir, c, nnx.state(model))


def _cpu_seconds() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def cpu_name() -> str:
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
      if line.startswith('Model name:'):
        return line.split(':', 1)[1].strip()
  except (OSError, subprocess.CalledProcessError):
    pass
  return platform.processor() or 'unknown CPU'


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--seconds', type=float, default=10.0)
  ap.add_argument('--frame_stride', type=int, default=1)
  ap.add_argument('--detect_every', type=int, default=10)
  ap.add_argument('--batch_size', type=int, default=32)
  args = ap.parse_args()
  from absl import flags  # noqa: PLC0415

  flags.FLAGS.mark_as_parsed()
  from vaflax import predict  # noqa: PLC0415
  from vaflax.predict import detection  # noqa: PLC0415

  tmp = tempfile.mkdtemp(prefix='predict_bench_')
  video, warm = os.path.join(tmp, 'bench.mp4'), os.path.join(tmp, 'warm.mp4')
  n = make_video(video, args.seconds)
  make_video(warm, 1.5)
  make_workdir(os.path.join(tmp, 'wd'))
  pred = predict.Predictor(os.path.join(tmp, 'wd'), batch_size=args.batch_size, crop_size=112)
  opts = predict.Options(frame_stride=args.frame_stride, detect_every=args.detect_every,
                         plots=False, progress=False)
  predict.predict_file(pred, warm, os.path.join(tmp, 'out'), opts)  # compiles the model

  load0 = os.getloadavg()
  c0, t = _cpu_seconds(), time.perf_counter()
  s = predict.predict_file(pred, video, os.path.join(tmp, 'out'), opts)
  dt, cpu = time.perf_counter() - t, _cpu_seconds() - c0
  load1 = os.getloadavg()
  fps = n / dt  # source frames handled per second (stride > 1 skips model work, not decoding)
  # On a shared machine wall time depends on the others' load; CPU time (all threads of this
  # process) does not: with both cores to itself, predict could run at most 2 / (CPU s/frame).
  cpu_fps = n / cpu

  # Stages alone, on the same video.
  vs = predict.open_input(video)
  t = time.perf_counter()
  frames = [rgb for _, _, rgb in vs]
  decode = len(frames) / (time.perf_counter() - t)
  vs.close()
  sample = frames[:: max(1, len(frames) // 30)]
  t = time.perf_counter()
  for f in sample:
    detection.haar(f, opts.min_face)  # as predict runs it: scaled to the smallest face
  full = len(sample) / (time.perf_counter() - t)
  batch = [pred.preprocess(np.zeros((112, 112, 3), np.uint8))] * pred.batch_size
  pred.result(pred.dispatch(batch))
  t = time.perf_counter()
  for _ in range(5):
    pred.result(pred.dispatch(batch))
  model = 5 * pred.batch_size / (time.perf_counter() - t)

  print(f"""
### predict throughput ({time.strftime('%Y-%m-%d')})

Device: {cpu_name()}, {os.cpu_count()} cores, JAX {__import__('jax').__version__} on CPU.
Command: `JAX_PLATFORMS=cpu python benchmarks/predict_throughput.py --seconds={args.seconds:g} --frame_stride={args.frame_stride} --detect_every={args.detect_every} --batch_size={args.batch_size}`
Input: {W}x{H}, {FPS} fps, {n} frames ({n / FPS:.1f} s), one face of ~110 px; ResNet-18 (width 64) at 112 px.
Load average (1/5/15 min) before: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}.

| measure | value |
|---|---|
| predict end to end, wall clock | {fps:.1f} frames/s = {fps / FPS:.2f}x real time ({s['frames_with_face']}/{s['frames_processed']} processed frames with a face) |
| predict end to end, per CPU second (all threads) | {cpu_fps:.1f} frames/CPU-s; bound on {os.cpu_count()} idle cores: {os.cpu_count() * cpu_fps:.0f} frames/s = {os.cpu_count() * cpu_fps / FPS:.1f}x real time |
| decode alone (PyAV, rgb24) | {decode:.0f} frames/s |
| full-frame Haar detection alone (scaled for min_face) | {full:.1f} frames/s |
| model alone (batch {pred.batch_size}) | {model:.1f} crops/s |
""")


if __name__ == '__main__':
  main()
