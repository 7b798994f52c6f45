"""VA-grid balancing: weights by hand, flattening of a skewed label set, zero-weight records never
drawn, determinism, resume, per-host shards, windows, and the label cache."""

import os

import numpy as np
import pytest
from conftest import tiny_config

import tfds_builders
from vaflax.data import balance, build, pipeline, sources

AFEW_PARTS = os.path.join(os.path.dirname(tfds_builders.__file__), 'afew_va', 'dummy_data', 'parts')

# Three VA points in three different 20x20 cells: A (10, 11), B (9, 15), C (17, 1).
A, B, C = (0.05, 0.12), (-0.05, 0.55), (0.75, -0.85)


def test_weights_hand_case():
  va = np.array([A, A, A, B, (0.3, 0.0), (0.0, 0.0)], np.float32)
  mask = np.array([[1, 1], [1, 1], [1, 1], [1, 1], [1, 0], [0, 0]], np.float32)
  cell, group = balance.grid_cells(va, mask, 20)
  np.testing.assert_array_equal(cell, [10 * 20 + 11, 211, 211, 9 * 20 + 15, 400 + 13, -1])
  np.testing.assert_array_equal(group, [0, 0, 0, 0, 1, -1])
  # Full inverse frequency: A records 1/3, B 1; scaled to mean 1 over the group -> 2/3 and 2.
  np.testing.assert_allclose(balance.record_weights(va, mask),
                             [2 / 3, 2 / 3, 2 / 3, 2, 1, 0], rtol=1e-12)
  w = balance.record_weights(va, mask, power=0.5, floor=0.25)
  assert w[3] / w[0] == pytest.approx(np.sqrt(3)) and w[5] == 0.25 and w[4] == 1
  np.testing.assert_allclose(balance.record_weights(va, mask, power=0.0), [1, 1, 1, 1, 1, 0])
  # Bin edges: -1 in the first bin, +1 in the last one (not an out-of-range 21st).
  edge, _ = balance.grid_cells(np.array([[-1, 1], [1, -1]]), np.ones((2, 2)), 20)
  np.testing.assert_array_equal(edge, [0 * 20 + 19, 19 * 20 + 0])
  with pytest.raises(ValueError, match='balance_power'):
    balance.record_weights(va, mask, power=-1)


def test_window_weight_is_the_mean_of_its_frames():
  fw = np.array([1.0, 3.0, 0.0, 0.0, 2.0])
  np.testing.assert_allclose(balance.window_weights(fw, [0, 1, 2, 4], [2, 3, 2, 1]),
                             [2.0, 1.0, 0.0, 2.0])
  with pytest.raises(ValueError, match='outside'):
    balance.window_weights(fw, [4], [2])


