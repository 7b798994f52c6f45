"""Tests for vaflax.metrics against NumPy float64 references and hand-computed cases."""

import numpy as np
import pytest

from vaflax import metrics

KEYS = [f'{m}_{d}' for m in ('ccc', 'pcc', 'rmse', 'sagr') for d in ('valence', 'arousal', 'mean')]


def ref_ccc(p, t):
  p, t = np.asarray(p, np.float64), np.asarray(t, np.float64)
  cov = np.mean((p - p.mean()) * (t - t.mean()))
  return 2 * cov / (p.var() + t.var() + (p.mean() - t.mean()) ** 2)


def ref_metrics(pred, target):
  """Straight NumPy float64 reference of every pooled metric, on already-valid rows."""
  pred = np.clip(pred, -1, 1)
  out = {}
  for d, name in enumerate(('valence', 'arousal')):
    p, t = pred[:, d], target[:, d]
    out[f'ccc_{name}'] = ref_ccc(p, t)
    out[f'pcc_{name}'] = np.corrcoef(p, t)[0, 1]
    out[f'rmse_{name}'] = np.sqrt(np.mean((p - t) ** 2))
    out[f'sagr_{name}'] = np.mean(np.sign(p) == np.sign(t))
  for m in ('ccc', 'pcc', 'rmse', 'sagr'):
    out[f'{m}_mean'] = (out[f'{m}_valence'] + out[f'{m}_arousal']) / 2
  return out


def random_va(n, seed=0):
  rng = np.random.default_rng(seed)
  target = np.tanh(rng.normal(size=(n, 2)))
  pred = 0.6 * target + 0.4 * rng.normal(size=(n, 2)) + 0.1  # some mass beyond [-1, 1]
  return pred, target


def assert_metrics_close(got, want, tol=1e-9):
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=tol, atol=tol, err_msg=k)


def test_ccc_hand_vector():
  # The ABAW/DESIGN vector lies outside [-1, 1]; CCC is invariant to scaling both sides, so /10
  # keeps the value while the clipping leaves it untouched.
  t = np.array([3, -0.5, 2, 7]) / 10
  p = np.array([2.5, 0, 2, 8]) / 10
  got = metrics.va_metrics(np.stack([p, p], 1), np.stack([t, t], 1))
  assert got['ccc_valence'] == pytest.approx(0.976789, abs=1e-6)
  assert got['ccc_mean'] == pytest.approx(0.976789, abs=1e-6)
  assert got['rmse_valence'] == pytest.approx(np.sqrt(1.5 / 4) / 10)


def test_random_against_numpy():
  pred, target = random_va(500)
  got = metrics.va_metrics(pred, target)
  assert sorted(got) == sorted(KEYS)
  assert all(type(v) is float for v in got.values())
  assert_metrics_close(got, ref_metrics(pred, target))


def test_constant_perfect_and_undefined():
  _, target = random_va(50, seed=1)
  const = metrics.va_metrics(np.full_like(target, 0.3), target)
  assert const['ccc_valence'] == 0.0 and const['ccc_arousal'] == 0.0
  assert np.isnan(const['pcc_valence'])  # Pearson is undefined for a constant prediction
  perfect = metrics.va_metrics(target, target)
  for m, v in (('ccc', 1.0), ('pcc', 1.0), ('rmse', 0.0), ('sagr', 1.0)):
    assert perfect[f'{m}_mean'] == pytest.approx(v)
  same_const = metrics.va_metrics(np.full((5, 2), 0.2), np.full((5, 2), 0.2))
  assert np.isnan(same_const['ccc_valence'])  # 0 / 0: undefined, documented as NaN
  assert same_const['rmse_valence'] == 0.0


def test_sagr_hand_case():
  pred = np.array([0.5, -0.2, 0.1, -0.3, 0.0])
  target = np.array([0.3, 0.4, -0.1, -0.9, 0.0])
  # Agreements: rows 0 (+,+), 3 (-,-) and 4 (0,0) -> 3 of 5; arousal is all-positive -> 1.
  got = metrics.va_metrics(
      np.stack([pred, np.full(5, 0.5)], 1), np.stack([target, np.full(5, 0.1)], 1)
  )
  assert got['sagr_valence'] == pytest.approx(0.6)
  assert got['sagr_arousal'] == pytest.approx(1.0)
  assert got['sagr_mean'] == pytest.approx(0.8)


def test_predictions_are_clipped():
  target = np.array([[1.0, -1.0], [-0.5, 0.2], [0.2, 0.7]])
  pred = target.copy()
  pred[0] = [3.0, -7.0]  # scored as [1, -1]: a perfect prediction
  got = metrics.va_metrics(pred, target)
  assert got['rmse_mean'] == 0.0 and got['ccc_mean'] == pytest.approx(1.0)


