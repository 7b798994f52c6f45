r"""Valence/arousal of the faces in images and videos, with a trained run.

  python -m vaflax.predict --workdir=W --input=PATH --output=DIR [--frame_stride=1]
      [--smooth=none|ema|mean --smooth_window=5] [--min_face=40] [--faces=largest|all]
      [--overlay] [--flip_tta] [--batch_size=32] [--detect_every=10] [--cropped]
      [--detector=blazeface|haar]

PATH is an image, a video or a folder of them. docs/predict.md has the outputs and formats.
"""

from __future__ import annotations

import argparse
import os
import sys

from vaflax.predict.decode import IMAGE_EXTS, VIDEO_EXTS, InputError
from vaflax.predict.model import DEFAULT_MARGIN, Predictor
from vaflax.predict.pipeline import Options, predict_file


def list_inputs(path) -> tuple[list[str], list[str]]:
  """(media files, ignored files) of a file or a folder (not recursive), sorted."""
  path = os.fspath(path)
  if os.path.isfile(path):
    return [path], []
  if not os.path.isdir(path):
    raise InputError(f'--input={path}: no such file or folder')
  media, ignored = [], []
  for name in sorted(os.listdir(path)):
    p = os.path.join(path, name)
    if not os.path.isfile(p) or name.startswith('.'):
      continue
    (media if name.lower().endswith(IMAGE_EXTS + VIDEO_EXTS) else ignored).append(p)
  return media, ignored


def _stems(files) -> list[str]:
  """Output names: the file stem, or stem_ext when two inputs share a stem."""
  stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
  return [s if stems.count(s) == 1 else f'{s}_{os.path.splitext(f)[1].lstrip(".").lower()}'
          for s, f in zip(stems, files, strict=True)]


def run(predictor: Predictor, input_path, out_dir, opts: Options) -> tuple[list[dict], list[str]]:
  """Predicts every input; returns the summaries and one 'path: reason' per input that failed."""
  files, ignored = list_inputs(input_path)
  if os.path.isdir(input_path) and not files:
    raise InputError(f'--input={input_path}: no image or video file in this folder')
  for p in ignored:
    print(f'skipped {p}: not an image or video extension', file=sys.stderr)
  summaries, errors = [], []
  for path, stem in zip(files, _stems(files), strict=True):
    try:
      summaries.append(predict_file(predictor, path, out_dir, opts, stem=stem))
    except InputError as e:
      errors.append(str(e))
      print(f'error: {e}', file=sys.stderr)
  return summaries, errors


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  overrides = [a[len('--config.'):] for a in argv if a.startswith('--config.')]
  rest = [a for a in argv if not a.startswith('--config.')]
  d = Options()
  ap = argparse.ArgumentParser(prog='python -m vaflax.predict', description=__doc__.split('\n')[0])
  ap.add_argument('--workdir', required=True, help='the trained run')
  ap.add_argument('--input', required=True, help='an image, a video or a folder of them')
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
  ap.add_argument('--no_plots', action='store_true')
  ap.add_argument('--flip_tta', action='store_true')
  ap.add_argument('--batch_size', type=int, default=32)
  ap.add_argument('--checkpoint_step', type=int, default=None)
  ap.add_argument('--crop_size', type=int, default=0, help="0: the training dataset's")
  ap.add_argument('--crop_margin', type=float, default=DEFAULT_MARGIN)
  ap.add_argument('--data_dir', default=None, help="TFDS data dir (for the dataset's crop size)")
  ap.add_argument('--quiet', action='store_true', help='no progress line')
  ap.add_argument('--cropped', action='store_true',
                  help='each input image is one face crop: no detection, one row per image in '
                  'OUTPUT/cropped.csv')
  a = ap.parse_args(rest)
  if a.cropped:
    return _main_cropped(a, overrides)
  opts = Options(frame_stride=a.frame_stride, smooth=a.smooth, smooth_window=a.smooth_window,
                 min_face=a.min_face, faces=a.faces, detect_every=a.detect_every,
                 detector=a.detector, max_age=a.max_age, overlay=a.overlay, plots=not a.no_plots,
                 progress=not a.quiet)
  try:
    opts.check()
    list_inputs(a.input)  # fail on a missing input before loading the model
    predictor = Predictor(a.workdir, checkpoint_step=a.checkpoint_step, batch_size=a.batch_size,
                          flip=a.flip_tta, crop_size=a.crop_size or None, crop_margin=a.crop_margin,
                          data_dir=a.data_dir, overrides=overrides)
    summaries, errors = run(predictor, a.input, a.output, opts)
  except (InputError, FileNotFoundError, PermissionError, ValueError, KeyError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  for s in summaries:
    what = (f"dominant {s['dominant_quadrant']}, V {s['valence']['mean']:+.3f} "
            f"A {s['arousal']['mean']:+.3f}" if s['num_rows'] else s['note'])
    print(f"{s['input']}: {s['frames_with_face']}/{s['frames_processed']} frames with a face, "
          f"{what} -> {s['files']['csv']}")
  if errors:
    print(f'{len(errors)} of {len(summaries) + len(errors)} inputs failed:', file=sys.stderr)
    for e in errors:
      print(f'  {e}', file=sys.stderr)
    return 1
  return 0


def _main_cropped(a, overrides) -> int:
  from vaflax import api  # noqa: PLC0415
  from vaflax.predict import cropped  # noqa: PLC0415

  try:
    files, ignored = list_inputs(a.input)
    if a.data_dir:
      overrides = [*overrides, f'input.data_dir={a.data_dir}']
    run = api.load(a.workdir, step=a.checkpoint_step, batch_size=a.batch_size,
                   overrides=overrides)
    root = a.input if os.path.isdir(a.input) else os.path.dirname(os.path.abspath(a.input))
    path, ok, bad = cropped.predict_crops(run, files + ignored, a.output, root)
  except (InputError, FileNotFoundError, PermissionError, ValueError, KeyError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'{ok} crops scored, {bad} errors -> {path}')
  return 0
