r"""Valence/arousal of the faces in images and videos, with a trained run.

  python -m vaflax.predict --workdir=W --input=PATH --output=DIR [--frame_stride=1]
      [--smooth=none|ema|mean --smooth_window=5] [--min_face=40] [--faces=largest|all]
      [--overlay] [--save_crops] [--flip_tta] [--batch_size=32] [--detect_every=10]
      [--workers=2] [--shard=auto|K/N] [--overwrite] [--cropped] [--detector=blazeface|haar]
      [--max_pixels=50000000]
  python -m vaflax.predict --merge --output=DIR

PATH is an image, a video, a folder of them (searched recursively) or a list file (.txt: one
path per line); live: '-' (a stream on stdin), a URL (rtsp://, udp://, http(s)://) or a camera
(/dev/video0), with [--latency]. docs/predict.md has the outputs and formats.
"""

from __future__ import annotations

import os
import sys

from vaflax import cli
from vaflax.predict import collection, summary
from vaflax.predict.decode import is_live
from vaflax.predict.model import Predictor
from vaflax.predict.outputs import printable
from vaflax.predict.pipeline import Options


def list_inputs(path) -> tuple[list[str], list[str]]:
  """(media files, ignored files) of a file, a folder (recursive) or a list file, sorted."""
  _, inputs, ignored = collection.list_inputs(path)
  return [i.path for i in inputs], ignored


@cli.entry_point
def main(argv) -> int:
  d = Options()
  ap = cli.parser('vaflax.predict', __doc__)
  ap.add_argument('--workdir', help='the trained run')
  ap.add_argument('--input', help='an image, a video, a folder of them or a list file')
  ap.add_argument('--output', required=True, help='output folder')
  ap.add_argument('--frame_stride', type=int, default=d.frame_stride)
  ap.add_argument('--smooth', default=d.smooth, choices=('none', 'ema', 'mean'))
  ap.add_argument('--smooth_window', type=int, default=d.smooth_window)
  ap.add_argument('--min_face', type=int, default=d.min_face, help='smallest face side (pixels)')
  ap.add_argument('--faces', default=d.faces, choices=('largest', 'all'))
  ap.add_argument('--detect_every', type=int, default=d.detect_every)
  ap.add_argument('--detector', default=d.detector, choices=('blazeface', 'haar'))
  ap.add_argument('--max_age', type=int, default=d.max_age)
  ap.add_argument('--overlay', action='store_true', help='also write <stem>_overlay.mp4')
  ap.add_argument('--save_crops', action='store_true',
                  help='also write each model-input crop to <stem>_crops/<frame>_<face_id>.png')
  ap.add_argument('--no_plots', action='store_true')
  ap.add_argument('--flip_tta', action='store_true',
                  help='mean over each crop and its mirror (sets config.eval.flip_tta; a run '
                  'trained with it on, EmoFAN, mirrors anyway)')
  ap.add_argument('--batch_size', type=int, default=32)
  ap.add_argument('--workers', type=int, default=2,
                  help='decoding threads: inputs decoded and searched while the model runs')
  ap.add_argument('--shard', default='auto',
                  help='K/N: this process takes the K-th of N shards of the inputs; auto: from '
                  'SLURM_PROCID/SLURM_NTASKS, JAX_PROCESS_ID/JAX_NUM_PROCESSES or TPU_WORKER_ID')
  ap.add_argument('--overwrite', action='store_true', help='redo inputs that are complete')
  ap.add_argument('--merge', action='store_true',
                  help='only merge OUTPUT/summary-KofN.csv into OUTPUT/summary.csv')
  ap.add_argument('--checkpoint_step', type=int, default=None)
  ap.add_argument('--crop_size', type=int, default=0, help="0: the run's crop spec")
  ap.add_argument('--crop_margin', type=float, default=None, help="default: the run's crop spec")
  ap.add_argument('--data_dir', default=None, help="TFDS data dir (for the dataset's crop size)")
  ap.add_argument('--quiet', action='store_true', help='no line per input')
  ap.add_argument('--cropped', action='store_true',
                  help='each input image is one face crop: no detection, one row per image in '
                  'OUTPUT/cropped.csv')
  ap.add_argument('--max_pixels', type=int, default=d.max_pixels,
                  help='larger images and video frames (width x height) are error rows')
  ap.add_argument('--latency', action='store_true',
                  help='live input: end with the frames received, processed, dropped and the '
                  'p50/p95 latency from capture to row')
  a, overrides = cli.parse(ap, argv, overrides=True)
  if a.merge:
    return _main_merge(a.output)
  if not a.workdir or not a.input:
    ap.error('--workdir and --input are required (except with --merge)')
  bad = check_numbers(a)
  if bad:
    raise cli.ConfigError(bad)
  if a.flip_tta:  # the run's own switch: every path (videos, --cropped) follows it
    overrides = [*overrides, 'eval.flip_tta=True']
  if a.cropped:
    return _main_cropped(a, overrides)
  opts = Options(frame_stride=a.frame_stride, smooth=a.smooth, smooth_window=a.smooth_window,
                 min_face=a.min_face, faces=a.faces, detect_every=a.detect_every,
                 detector=a.detector, max_age=a.max_age, overlay=a.overlay, plots=not a.no_plots,
                 save_crops=a.save_crops, progress=False, max_pixels=a.max_pixels)
  log = (lambda msg: None) if a.quiet else collection.log_stderr
  if is_live(a.input):  # '-' (stdin), a URL or a camera: vaflax/predict/live.py
    from vaflax.predict import live  # noqa: PLC0415

    return live.main(a, opts, overrides)
  opts.check()
  shard = collection.parse_shard(a.shard)
  collection.list_inputs(a.input)  # fail on a missing input before loading the model
  predictor = Predictor(a.workdir, checkpoint_step=a.checkpoint_step, batch_size=a.batch_size,
                        crop_size=a.crop_size or None, crop_margin=a.crop_margin,
                        data_dir=a.data_dir, overrides=overrides)
  res = collection.run(predictor, a.input, a.output, opts, shard=shard,
                       overwrite=a.overwrite, workers=a.workers, log=log)
  for p in res.ignored:
    print(f'skipped {printable(p)}: not an image or video extension', file=sys.stderr)
  print(f'table: {printable(res.table)}')
  print(collection.main_line(res.rows, res.skipped))
  return 0


