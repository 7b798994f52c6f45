"""Valence-arousal balancing: inverse-frequency sampling over a grid of the VA plane.

`config.input.balance = 'va_grid'` replaces the shuffled epochs of a training source by an
infinite stream of weighted draws with replacement: rare VA cells are over-sampled and frequent
ones under-sampled. VA in [-1, 1]^2 is cut into `grid` x `grid` equal cells; a record in a cell
holding c records gets weight c^-power (power 1: every non-empty cell is drawn equally often;
0.5: square-root balancing; 0: uniform over records). Records with only one valid dimension
(e.g. an Aff-Wild2 -5 on arousal) are balanced on that dimension's `grid` bins among themselves;
each of the three groups (both / valence only / arousal only) keeps its share of the records.
Weights are scaled so the average labelled record weighs 1; records without any valid VA get
`floor` (0: never drawn).

Draw i of a stream is `searchsorted(cumulative weights, u)` with u from
`np.random.default_rng([tag, seed, source, host, i])`: element i depends on nothing but i, so
the stream is a Grain MapDataset like any other: deterministic, random access, and a Grain
iterator over it resumes exactly from its saved state.

The labels come from one pass over the split that parses only valence, arousal and va_mask of
the serialized records (no image decoding), cached as `<builder data_dir>/va_labels-<split>.npz`
and rebuilt when the split's files change.
"""

from __future__ import annotations

import io
import os
import re
import sys
import time
import uuid

import numpy as np
from absl import logging
from etils import epath

MODES = ('', 'va_grid')
LABELS_FORMAT = 1  # bump when the cache layout changes
_CHUNK = 4096  # records parsed per read (bounds memory on multi-million-frame splits)
_TAG = 0xBA1A  # keeps these streams apart from other users of the same seed


def grid_cells(va, va_mask, grid: int = 20) -> tuple[np.ndarray, np.ndarray]:
  """Cell id and group of each record.

  Returns (cell (N,) int64, group (N,) int8): group 0 both dimensions valid (cell v_bin * grid +
  a_bin), 1 valence only (cell grid^2 + v_bin), 2 arousal only (grid^2 + grid + a_bin), -1 none
  (cell -1). Bins are [-1, 1] cut into `grid` equal intervals, 1.0 in the last one.
  """
  va = np.asarray(va, np.float64)
  valid = np.asarray(va_mask) > 0
  if va.ndim != 2 or va.shape[1] != 2 or valid.shape != va.shape:
    raise ValueError(f'grid_cells: va and va_mask must be (N, 2), got {va.shape}, {valid.shape}')
  if grid < 1:
    raise ValueError(f'config.input.balance_grid must be >= 1, got {grid}')
  bins = np.clip(np.floor((np.nan_to_num(va) + 1.0) * 0.5 * grid), 0, grid - 1).astype(np.int64)
  v, a = valid[:, 0], valid[:, 1]
  both, v_only, a_only = v & a, v & ~a, ~v & a
  cell = np.full((len(va),), -1, np.int64)
  cell[both] = bins[both, 0] * grid + bins[both, 1]
  cell[v_only] = grid * grid + bins[v_only, 0]
  cell[a_only] = grid * grid + grid + bins[a_only, 1]
  group = np.full((len(va),), -1, np.int8)
  group[both], group[v_only], group[a_only] = 0, 1, 2
  return cell, group


def record_weights(va, va_mask, *, grid: int = 20, power: float = 1.0,
                   floor: float = 0.0) -> np.ndarray:
  """Sampling weight of each record (float64 (N,)); see the module docstring."""
  if power < 0:
    raise ValueError(f'config.input.balance_power must be >= 0, got {power}')
  if floor < 0:
    raise ValueError(f'config.input.balance_floor must be >= 0, got {floor}')
  cell, group = grid_cells(va, va_mask, grid)
  w = np.full((len(cell),), float(floor), np.float64)
  labelled = cell >= 0
  if labelled.any():
    counts = np.bincount(cell[labelled], minlength=grid * grid + 2 * grid)
    raw = counts[cell[labelled]].astype(np.float64) ** -float(power)
    g = group[labelled]
    for k in range(3):
      sel = g == k
      if sel.any():  # each group keeps its share of the records (mean weight 1 inside it)
        raw[sel] /= raw[sel].mean()
    w[labelled] = raw
  return w


