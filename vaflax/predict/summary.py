"""The collection's table: one row per input (OUT/summary.csv, or summary-KofN.csv per shard),
read back and merged; and the clips on the circumplex (OUT/summary_circumplex.png)."""

from __future__ import annotations

import collections
import csv
import glob
import math
import os
import re
import sys

import numpy as np

from vaflax import circumplex
from vaflax.predict.outputs import atomic, cell, text, uncell

_QUADRANTS = circumplex.QUADRANT_NAMES[:circumplex.NUM_QUADRANTS]
SHARE_COLUMNS = tuple(f'share_{q}' for q in _QUADRANTS)
COLUMNS = ('path', 'status', 'error', 'frames', 'face_frames', 'duration_s', 'valence_mean',
           'arousal_mean', 'quadrant', *SHARE_COLUMNS, 'quadrant_confidence', 'uncertain')
# Columns added later: a table written before them reads back with them empty.
_LATER_COLUMNS = ('quadrant_confidence', 'uncertain')
_SHARD_TABLE = re.compile(r'^summary-(\d+)of(\d+)\.csv$')


def table_name(shard: tuple[int, int]) -> str:
  k, n = shard
  return 'summary.csv' if n == 1 else f'summary-{k}of{n}.csv'


def _f(x, fmt='.4f') -> str:
  return '' if x is None or not math.isfinite(x) else format(x, fmt)


def row(s: dict) -> dict:
  """The table row of an input's JSON summary (vaflax/predict/pipeline.py)."""
  share = s.get('quadrant_share') or {}
  # The path as tables and plots show it: a name that is not UTF-8 with \xNN (outputs.text).
  out = {'path': text(s['path']), 'status': s['status'], 'error': s.get('error') or '',
         'frames': s.get('frames_processed') or 0, 'face_frames': s.get('frames_with_face') or 0,
         'duration_s': _f(s.get('duration_s'), '.3f'),
         'valence_mean': _f((s.get('valence') or {}).get('mean')),
         'arousal_mean': _f((s.get('arousal') or {}).get('mean')),
         'quadrant': s.get('dominant_quadrant') or ''}
  out.update({c: _f(share.get(q)) for c, q in zip(SHARE_COLUMNS, _QUADRANTS, strict=True)})
  # Calibrated runs only (docs/uncertainty.md): empty without a calibration or a face.
  out['quadrant_confidence'] = _f(s.get('quadrant_confidence'))
  out['uncertain'] = '' if s.get('uncertain') is None else str(bool(s['uncertain'])).lower()
  return out


_TEXT_COLUMNS = ('path', 'error')  # from file names and messages: neutralised (outputs.cell)


def write_table(path: str, rows: list[dict]) -> str:
  """The table sorted by path, written atomically, and its plot beside it."""
  rows = sorted(rows, key=lambda r: r['path'])
  with atomic(path) as tmp, open(tmp, 'w', newline='', encoding='utf-8') as f:
    w = csv.DictWriter(f, COLUMNS)
    w.writeheader()
    w.writerows({**r, **{c: cell(r[c]) for c in _TEXT_COLUMNS}} for r in rows)
  try:
    plot(os.path.splitext(path)[0] + '_circumplex.png', rows)
  except Exception as e:  # noqa: BLE001 -- the table stands without its picture
    print(f'note: {path}: the circumplex plot failed ({type(e).__name__}: {e})', file=sys.stderr)
  return path


def plot(path: str, rows: list[dict]) -> str | None:
  """Each clip with a face at its mean VA on the circumplex; None when no clip has one."""
  from vaflax import plots  # noqa: PLC0415

  scored = [r for r in rows if r['valence_mean'] != '']
  va = np.array([[float(r['valence_mean']), float(r['arousal_mean'])] for r in scored],
                np.float64).reshape(-1, 2)
  if not len(va):
    return None
  with atomic(path) as tmp:  # each clip numbered on the plane and named in the legend
    plots.circumplex_scatter(tmp, va, labels=[r['path'] for r in scored],
                             title=f'{len(va)} of {len(rows)} clips: mean VA')
  return path


def _read(path) -> list[dict]:
  with open(path, newline='', encoding='utf-8', errors='replace') as f:
    rows = list(csv.DictReader(f))
  for k, r in enumerate(rows, start=2):  # a table edited by hand or by something else
    for c in _LATER_COLUMNS:
      r.setdefault(c, '')
    if any(not isinstance(r.get(c), str) for c in COLUMNS):
      raise ValueError(f'{path}:{k}: not a row of a summary table (columns {", ".join(COLUMNS)})')
  return [{**r, **{c: uncell(r[c]) for c in _TEXT_COLUMNS}} for r in rows]


def read_table(out_dir: str) -> list[dict]:
  """The collection's rows, each input once: the shard tables merged when there are any (all N
  of them must be there), else summary.csv. Raises ValueError naming what is missing."""
  shards = {}
  for p in glob.glob(os.path.join(out_dir, 'summary-*of*.csv')):
    m = _SHARD_TABLE.match(os.path.basename(p))
    if m:
      shards.setdefault(int(m.group(2)), {})[int(m.group(1))] = p
  if not shards:
    p = os.path.join(out_dir, 'summary.csv')
    if not os.path.exists(p):
      raise ValueError(f'{out_dir}: no summary.csv nor summary-KofN.csv')
    return _read(p)
  if len(shards) > 1:
    raise ValueError(f'{out_dir}: shard tables of several shard counts {sorted(shards)}: '
                     'remove the stale ones')
  (n, have), = shards.items()
  missing = sorted(set(range(1, n + 1)) - set(have))
  if missing:
    raise ValueError(f'{out_dir}: shard tables missing: '
                     + ', '.join(f'summary-{k}of{n}.csv' for k in missing))
  rows = [r for k in sorted(have) for r in _read(have[k])]
  dup = sorted(p for p, c in collections.Counter(r['path'] for r in rows).items() if c > 1)
  if dup:
    raise ValueError(f'{out_dir}: inputs in more than one shard table: {dup[:5]}')
  return sorted(rows, key=lambda r: r['path'])


def merge(out_dir: str) -> tuple[str, list[dict]]:
  """Writes OUT/summary.csv (and its plot) from the shard tables; returns (path, rows)."""
  rows = read_table(out_dir)
  return write_table(os.path.join(out_dir, 'summary.csv'), rows), rows
