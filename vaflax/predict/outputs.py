"""What predict writes for one input: per-frame CSV, per-clip JSON summary, plots, overlay video,
face crops. Every file is written under a temporary name and renamed into place (`atomic`), so
a file that exists is complete, whatever killed the run."""

from __future__ import annotations

import csv
import json
import math
import os
from typing import NamedTuple

import numpy as np

from vaflax import circumplex, cli, faces, fileio

# The canonical keypoint order of predict's Face.landmarks (vaflax/faces.py).
KEYPOINTS = faces.KEYPOINTS  # the detector's landmarks, in the one canonical order
LANDMARK_COLUMNS = tuple(f'lm_{n}_{c}' for n in KEYPOINTS for c in 'xy')
# Appended after the original columns (readers parse by name): the face's quality
# (vaflax/quality.py) and, when the run has a calibration.json, its valence/arousal intervals.
QUALITY_COLUMNS = ('face_px', 'sharpness', 'yaw', 'roll', 'flags')
INTERVAL_COLUMNS = ('valence_lo', 'valence_hi', 'arousal_lo', 'arousal_hi')
CSV_COLUMNS = ('frame', 'time_s', 'face_id', 'x', 'y', 'w', 'h', 'det_score', *LANDMARK_COLUMNS,
               'valence', 'arousal', 'quadrant', *QUALITY_COLUMNS, *INTERVAL_COLUMNS)
NO_FACE = -1  # face_id of the row of a processed frame in which no face was found


class Row(NamedTuple):
  """One face in one processed frame, or (face_id -1, NaN box) a frame without a face."""

  frame: int
  time_s: float
  face_id: int
  x: float = math.nan
  y: float = math.nan
  w: float = math.nan
  h: float = math.nan
  score: float = math.nan  # the detector's score
  landmarks: np.ndarray | None = None  # (len(KEYPOINTS), 2) source pixels
  quality: dict | None = None  # quality.measure of the face's crop


# One atomic-write mechanism for every writer (vaflax/fileio.py); re-exported for predict's users.
atomic, remove_stale_parts = fileio.atomic, fileio.remove_stale_parts


# --- Text written into tables and logs ------------------------------------------------------------

_FORMULA_START = ('=', '+', '-', '@', '\t', '\r')


def text(s) -> str:
  """`s` encodable as UTF-8: a name that is not valid UTF-8 (read with Python's surrogate
  escapes, PEP 383) shows its undecodable bytes as \\xNN."""
  s = str(s)
  try:
    s.encode('utf-8')
    return s
  except UnicodeEncodeError:
    return s.encode('utf-8', 'surrogateescape').decode('utf-8', 'backslashreplace')


printable = cli.printable  # control characters escaped: the one escaper of every CLI line


def cell(s) -> str:
  """A text cell for a CSV: `text(s)`, with a leading ' when it begins with =, +, -, @, a tab or
  a carriage return, so that a spreadsheet shows it as text instead of running it as a formula
  (OWASP's CSV-injection advice). Numbers are not written through this."""
  s = text(s).replace('\0', '\\x00')  # a NUL (from a list file's line) ends C strings
  return "'" + s if s.startswith(_FORMULA_START) else s


def uncell(s: str) -> str:
  """The text `cell` was given (for a table read back)."""
  return s[1:] if s[:1] == "'" and s[1:2] in _FORMULA_START and s[1:2] else s


def _num(x, fmt) -> str:
  return '' if x is None or not math.isfinite(x) else format(x, fmt)


def _quality_cells(r: Row) -> list[str]:
  q = r.quality or {}
  return [_num(q.get('face_px'), 'g'), _num(q.get('sharpness'), '.5f'), _num(q.get('yaw'), '.1f'),
          _num(q.get('roll'), '.1f'), q.get('flags', '')]