def window_weights(frame_weights, starts, lengths) -> np.ndarray:
  """Weight of a window = mean weight of its real frames (masked frames count with `floor`)."""
  fw = np.asarray(frame_weights, np.float64)
  starts = np.asarray(starts, np.int64)
  lengths = np.asarray(lengths, np.int64)
  if len(starts) and (starts.min() < 0 or (starts + lengths).max() > len(fw) or lengths.min() < 1):
    raise ValueError('window_weights: a window lies outside the frame labels (stale label cache?)')
  cs = np.concatenate([[0.0], np.cumsum(fw)])
  return (cs[starts + lengths] - cs[starts]) / lengths


class WeightedSampler:
  """Random access to an infinite stream of positions drawn with probability ~ weights."""

  def __init__(self, weights, key: tuple[int, ...]):
    w = np.asarray(weights, np.float64)
    if w.ndim != 1 or not len(w) or not np.all(np.isfinite(w)) or w.min() < 0:
      raise ValueError('WeightedSampler: weights must be a non-empty vector of finite values >= 0')
    nz = np.flatnonzero(w)
    if not len(nz):
      raise ValueError('WeightedSampler: all weights are 0')
    self._cdf = np.cumsum(w)
    self._last = int(nz[-1])  # a u * total that rounds up to total still lands on a weighted item
    self._key = tuple(int(k) for k in key)
    if any(k < 0 for k in self._key):
      raise ValueError(f'WeightedSampler: key entries must be >= 0, got {self._key}')

  def __len__(self):
    return sys.maxsize

  def __getitem__(self, i) -> int:
    u = np.random.default_rng([_TAG, *self._key, int(i)]).random()
    # side='right': the first position whose cumulative weight exceeds u * total, so a
    # zero-weight position (same cumulative value as its predecessor) is never returned.
    j = int(np.searchsorted(self._cdf, u * self._cdf[-1], side='right'))
    return min(j, self._last)

  def draw(self, indices) -> np.ndarray:
    return np.fromiter((self[i] for i in indices), np.int64)


class BalancedSource:
  """Infinite random-access source: element i = src[positions[sampler[i]]]."""

  def __init__(self, src, positions, weights, key: tuple[int, ...]):
    positions = np.asarray(positions, np.int64)
    if len(positions) != len(weights):
      raise ValueError(f'BalancedSource: {len(positions)} positions but {len(weights)} weights')
    self._src, self._positions = src, positions
    self.sampler = WeightedSampler(weights, key)

  def __len__(self):
    return sys.maxsize

  def __getitem__(self, i):
    return self._src[int(self._positions[self.sampler[i]])]


# --- labels -------------------------------------------------------------------------------------


def labels_path(builder, split: str) -> epath.Path:
  safe = re.sub(r'[^A-Za-z0-9_.-]+', '_', split)
  return epath.Path(builder.data_dir) / f'va_labels-{safe}.npz'


def _fingerprint(builder, split: str) -> str:
  """Changes when the split is rebuilt (file sizes and modification times)."""
  si = builder.info.splits[split]
  parts = [f'format={LABELS_FORMAT}', builder.name, str(builder.version), str(si.num_examples)]
  for fi in si.file_instructions:
    if os.path.exists(fi.filename):  # local: nanosecond modification times
      st = os.stat(fi.filename)
      size, mtime = st.st_size, st.st_mtime_ns
    else:  # cloud storage through etils
      st = epath.Path(fi.filename).stat()
      size, mtime = st.length, st.mtime
    parts.append(f'{os.path.basename(fi.filename)}:{fi.skip}:{fi.take}:{size}:{mtime}')
  return '|'.join(parts)


