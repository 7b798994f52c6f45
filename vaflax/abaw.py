r"""ABAW valence-arousal submissions from Aff-Wild2's `cropped_aligned` faces, and their score.

  python -m vaflax.abaw --workdir=W --sample=SAMPLE --frames=DIR --output=FILE
  python -m vaflax.abaw --workdir=W --frames=DIR --labels=ANN_DIR --output=FILE   # validation
  python -m vaflax.abaw --predictions=FILE --labels=ANN_DIR                      # score a file

SAMPLE is the organisers' sample file (header `image_location,valence,arousal`; its first column
lists every frame of every test video, e.g. `6-30-1920x1080_left/00001.jpg`). DIR is the
`cropped_aligned` folder (DIR/<video>/<frame>.jpg). Each listed frame with a crop is scored as
`python -m vaflax.predict --cropped` scores a crop (vaflax/predict/cropped.py); the others are
filled by `fill`'s rule. The output has the sample's rows in its order, under its header.
With --labels (an annotation folder such as `.../VA_Estimation_Challenge/Validation_Set`) and no
sample, the rows are every line of every annotation file; the file is then scored with the ABAW
metric, the mean of the valence and arousal CCCs over the annotated frames (docs/abaw.md).
Sample and prediction files are read with the csv module (quoted cells unquoted); every location
must be a relative `<video>/<frame>` path that stays inside DIR.
"""

from __future__ import annotations

import csv
import os
import sys

import numpy as np

from vaflax import cli, media

HEADER = 'image_location,valence,arousal'
INVALID = -5.0  # Aff-Wild2's "not annotated" marker


def _rows(path) -> tuple[list[str], list[tuple[int, list[str]]]]:
  """(header cells, [(line number, cells)] of the non-blank rows) of a sample or prediction
  file, read with the csv module."""
  try:
    with open(path, encoding='utf-8-sig', newline='') as f:
      reader = csv.reader(f)
      rows = [(reader.line_num, r) for r in reader if any(c.strip() for c in r)]
  except (UnicodeDecodeError, csv.Error) as e:
    raise ValueError(f'{path}: not a UTF-8 CSV file ({type(e).__name__}: {e})') from None
  if not rows or rows[0][1][0].strip() != 'image_location':
    first = ','.join(rows[0][1])[:80] if rows else 'an empty file'
    raise ValueError(f'{path}: the first line must be the header {HEADER!r}; got {first!r}')
  return rows[0][1], rows[1:]


def check_location(loc: str, where: str) -> str:
  """`loc` when it is a relative <video>/<frame> path that cannot leave the frames folder (no
  absolute path, no '.' or '..' part, no empty part, no NUL); else ValueError naming `where`."""
  parts = loc.split('/')
  if (len(parts) < 2 or loc.startswith('/') or '\0' in loc
      or any(p in ('', '.', '..') for p in parts)):
    raise ValueError(f'{where}: {loc!r} is not <video>/<frame>.jpg inside the frames folder')
  return loc


def read_sample(path) -> tuple[str, list[str]]:
  """(header line, image locations in order) of a sample or prediction file."""
  header, rows = _rows(path)
  locs = [check_location(r[0].strip(), f'{path}:{k}') for k, r in rows]
  return ','.join(header), locs


def read_labels(ann_dir) -> dict[str, np.ndarray]:
  """{video: (frames, 2) VA, NaN where not annotated (-5) or unusable} of the annotation folder,
  read by the affwild2_va builder's reader (tfds_builders/affwild2_va)."""
  from tfds_builders.affwild2_va import affwild2_va_dataset_builder as aw  # noqa: PLC0415
  from vaflax.data import builder_utils as bu  # noqa: PLC0415

  names = sorted(f for f in os.listdir(ann_dir) if f.endswith('.txt'))
  if not names:
    raise ValueError(f'{ann_dir}: no annotation .txt file')
  skips = bu.SkipLog('labels')
  out = {}
  for name in names:
    lines = aw._read_annotation(os.path.join(ann_dir, name), skips)  # noqa: SLF001
    va = np.array([(np.nan, np.nan) if x is None else x for x in lines], np.float64).reshape(-1, 2)
    va[(va == INVALID) | (np.abs(va) > 1)] = np.nan
    out[name[:-len('.txt')]] = va
  return out