# Numeric flags and their range: checked before anything is loaded. The frame queue holds
# 8 x batch_size crops, so the batch is bounded above too.
_AT_MOST = {'batch_size': 4096, 'workers': 256}
_AT_LEAST = {'frame_stride': 1, 'smooth_window': 1, 'min_face': 1, 'detect_every': 1,
             'max_age': 0, 'batch_size': 1, 'workers': 1, 'checkpoint_step': 0, 'crop_size': 0,
             'crop_margin': 0.0, 'max_pixels': 1}


def check_numbers(a) -> str | None:
  """The first numeric flag out of range, as one line; None when all are fine."""
  for name, low in _AT_LEAST.items():
    v = getattr(a, name)
    if v is not None and not v >= low:  # `not >=`: NaN is out of range too
      return f'--{name} must be >= {low}, got {v}'
    if v is not None and name in _AT_MOST and v > _AT_MOST[name]:
      return f'--{name} must be <= {_AT_MOST[name]}, got {v}'
  return None


def _main_merge(out_dir) -> int:
  path, rows = summary.merge(out_dir)
  print(f'table: {printable(path)}')
  print(collection.main_line(rows, 0))
  return 0


def _main_cropped(a, overrides) -> int:
  from vaflax import api  # noqa: PLC0415
  from vaflax.predict import cropped  # noqa: PLC0415

  files, ignored = list_inputs(a.input)
  if a.data_dir:
    overrides = [*overrides, f'input.data_dir={a.data_dir}']
  run = api.load(a.workdir, step=a.checkpoint_step, batch_size=a.batch_size, overrides=overrides)
  root = a.input if os.path.isdir(a.input) else os.path.dirname(os.path.abspath(a.input))
  path, ok, bad = cropped.predict_crops(run, files + ignored, a.output, root, a.max_pixels)
  print(f'{ok} crops scored, {bad} errors -> {printable(path)}')
  return 0