def _skewed(n_per_cell):
  """Records in geometric cell sizes 4000, 1000, ... plus unlabelled ones; returns labels."""
  va, mask = [], []
  for k, n in enumerate(n_per_cell):
    va += [((k % 5) * 0.4 - 0.9, (k // 5) * 0.4 - 0.9)] * n  # a different cell per k
    mask += [(1, 1)] * n
  va += [(0.0, 0.0)] * 500
  mask += [(0, 0)] * 500
  return np.array(va, np.float32), np.array(mask, np.float32)


def test_sampling_flattens_a_skewed_label_set_and_never_draws_zero_weights():
  sizes = [4000, 1000, 300, 100, 30, 10, 5, 2]
  va, mask = _skewed(sizes)
  cell, _ = balance.grid_cells(va, mask)
  w = balance.record_weights(va, mask)
  s = balance.WeightedSampler(w, key=(0, 0, 0))
  idx = s.draw(range(8000))
  drawn = np.bincount(cell[idx][cell[idx] >= 0], minlength=400)
  raw = np.bincount(cell[cell >= 0], minlength=400)
  nonempty = raw > 0
  assert np.all(cell[idx] >= 0)  # the 500 unlabelled records are never drawn
  assert set(np.flatnonzero(drawn)) == set(np.flatnonzero(nonempty))  # empty cells never drawn
  freq = drawn[nonempty] / len(idx)
  raw_freq = raw[nonempty] / raw.sum()
  assert raw_freq.max() / raw_freq.min() == 2000  # 4000 vs 2 records
  assert freq.max() / freq.min() < 1.35  # expected 1/8 each: 1000 +- 31 draws per cell
  np.testing.assert_allclose(freq, 1 / 8, atol=0.02)
  # Square-root balancing sits in between: cell frequency ~ sqrt(size).
  idx_sqrt = balance.WeightedSampler(balance.record_weights(va, mask, power=0.5), (0, 0, 0)).draw(
      range(8000))
  cell_of_k = cell[np.cumsum([0] + sizes[:-1])]  # the cell of each size group, in `sizes` order
  f_sqrt = np.bincount(cell[idx_sqrt], minlength=400)[cell_of_k] / 8000
  expect = np.sqrt(sizes) / np.sqrt(sizes).sum()
  np.testing.assert_allclose(f_sqrt, expect, atol=0.02)
  # Deterministic per key; another seed gives another stream; random access = sequential.
  np.testing.assert_array_equal(idx[:50], balance.WeightedSampler(w, (0, 0, 0)).draw(range(50)))
  assert not np.array_equal(idx[:50], balance.WeightedSampler(w, (1, 0, 0)).draw(range(50)))
  assert s[7777] == idx[7777]


def _fake_labels(monkeypatch, labels_by_name):
  """Stands in for the label pass: `name -> (va, va_mask)` (the pipeline plumbing is real)."""
  def fake(builder, split):
    return labels_by_name[builder.name]
  monkeypatch.setattr(balance, 'load_va_labels', fake)


def _synthetic_skew(n):
  """3 cells with 78% / 16% / 3% of the records, the last 3% unlabelled (index i -> cell)."""
  cells = np.full((n,), 3)
  cells[: int(0.78 * n)] = 0
  cells[int(0.78 * n) : int(0.94 * n)] = 1
  cells[int(0.94 * n) : int(0.97 * n)] = 2
  points = np.array([A, B, C, (0, 0)], np.float32)
  mask = np.where(cells[:, None] < 3, 1.0, 0.0).astype(np.float32) * np.ones((1, 2), np.float32)
  return cells, points[cells], mask


def test_balanced_pipeline_is_flat_deterministic_resumable_and_sharded(synthetic_data_dir,
                                                                       monkeypatch):
  cells, va, mask = _synthetic_skew(3840)
  _fake_labels(monkeypatch, {'synthetic_va': (va, mask)})
  c = tiny_config(synthetic_data_dir, batch_size=16, **{
      'input.balance': 'va_grid', 'input.pp_train': "standardize|keep('va', 'index')"})
  ds, n = pipeline.make_train_dataset(c)
  assert n == 3840
  it = iter(ds)
  batches = [next(it) for _ in range(40)]
  idx = np.concatenate([b['index'] for b in batches])
  counts = np.bincount(cells[idx], minlength=4)
  assert counts[3] == 0  # unlabelled records: weight 0, never drawn
  raw = np.bincount(cells, minlength=4)[:3] / 3840
  assert raw.max() / raw.min() == pytest.approx(26, rel=0.01)
  freq = counts[:3] / len(idx)  # 640 draws, 1/3 expected each (+- 0.019)
  assert freq.max() / freq.min() < 1.4, freq
  src = sources.load_source('synthetic_va', 'train', synthetic_data_dir)[0]
  for i, v in zip(batches[0]['index'], batches[0]['va'], strict=True):  # the record's own labels
    np.testing.assert_allclose(v, [src[int(i)]['valence'], src[int(i)]['arousal']])
  # Deterministic, and the iterator state after balancing resumes exactly.
  it2 = iter(pipeline.make_train_dataset(c)[0])
  for k in range(3):
    np.testing.assert_array_equal(next(it2)['index'], batches[k]['index'])
  state = it2.get_state()
  it3 = iter(pipeline.make_train_dataset(c)[0])
  it3.set_state(state)
  np.testing.assert_array_equal(next(it3)['index'], batches[3]['index'])
  # Per-host shards compose with balancing: host p only draws records p, p + 2, ...
  for p in range(2):
    ds_p, _ = pipeline.make_train_dataset(c, process_index=p, process_count=2)
    it_p = iter(ds_p)
    idx_p = np.concatenate([next(it_p)['index'] for _ in range(10)])
    assert np.all(idx_p % 2 == p) and np.all(cells[idx_p] < 3)
    assert len(np.unique(cells[idx_p])) == 3
  with pytest.raises(ValueError, match='balance'):
    pipeline.make_train_dataset(tiny_config(synthetic_data_dir, **{'input.balance': 'uniform'}))


def test_balanced_windows_are_weighted_by_their_frames(synthetic_data_dir, monkeypatch):
  # 160 clips of 24 frames: clips 0-9 unlabelled, 10-129 at A, 130-149 at B, 150-159 at C.
  clip = np.arange(3840) // 24
  cells = np.where(clip < 10, 3, np.where(clip < 130, 0, np.where(clip < 150, 1, 2)))
  points = np.array([A, B, C, (0, 0)], np.float32)
  mask = np.repeat((cells < 3)[:, None], 2, 1).astype(np.float32)
  _fake_labels(monkeypatch, {'synthetic_va': (points[cells], mask)})
  c = tiny_config(synthetic_data_dir, batch_size=4, **{
      'input.balance': 'va_grid', 'input.window': 12,
      'input.pp_train': "standardize|keep('va', 'index')"})
  it = iter(pipeline.make_train_dataset(c)[0])
  first = np.concatenate([next(it)['index'][:, 0] for _ in range(40)])  # 160 windows
  counts = np.bincount(cells[first], minlength=4)
  assert counts[3] == 0
  assert counts[:3].min() >= 30, counts  # 53 expected each; unbalanced: 128 / 21 / 11


def test_label_cache_matches_the_data_and_is_rebuilt_when_stale(tmp_path, monkeypatch):
  b = build.build('afew_va', str(tmp_path), manual_dir=AFEW_PARTS, verbose=False)
  src = b.as_data_source('train')
  direct_va = np.array([(src[i]['valence'], src[i]['arousal']) for i in range(len(src))])
  direct_mask = np.array([src[i]['va_mask'] for i in range(len(src))])
  va, mask = balance.load_va_labels(b, 'train')
  np.testing.assert_allclose(va, direct_va)
  np.testing.assert_array_equal(mask, direct_mask)
  path = balance.labels_path(b, 'train')
  assert str(path) == os.path.join(str(tmp_path), 'afew_va', '1.0.0', 'va_labels-train.npz')
  # The slow path (decoded data source, images skipped) reads the same labels.
  monkeypatch.setattr(balance, '_parse_labels_fast', lambda *a: False)
  np.testing.assert_allclose(balance._read_labels(b, 'train')[0], direct_va)
  # A fresh cache is used as is ...
  with np.load(str(path)) as z:
    fp = str(z['fingerprint'])
  np.savez(str(path), va=np.full_like(va, 0.5), va_mask=mask, fingerprint=np.asarray(fp))
  np.testing.assert_array_equal(balance.load_va_labels(b, 'train')[0], 0.5)
  # ... and recomputed once the split's files change (a rebuild rewrites them).
  record_file = b.info.splits['train'].file_instructions[0].filename
  st = os.stat(record_file)
  os.utime(record_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  np.testing.assert_allclose(balance.load_va_labels(b, 'train')[0], direct_va)