def test_masks_ignore_entries_even_nan():
  pred, target = random_va(300, seed=2)
  mask = np.ones_like(target)
  mask[::7, 0] = 0  # valence and arousal masked differently
  mask[::5, 1] = 0
  p_bad, t_bad = pred.copy(), target.copy()
  p_bad[mask == 0] = np.nan
  t_bad[::7, 0] = np.inf
  t_bad[::5, 1] = np.nan
  got = metrics.va_metrics(p_bad, t_bad, mask)
  for d, name in enumerate(('valence', 'arousal')):
    keep = mask[:, d] > 0
    want = ref_metrics(pred[keep], target[keep])
    for m in ('ccc', 'pcc', 'rmse', 'sagr'):
      assert got[f'{m}_{name}'] == pytest.approx(want[f'{m}_{name}'], rel=1e-9), m


def test_frame_mask_and_unmasked_nan():
  pred, target = random_va(100, seed=3)
  frame_mask = np.arange(100) % 3 != 0
  got = metrics.va_metrics(pred, target, frame_mask)
  assert_metrics_close(got, ref_metrics(pred[frame_mask], target[frame_mask]))
  target[5, 1] = np.nan  # unmasked NaN must not vanish
  got = metrics.va_metrics(pred, target)
  assert np.isfinite(got['ccc_valence'])
  assert all(np.isnan(got[f'{m}_arousal']) for m in ('ccc', 'pcc', 'rmse', 'sagr'))


def test_per_video_ccc():
  pred, target = random_va(90, seed=4)
  ids = np.array(['b'] * 30 + ['a'] * 25 + ['c'] * 35)
  rng = np.random.default_rng(0)
  perm = rng.permutation(90)  # frames of a video need not be contiguous
  pred, target, ids = pred[perm], target[perm], ids[perm]
  got = metrics.va_metrics(pred, target, video_ids=ids)
  for d, name in enumerate(('valence', 'arousal')):
    want = np.mean([ref_ccc(np.clip(pred[ids == v, d], -1, 1), target[ids == v, d]) for v in 'abc'])
    assert got[f'per_video_ccc_{name}'] == pytest.approx(want, rel=1e-9)
  assert got['ccc_valence'] == pytest.approx(ref_ccc(np.clip(pred[:, 0], -1, 1), target[:, 0]))
  # A one-frame video with pred == target has an undefined (0/0) CCC and is skipped.
  pred2 = np.concatenate([pred, [[0.1, 0.1]]])
  target2 = np.concatenate([target, [[0.1, 0.1]]])
  got2 = metrics.va_metrics(pred2, target2, video_ids=np.concatenate([ids, ['z']]))
  assert got2['per_video_ccc_mean'] == pytest.approx(got['per_video_ccc_mean'], rel=1e-12)


def test_confusion_and_classification_hand_case():
  true = np.array([0, 0, 0, 1, 1, 2, 2, 2, -1, 3])
  pred = np.array([0, 0, 1, 1, 2, 2, 2, 0, 3, -1])  # last two pairs are skipped
  cm = metrics.confusion_matrix(true, pred, 4)
  np.testing.assert_array_equal(cm, [[2, 1, 0, 0], [0, 1, 1, 0], [1, 0, 2, 0], [0, 0, 0, 0]])
  out = metrics.classification_metrics(true, pred, ('a', 'b', 'c', 'd'))
  # F1 = 2TP / (support + predicted): a 4/6, b 2/4, c 4/6; d is absent from both -> not averaged.
  assert out['accuracy'] == pytest.approx(5 / 8)
  assert out['f1_a'] == pytest.approx(2 / 3) and out['f1_b'] == pytest.approx(0.5)
  assert out['macro_f1'] == pytest.approx((2 / 3 + 0.5 + 2 / 3) / 3)
  assert np.isnan(out['f1_d']) and out['count'] == 8.0
  with pytest.raises(ValueError, match='out of range'):
    metrics.confusion_matrix([0, 4], [0, 1], 4)


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match=r'\(\.\.\., 2\)'):
    metrics.va_metrics(np.zeros((4, 3)), np.zeros((4, 3)))
  with pytest.raises(ValueError, match='mask'):
    metrics.va_metrics(np.zeros((4, 2)), np.zeros((4, 2)), np.ones(3))
  with pytest.raises(ValueError, match='video_ids'):
    metrics.va_metrics(np.zeros((4, 2)), np.zeros((4, 2)), video_ids=[0, 1])