def write_csv(path, rows: list[Row], va_Nx2, quadrant_N, head_N=None, lo_Nx2=None,
              hi_Nx2=None) -> str:
  """One line per row (faceless frames: face_id -1 and empty fields); `head_N` (the model's
  quadrant head) adds a quadrant_head column. Rows without a face have NaN VA and quadrant -1.
  `lo_Nx2`, `hi_Nx2`: the calibrated intervals (None, or NaN rows: empty cells)."""
  with atomic(path) as tmp, open(tmp, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(csv_header(head_N is not None))
    w.writerows(csv_lines(rows, va_Nx2, quadrant_N, head_N, lo_Nx2, hi_Nx2))
  return path


def csv_header(has_head: bool) -> list[str]:
  """The CSV's columns (write_csv; live predict writes the same, vaflax/predict/live.py)."""
  return list(CSV_COLUMNS) + (['quadrant_head'] if has_head else [])


def csv_lines(rows: list[Row], va_Nx2, quadrant_N, head_N=None, lo_Nx2=None, hi_Nx2=None):
  """The CSV lines of `rows` (write_csv's arguments), one list of cells per row."""
  names = circumplex.QUADRANT_NAMES
  n_lm = len(KEYPOINTS)
  for i, r in enumerate(rows):
    line = [r.frame, f'{r.time_s:.4f}', r.face_id]
    line += [_num(v, 'g') for v in (r.x, r.y, r.w, r.h)] + [_num(r.score, '.4f')]
    lm = r.landmarks
    if lm is not None and np.shape(lm) == (n_lm, 2):
      line += [f'{v:.1f}' for v in np.asarray(lm, np.float64).reshape(-1)]
    else:  # no face, a detector without landmarks (Haar), or another keypoint set
      line += [''] * (2 * n_lm)
    q = int(quadrant_N[i])
    line += [_num(va_Nx2[i, 0], '.4f'), _num(va_Nx2[i, 1], '.4f'), names[q] if q >= 0 else '']
    line += _quality_cells(r)
    line += ([''] * 4 if lo_Nx2 is None else
             [_num(lo_Nx2[i, 0], '.4f'), _num(hi_Nx2[i, 0], '.4f'), _num(lo_Nx2[i, 1], '.4f'),
              _num(hi_Nx2[i, 1], '.4f')])
    if head_N is not None:
      line.append(names[head_N[i]] if head_N[i] >= 0 else '')
    yield line


def records(rows: list[Row], va_Nx2, quadrant_N, head_N=None, lo_Nx2=None,
            hi_Nx2=None) -> dict[str, np.ndarray]:
  """The CSV's columns as arrays (NaN / '' where a frame has no face): vaflax.api's
  `predict_video`."""
  names = np.array(circumplex.QUADRANT_NAMES + ('',), object)  # index -1 -> ''
  lm = np.full((len(rows), len(KEYPOINTS), 2), np.nan)
  for i, r in enumerate(rows):
    if r.landmarks is not None and np.shape(r.landmarks) == lm.shape[1:]:
      lm[i] = r.landmarks
  cols = {'frame': np.array([r.frame for r in rows], np.int64),
          'time_s': np.array([r.time_s for r in rows], np.float64),
          'face_id': np.array([r.face_id for r in rows], np.int64)}
  for c in ('x', 'y', 'w', 'h'):
    cols[c] = np.array([getattr(r, c) for r in rows], np.float64)
  cols['det_score'] = np.array([r.score for r in rows], np.float64)
  for k, name in enumerate(KEYPOINTS):
    cols[f'lm_{name}_x'], cols[f'lm_{name}_y'] = lm[:, k, 0], lm[:, k, 1]
  va = np.asarray(va_Nx2, np.float64).reshape(-1, 2)
  cols['valence'], cols['arousal'] = va[:, 0], va[:, 1]
  cols['quadrant'] = names[np.asarray(quadrant_N, np.int64)]
  for c in QUALITY_COLUMNS[:-1]:
    cols[c] = np.array([(r.quality or {}).get(c, math.nan) for r in rows], np.float64)
  cols['flags'] = np.array([(r.quality or {}).get('flags', '') for r in rows], object)
  nan = np.full((len(rows), 2), np.nan)
  lo = nan if lo_Nx2 is None else np.asarray(lo_Nx2, np.float64)
  hi = nan if hi_Nx2 is None else np.asarray(hi_Nx2, np.float64)
  cols['valence_lo'], cols['valence_hi'] = lo[:, 0], hi[:, 0]
  cols['arousal_lo'], cols['arousal_hi'] = lo[:, 1], hi[:, 1]
  if head_N is not None:
    cols['quadrant_head'] = names[np.asarray(head_N, np.int64)]
  return cols


def write_crop(path, crop_HxWx3) -> str:
  from PIL import Image  # noqa: PLC0415

  os.makedirs(os.path.dirname(path), exist_ok=True)
  with atomic(path) as tmp:
    Image.fromarray(np.ascontiguousarray(crop_HxWx3)).save(tmp, format='PNG')
  return path


def _stats(x) -> dict:
  x = np.asarray(x, np.float64)
  return {'mean': float(x.mean()), 'std': float(x.std()), 'min': float(x.min()),
          'max': float(x.max())}


def clip_quadrant(counts_Q, mean_va) -> int:
  """A clip's quadrant (docs/quadrants.md, "A clip's quadrant"): the one with the most face
  rows; a tie goes to the quadrant of the mean VA when it is among the tied, else to the
  lowest id."""
  counts_Q = np.asarray(counts_Q)
  tied = np.flatnonzero(counts_Q == counts_Q.max())
  of_mean = int(circumplex.va_to_quadrant(np.asarray(mean_va, np.float64)))
  return of_mean if of_mean in tied else int(tied[0])


def va_summary(va_Nx2, quadrant_N, face_id_N, processed: int) -> dict:
  """The pooled VA statistics, quadrant shares and per-face means of a clip's rows."""
  if not len(va_Nx2):
    return {'valence': None, 'arousal': None, 'quadrant_share': None,
            'dominant_quadrant': None, 'per_face': [],
            'note': f'no face found in any of the {processed} processed frames'}
  names = circumplex.QUADRANT_NAMES[:circumplex.NUM_QUADRANTS]
  counts = np.bincount(quadrant_N, minlength=len(names))[: len(names)]
  share = counts / len(quadrant_N)
  return {
      'valence': _stats(va_Nx2[:, 0]), 'arousal': _stats(va_Nx2[:, 1]),
      'quadrant_share': {n: float(s) for n, s in zip(names, share, strict=True)},
      'dominant_quadrant': names[clip_quadrant(counts, va_Nx2.mean(0))],
      'per_face': [{'face_id': int(f), 'frames': int(np.sum(face_id_N == f)),
                    'valence_mean': float(va_Nx2[face_id_N == f, 0].mean()),
                    'arousal_mean': float(va_Nx2[face_id_N == f, 1].mean())}
                   for f in np.unique(face_id_N)],
  }


def write_json(path, summary: dict) -> str:
  with atomic(path) as tmp, open(tmp, 'w') as f:
    json.dump(summary, f, indent=2)
  return path


def write_plots(out_dir, stem, rows: list[Row], va_Nx2, is_video: bool, *,
                clip_rows: list[Row] | None = None, duration_s: float | None = None) -> dict:
  """The pictures of one input; `rows` and `va_Nx2` are the rows with a face.

  A video: the trajectory on the circumplex and VA over time of the face seen most, the latter
  over the whole clip (0 to `duration_s`) with the processed frames where that face is absent
  (`clip_rows`: every row of the clip, faceless frames included) as gaps. A photo: its faces on
  the circumplex, numbered, with no time axis (same file name, `<stem>_trajectory.png`)."""
  from vaflax import plots  # noqa: PLC0415

  face_id = np.array([r.face_id for r in rows], np.int64)
  files = {'trajectory_png': os.path.join(out_dir, f'{stem}_trajectory.png')}
  name = os.path.basename(stem)
  if not is_video:
    with atomic(files['trajectory_png']) as tmp:
      plots.circumplex_scatter(tmp, va_Nx2, labels=[f'face {f}' for f in face_id], marks=face_id,
                               legend_title='faces', title=plots.plain_text(text(f'{name}: {len(rows)} face(s)')))
    return files
  main_id = int(np.bincount(face_id).argmax())
  sel = face_id == main_id
  times = np.array([r.time_s for r in rows], np.float64)[sel]
  label = plots.plain_text(text(f'{name}, face {main_id}'))
  with atomic(files['trajectory_png']) as tmp:
    plots.circumplex_trajectory(tmp, va_Nx2[sel], times, title=label)
  # Every processed frame on the time axis; NaN where the main face is not in it (a gap).
  frame_time = {int(r.frame): float(r.time_s) for r in (clip_rows or rows)}
  at = {int(r.frame): k for k, r in enumerate(r for r, keep in zip(rows, sel, strict=True) if keep)}
  frames = sorted(frame_time)
  va_time = np.full((len(frames), 2), np.nan)
  main_va = va_Nx2[sel]
  for j, fr in enumerate(frames):
    if fr in at:
      va_time[j] = main_va[at[fr]]
  files['va_time_png'] = os.path.join(out_dir, f'{stem}_va_time.png')
  with atomic(files['va_time_png']) as tmp:
    plots.va_over_time(tmp, [frame_time[fr] for fr in frames], va_time, title=label,
                        duration_s=duration_s)
  return files
