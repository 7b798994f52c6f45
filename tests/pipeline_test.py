import numpy as np
import pytest
from conftest import tiny_config

from vaflax.data import pipeline, sources


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_train_iterator_is_deterministic_and_resumable(synthetic_data_dir):
  c = tiny_config(synthetic_data_dir)
  ds, n = pipeline.make_train_dataset(c)
  assert n == 3840
  a = _take(iter(ds), 3)
  it = iter(ds)
  b = _take(it, 2)
  state = it.get_state()
  for k in ('image', 'va', 'index'):
    np.testing.assert_array_equal(a[0][k], b[0][k])
  it2 = iter(pipeline.make_train_dataset(c)[0])
  it2.set_state(state)
  c3 = next(it2)
  for k in ('image', 'va', 'index', 'landmarks'):
    np.testing.assert_array_equal(a[2][k], c3[k])
  x = a[0]
  assert x['image'].shape == (8, 32, 32, 3) and x['image'].dtype == np.float32
  assert -1.0 <= x['image'].min() and x['image'].max() <= 1.0
  assert x['va'].shape == (8, 2) and np.all(np.abs(x['va']) <= 1)


def test_each_host_reads_its_own_shard(synthetic_data_dir):
  c = tiny_config(synthetic_data_dir, batch_size=16)
  for p in range(2):
    ds, _ = pipeline.make_train_dataset(c, process_index=p, process_count=2)
    idx = np.concatenate([b['index'] for b in _take(iter(ds), 4)])
    assert len(idx) == 4 * 8
    assert np.all(idx % 2 == p)


def test_eval_covers_every_record_once_across_hosts(synthetic_data_dir):
  c = tiny_config(synthetic_data_dir, batch_size=60)  # 576 records = 3 hosts x 192; 192 is not a multiple of 20
  seen, nb = [], set()
  for p in range(3):
    ev = sources.EvalData(c, 'test', process_index=p, process_count=3)
    nb.add(len(ev))
    for b in ev:
      assert b['image'].shape[0] == 20
      seen.append(b['index'][b['eval_mask'] > 0])
  assert len(nb) == 1  # every host runs the same number of eval steps
  seen = np.sort(np.concatenate(seen))
  np.testing.assert_array_equal(seen, np.arange(576))


def test_make_windows_hand_cases():
  videos = [('a', 0, 10), ('b', 10, 3)]
  w = sources.make_windows(videos, 13, 4, 4, cover_tail=True)
  assert [(x.start, x.length, x.skip, x.video) for x in w] == [
      (0, 4, 0, 0), (4, 4, 0, 0), (6, 4, 2, 0), (10, 3, 0, 1)]
  w = sources.make_windows(videos, 13, 4, 2, cover_tail=False)
  assert [x.start for x in w] == [0, 2, 4, 6, 10]


def test_windows_are_consecutive_frames_and_eval_counts_each_frame_once(synthetic_data_dir):
  c = tiny_config(synthetic_data_dir, **{'input.window': 12, 'batch_size': 4})
  ds, _ = pipeline.make_train_dataset(c)
  b = next(iter(ds))
  assert b['frames'].shape == (4, 12, 32, 32, 3) and b['va'].shape == (4, 12, 2)
  assert np.all(np.diff(b['index'], axis=1) == 1)
  assert np.all(b['video'] == b['video'][:, :1])  # one video per window
  ev = sources.EvalData(c, 'test')
  counted = []
  for eb in ev:
    m = (eb['va_mask'][..., 0] > 0) & (eb['eval_mask'][:, None] > 0)
    counted.append(eb['index'][m])
  counted = np.sort(np.concatenate(counted))
  np.testing.assert_array_equal(counted, np.arange(576))


def test_missing_dataset_and_bad_mixture_messages(tmp_path, synthetic_data_dir):
  c = tiny_config(str(tmp_path), **{'input.dataset': 'afew_va'})
  with pytest.raises((FileNotFoundError, ValueError), match='afew_va'):
    pipeline.make_train_dataset(c)
  with pytest.raises(ValueError, match='weight'):
    sources.parse_mixture('afew_va:x')
  assert sources.parse_mixture('affwild2_va:0.2, afew_va') == [('affwild2_va', 0.2), ('afew_va', 1.0)]