def label_locations(labels: dict[str, np.ndarray]) -> list[str]:
  """Every annotation line as an image location: line k of <video>.txt <-> <video>/<k:05d>.jpg
  (1-based, as cropped_aligned names its files; /work/shared/datasets.md)."""
  return [f'{v}/{k:05d}.jpg' for v in sorted(labels) for k in range(1, len(labels[v]) + 1)]


def _videos(locs: list[str]) -> dict[str, np.ndarray]:
  """{video: row indices in order} of image locations `<video>/<frame>`."""
  out: dict[str, list[int]] = {}
  for i, loc in enumerate(locs):
    out.setdefault(loc.rsplit('/', 1)[0], []).append(i)
  return {v: np.array(ix) for v, ix in out.items()}


def fill(va_Nx2: np.ndarray, locs: list[str]) -> tuple[np.ndarray, dict]:
  """Fills the rows without a prediction (NaN), video by video (rows in the order listed):
  between two predicted rows, linear interpolation by position; before the first or after the
  last predicted row, the video's mean prediction; in a video without any, 0. Returns the
  filled copy and the counts per rule."""
  va = np.array(va_Nx2, np.float64)
  counts = {'predicted': 0, 'interpolated': 0, 'video_mean': 0, 'zero': 0}
  for ix in _videos(locs).values():
    v = va[ix]
    have = np.isfinite(v).all(1)
    counts['predicted'] += int(have.sum())
    if not have.any():
      va[ix] = 0.0
      counts['zero'] += len(ix)
      continue
    pos = np.arange(len(ix))
    known = pos[have]
    inside = ~have & (pos > known[0]) & (pos < known[-1])
    outside = ~have & ~inside
    for d in range(2):
      v[inside, d] = np.interp(pos[inside], known, v[have, d])
    v[outside] = v[have].mean(0)
    va[ix] = v
    counts['interpolated'] += int(inside.sum())
    counts['video_mean'] += int(outside.sum())
  return va, counts


def predict(run, locs: list[str], frames_dir: str, chunk: int = 512,
            max_pixels: int = media.MAX_PIXELS) -> tuple[np.ndarray, dict]:
  """(N, 2) VA of each location's crop, NaN where there is no crop or it cannot be read (empty,
  corrupt, over `max_pixels`, a decompression bomb); and counts of those."""
  from vaflax.predict import cropped  # noqa: PLC0415

  va = np.full((len(locs), 2), np.nan)
  paths = [os.path.join(frames_dir, *check_location(loc, 'location').split('/')) for loc in locs]
  present = [i for i, p in enumerate(paths) if os.path.isfile(p)]
  unreadable = []
  for j, out, err in cropped.score_crops(run, [paths[i] for i in present], chunk,
                                         max_pixels=max_pixels):
    if err is not None:
      unreadable.append(err)
    else:
      va[present[j], 0], va[present[j], 1] = out['valence'], out['arousal']
  for e in unreadable[:5]:
    print(f'note: unreadable crop, filled: {cli.printable(e)}', file=sys.stderr)
  return va, {'no_crop': len(locs) - len(present), 'unreadable': len(unreadable)}


def write(path, header: str, locs: list[str], va_Nx2) -> str:
  """The submission: `header`, then `location,valence,arousal` per row (6 decimals, clipped to
  [-1, 1]; the csv module quotes a location when it must, outputs.cell neutralises one that a
  spreadsheet would run as a formula), written under a temporary name and renamed."""
  from vaflax.predict.outputs import atomic, cell  # noqa: PLC0415

  va = np.clip(np.asarray(va_Nx2, np.float64), -1.0, 1.0)
  if not np.isfinite(va).all():
    raise ValueError('non-finite values left after filling')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with atomic(path) as tmp, open(tmp, 'w', newline='', encoding='utf-8') as f:
    f.write(header + '\n')
    w = csv.writer(f, lineterminator='\n')
    for loc, (v, a) in zip(locs, va, strict=True):
      w.writerow([cell(loc), f'{v:.6f}', f'{a:.6f}'])
  return path