def _parse_labels_fast(src, va, mask) -> bool:
  """Parses only the three label features of each serialized record; False if not applicable."""
  from tensorflow_datasets.proto import tf_example_pb2  # noqa: PLC0415 (TFDS's own proto, no TF)

  raw = getattr(src, 'data_source', None)  # ArrayRecord records in the order of src[i]
  if raw is None or len(raw) != len(va):
    return False
  for lo in range(0, len(va), _CHUNK):
    recs = raw.__getitems__(list(range(lo, min(len(va), lo + _CHUNK))))
    for j, rec in enumerate(recs):
      f = tf_example_pb2.Example.FromString(rec).features.feature
      try:
        va[lo + j] = (f['valence'].float_list.value[0], f['arousal'].float_list.value[0])
        mask[lo + j] = f['va_mask'].float_list.value
      except (KeyError, IndexError, ValueError):
        return False
  return True


def _read_labels(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
  import tensorflow_datasets as tfds  # noqa: PLC0415

  src = builder.as_data_source(split=split)
  n = len(src)
  va, mask = np.zeros((n, 2), np.float32), np.zeros((n, 2), np.float32)
  if not _parse_labels_fast(src, va, mask):
    logging.info('%s/%s: reading VA labels through the data source (slower path)',
                 builder.name, split)
    src = builder.as_data_source(split=split, decoders={'image': tfds.decode.SkipDecoding()})
    for i in range(n):
      ex = src[i]
      va[i] = (ex['valence'], ex['arousal'])
      mask[i] = ex['va_mask']
  return va, mask


def load_va_labels(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(va (N, 2) float32, va_mask (N, 2) float32) of a built split, from the cache when fresh."""
  path = labels_path(builder, split)
  fp = _fingerprint(builder, split)
  if path.exists():
    try:
      with np.load(io.BytesIO(path.read_bytes())) as z:
        if str(z['fingerprint']) == fp:
          return z['va'], z['va_mask']
      logging.info('%s: stale (the split was rebuilt); recomputing', path)
    except (OSError, ValueError, KeyError) as e:
      logging.warning('%s: unreadable label cache (%s); recomputing', path, e)
  t0 = time.time()
  va, mask = _read_labels(builder, split)
  buf = io.BytesIO()
  np.savez(buf, va=va, va_mask=mask, fingerprint=np.asarray(fp))
  tmp = path.parent / f'.{path.name}.{uuid.uuid4().hex}.tmp'
  try:  # write-then-rename: hosts that compute it at the same time never see a partial file
    tmp.write_bytes(buf.getvalue())
    tmp.rename(path)
  except OSError as e:  # a read-only data_dir still trains; it just re-reads the labels next time
    logging.warning('cannot write the VA label cache %s (%s); continuing without it', path, e)
  logging.info('%s/%s: VA labels of %d records read in %.1f s', builder.name, split, len(va),
               time.time() - t0)
  return va, mask


def describe(weights, cells) -> str:
  """One log line: how uneven the raw cells are and how strong the resampling is."""
  lab = cells >= 0
  counts = np.bincount(cells[lab]) if lab.any() else np.zeros((0,))
  counts = counts[counts > 0]
  if not len(counts):
    return 'no labelled record'
  w = weights[weights > 0]
  ess = w.sum() ** 2 / (w**2).sum()  # Kish's effective sample size of the weighted draw
  return (f'{len(counts)} non-empty cells (records per cell {counts.min()}..{counts.max()}), '
          f'{int((weights == 0).sum())} records never drawn, weight range '
          f'{w.min():.3g}..{w.max():.3g}, effective sample size {ess:.0f} of {len(w)}')