def read_predictions(path) -> dict[str, tuple[float, float]]:
  from vaflax.predict.outputs import uncell  # noqa: PLC0415

  _, rows = _rows(path)
  out = {}
  for k, r in rows:
    loc = check_location(uncell(r[0].strip()), f'{path}:{k}')
    try:
      out[loc] = (float(r[1]), float(r[2]))
    except (IndexError, ValueError):
      raise ValueError(f'{path}:{k}: {",".join(r)[:80]!r} is not location,valence,arousal'
                       ) from None
  return out


def score(pred: dict[str, tuple[float, float]], labels: dict[str, np.ndarray]) -> dict:
  """ABAW metrics of predictions against the labels: pooled CCC (vaflax/metrics.py) over every
  annotated frame; raises ValueError when an annotated frame has no prediction."""
  from vaflax import metrics  # noqa: PLC0415

  p, t = [], []
  missing = []
  for v in sorted(labels):
    for k, lab in enumerate(labels[v], start=1):
      if not np.isfinite(lab).all():
        continue
      loc = f'{v}/{k:05d}.jpg'
      if loc not in pred:
        missing.append(loc)
        continue
      p.append(pred[loc])
      t.append(lab)
  if missing:
    raise ValueError(f'{len(missing)} annotated frames have no prediction, e.g. {missing[:3]}')
  out = metrics.va_metrics(np.array(p).reshape(-1, 2), np.array(t).reshape(-1, 2))
  out['frames'] = len(t)
  out['abaw_score'] = out['ccc_mean']  # P_VA = (CCC_valence + CCC_arousal) / 2
  return out


@cli.entry_point
def main(argv) -> int:
  ap = cli.parser('vaflax.abaw', __doc__)
  ap.add_argument('--workdir', help='the trained run')
  ap.add_argument('--sample', help="the organisers' sample file (the rows to write)")
  ap.add_argument('--frames', help='the cropped_aligned folder: FRAMES/<video>/<frame>.jpg')
  ap.add_argument('--output', help='the submission file to write')
  ap.add_argument('--labels', help='annotation folder (<video>.txt): score the file')
  ap.add_argument('--predictions', help='with --labels: score this existing file, predict nothing')
  ap.add_argument('--batch_size', type=int, default=64)
  ap.add_argument('--checkpoint_step', type=int, default=None)
  ap.add_argument('--max_pixels', type=int, default=media.MAX_PIXELS,
                  help='larger crops are unreadable (filled)')
  a = cli.parse(ap, argv)
  for name, low in (('batch_size', 1), ('checkpoint_step', 0), ('max_pixels', 1)):
    if getattr(a, name) is not None and getattr(a, name) < low:
      raise cli.ConfigError(f'--{name} must be >= {low}, got {getattr(a, name)}')
  labels = read_labels(a.labels) if a.labels else None
  if a.predictions:
    if labels is None:
      ap.error('--predictions needs --labels')
    path = a.predictions
  else:
    if not (a.workdir and a.frames and a.output and (a.sample or labels is not None)):
      ap.error('need --workdir, --frames, --output and --sample (or --labels)')
    if not os.path.isdir(a.frames):
      raise FileNotFoundError(f'--frames={a.frames}: no such folder')
    header, locs = read_sample(a.sample) if a.sample else (HEADER, label_locations(labels))
    from vaflax import api  # noqa: PLC0415

    run = api.load(a.workdir, step=a.checkpoint_step, batch_size=a.batch_size)
    va, missing = predict(run, locs, a.frames, max_pixels=a.max_pixels)
    va, counts = fill(va, locs)
    path = write(a.output, header, locs, va)
    print(f"{len(locs)} rows in {len(_videos(locs))} videos: {counts['predicted']} predicted; "
          f"filled {counts['interpolated']} by interpolation, {counts['video_mean']} by the "
          f"video's mean, {counts['zero']} with 0 ({missing['no_crop']} without a crop, "
          f"{missing['unreadable']} unreadable) -> {cli.printable(path)}")
  if labels is not None:
    s = score(read_predictions(path), labels)
    print(f"{cli.printable(path)}: {s['frames']} annotated frames: CCC valence "
          f"{s['ccc_valence']:.4f}, arousal {s['ccc_arousal']:.4f}; ABAW score (mean) {s['abaw_score']:.4f}")
  return 0


if __name__ == '__main__':
  sys.exit(main())
