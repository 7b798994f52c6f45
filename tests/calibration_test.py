"""Split-conformal intervals (vaflax/calibration.py): quantiles by hand, coverage on simulated
heteroscedastic data, the clip's quadrant confidence, and the file read as data."""

import json
import math

import numpy as np
import pytest

from vaflax import calibration


def test_conformal_quantile_is_the_ceil_n_plus_1_c_th_score():
  scores = np.array([9, 1, 8, 2, 7, 3, 6, 4, 5], float)  # n = 9
  assert calibration.conformal_quantile(scores, 0.9) == 9.0  # ceil(10 * 0.9) = 9
  assert calibration.conformal_quantile(scores, 0.5) == 5.0  # ceil(5) = 5
  assert calibration.conformal_quantile(scores, 0.75) == 8.0  # ceil(7.5) = 8
  assert calibration.conformal_quantile(scores[:5], 0.9) == math.inf  # ceil(5.4) = 6 > 5
  with pytest.raises(calibration.CalibrationError):
    calibration.conformal_quantile(scores, 1.0)


def _simulate(rng, n_videos, frames=10):
  """Frames whose error grows with a 'blur' feature: y = f + sigma(blur) * noise."""
  blur = np.repeat(rng.uniform(0, 1, n_videos), frames) + rng.uniform(0, 0.2, n_videos * frames)
  sigma = 0.03 + 0.3 * blur ** 2
  pred = rng.uniform(-0.8, 0.8, (len(blur), 2))
  target = np.clip(pred + sigma[:, None] * rng.standard_normal((len(blur), 2)), -1, 1)
  group = np.repeat(np.arange(n_videos), frames)
  return pred, target, blur[:, None], group, sigma


@pytest.mark.parametrize('method', ['plain', 'scaled'])
def test_intervals_reach_their_coverage_on_fresh_data(method):
  rng = np.random.default_rng(0)
  pred, target, feats, group, _ = _simulate(rng, 2000)
  mask = np.ones_like(pred)
  cal = calibration.calibrate(pred, target, mask, split='validation', group_N=group,
                              features_NxF=feats if method == 'scaled' else None,
                              feature_names=('blur',) if method == 'scaled' else ())
  assert cal.method == method
  t_pred, t_target, t_feats, _, t_sigma = _simulate(np.random.default_rng(1), 4000)
  for c in (0.8, 0.9, 0.95):
    lo, hi = cal.intervals(t_pred, t_feats, coverage=c)
    rep = calibration.coverage_report(t_target, np.ones_like(t_pred), lo, hi)
    for d in ('valence', 'arousal'):
      assert abs(rep[f'coverage_{d}'] - c) < 0.02, (method, c, rep)
  lo, hi = cal.intervals(t_pred, t_feats, coverage=0.9)
  width = (hi - lo)[:, 0]
  hard, easy = t_sigma > np.quantile(t_sigma, 0.8), t_sigma < np.quantile(t_sigma, 0.2)
  if method == 'scaled':  # the interval follows the difficulty: 4x wider on the hardest fifth
    assert width[hard].mean() > 4 * width[easy].mean()
    # and holds its coverage where the plain one cannot: on the hardest fifth
    cov_hard = np.mean((t_target[hard, 0] >= lo[hard, 0]) & (t_target[hard, 0] <= hi[hard, 0]))
    assert cov_hard > 0.85
  else:  # one width for all (up to the clip to [-1, 1])
    assert np.allclose(width[np.abs(t_pred[:, 0]) < 0.3], width[np.abs(t_pred[:, 0]) < 0.3][0])


def test_masked_values_are_not_calibrated_on():
  pred = np.zeros((100, 2))
  target = np.full((100, 2), 0.1)
  target[:50, 1] = 5.0  # unlabelled arousal: must not widen the arousal interval
  mask = np.ones((100, 2))
  mask[:50, 1] = 0
  cal = calibration.calibrate(pred, target, mask, split='v', coverage=0.9)
  assert cal.quantiles['0.9'] == pytest.approx([0.1, 0.1])
  assert cal.n == 50


def test_too_few_frames_for_a_coverage_is_an_error():
  with pytest.raises(calibration.CalibrationError, match='too few'):
    calibration.calibrate(np.zeros((8, 2)), np.ones((8, 2)), np.ones((8, 2)), split='v')
  cal = calibration.calibrate(np.zeros((9, 2)), np.ones((9, 2)), np.ones((9, 2)), split='v')
  assert cal.quantiles['0.9'] == [1.0, 1.0]  # ceil(10 * 0.9) = 9 of 9
  assert cal.quantiles['0.95'] == [math.inf, math.inf]  # stored, but no interval can promise it


def test_clip_quadrant_confidence_and_uncertain_mark():
  # Three frames inside quadrant 0 (V >= 0, A >= 0), one straddling the valence axis.
  lo = np.array([[0.1, 0.2], [0.2, 0.1], [0.3, 0.3], [-0.1, 0.2]])
  hi = np.array([[0.5, 0.6], [0.6, 0.5], [0.7, 0.7], [0.3, 0.6]])
  r = calibration.clip_quadrant(lo, hi, 0)
  assert r['quadrant_confidence'] == pytest.approx(0.75)
  assert r['valence_mean_lo'] == pytest.approx(0.125)
  assert not r['uncertain']
  r = calibration.clip_quadrant(lo - 0.2, hi - 0.2, 0)  # mean valence interval [-0.075, 0.35]
  assert r['uncertain']
  assert r['quadrant_confidence'] == pytest.approx(0.25)  # only the third frame stays inside


def test_round_trip_and_hostile_files(tmp_path):
  rng = np.random.default_rng(0)
  pred, target, feats, group, _ = _simulate(rng, 200)
  cal = calibration.calibrate(pred, target, np.ones_like(pred), split='validation',
                              group_N=group, features_NxF=feats, feature_names=('blur',),
                              dataset='synthetic_va', checkpoint_step=800,
                              categories=(('blur', 'below', 0.5),))
  assert cal.categories[0]['n'] > 0 and cal.n_groups > 0
  calibration.save(cal, str(tmp_path))
  back = calibration.load(str(tmp_path))
  assert back == cal
  lo, hi = back.intervals(pred[:5], feats[:5])
  assert np.allclose((lo, hi), cal.intervals(pred[:5], feats[:5]))
  assert calibration.load(str(tmp_path / 'none')) is None
  path = tmp_path / calibration.FILENAME
  good = json.loads(path.read_text())
  for bad in ([1, 2], {**good, 'method': 'magic'}, {**good, 'quantiles': {'0.9': [-1, 0.1]}},
              {**good, 'quantiles': {'7': [0.1, 0.1]}}, {**good, 'weights': [[1.0], [1.0]]},
              {k: v for k, v in good.items() if k != 'split'},
              {**good, 'categories': [{**good['categories'][0], 'feature': 'nose'}]},
              {**good, 'categories': [{**good['categories'][0], 'above': 1.0}]},  # two sides
              {**good, 'categories': [good['categories'][0]] * 9}):
    path.write_text(json.dumps(bad))
    with pytest.raises(calibration.CalibrationError, match=str(path)):
      calibration.load(str(tmp_path))
  path.write_text('{"method": ')
  with pytest.raises(calibration.CalibrationError, match='not a vaflax calibration'):
    calibration.load(str(tmp_path))
  # A calibration written before categories were a list holds its one as 'category'.
  path.write_text(json.dumps({**{k: v for k, v in good.items() if k != 'categories'},
                              'category': good['categories'][0]}))
  assert calibration.load(str(tmp_path)) == cal
  # Crafted numbers and shapes: a NaN anywhere would make every interval NaN; deep nesting and
  # size are refused before they cost a traceback or memory.
  nan_q = {**good, 'quantiles': {**good['quantiles'], '0.9': [float('nan'), 0.1]}}
  nan_w = {**good, 'weights': [[float('inf')] * len(good['weights'][0]), good['weights'][1]]}
  flipped = {**good, 'feature_range': good['feature_range'][::-1]}
  nan_cat = {**good, 'categories': [{**good['categories'][0], 'below': float('nan')}]}
  inf_n = {**good, 'n': float('inf')}  # int(inf) had raised OverflowError, a traceback
  inf_cat_n = {**good, 'categories': [{**good['categories'][0], 'n': float('inf')}]}
  for text, why in ((json.dumps(nan_q), 'nan where'), (json.dumps(nan_w), 'inf where'),
                    (json.dumps(flipped), 'feature_range'), (json.dumps(nan_cat), 'nan where'),
                    (json.dumps(inf_n), 'inf where'), (json.dumps(inf_cat_n), 'inf where'),
                    (json.dumps({**good, 'n': -5}), 'where a count belongs'),
                    (json.dumps({**good, 'n_groups': 10 ** 400}), 'OverflowError'),
                    (json.dumps({**good, 'checkpoint_step': {'a': 1}}), 'TypeError'),
                    ('[' * 100_000 + ']' * 100_000, 'RecursionError'),
                    (' ' * (calibration.MAX_FILE_BYTES + 1) + '{}', 'over the')):
    path.write_text(text)
    with pytest.raises(calibration.CalibrationError, match=why):
      calibration.load(str(tmp_path))


def test_difficulty_model_keeps_its_signs_and_does_not_extrapolate():
  rng = np.random.default_rng(0)
  harm = rng.uniform(0, 1, 5000)  # a feature that really makes faces harder
  noise = rng.uniform(0, 1, 5000)  # one that says nothing, fitted with whatever sign
  resid = np.exp(-3 + 2 * harm - 0.3 * noise + 0.1 * rng.standard_normal(5000))
  feats = np.stack([harm, noise], -1)
  w_free = calibration.fit_log_scale(feats, resid)
  assert w_free[1] == pytest.approx(2, abs=0.1) and w_free[2] < -0.2
  w = calibration.fit_log_scale(feats, resid, signs=(1, 1))  # noise may only widen: dropped
  assert w[2] == 0 and w[1] == pytest.approx(2, abs=0.1)
  # Clipped to the fitted range: a feature value 10x outside gives the edge's sigma.
  rng_ = ((0.0, 0.0), (1.0, 1.0))
  assert calibration.scale(w, [[10.0, 0.5]], rng_) == pytest.approx(
      calibration.scale(w, [[1.0, 0.5]], rng_))


def test_effective_size_counts_videos_when_their_frames_agree():
  # 10 videos of 5 frames, each video all hit or all missed: worth 10 frames, not 50.
  hit = np.repeat([1, 1, 0, 1, 0, 1, 1, 0, 1, 0], 5).astype(bool)
  assert calibration.effective_size(hit, np.repeat(np.arange(10), 5)) == pytest.approx(10)
  assert calibration.effective_size(hit, np.arange(50)) == pytest.approx(50)  # independent
  assert calibration.effective_size(hit) == 50
  assert calibration.effective_size(np.ones(7, bool), np.zeros(7)) == 7  # no spread to measure


def test_coverage_standard_error_over_videos_matches_the_scatter_of_coverage():
  # Errors shared within a video (a person the model reads badly): the realised coverage of a
  # 100-video split scatters as the reported s.e. says, about 2.5x the frame-count binomial.
  rng = np.random.default_rng(0)

  def draw(n_videos=100, frames=20):
    shared = np.repeat(rng.standard_normal((n_videos, 2)), frames, axis=0)
    target = 0.1 * (shared + 0.5 * rng.standard_normal(shared.shape))
    group = np.repeat(np.arange(n_videos), frames)
    return np.zeros_like(target), target, group

  pred, target, group = draw(2000)
  cal = calibration.calibrate(pred, target, np.ones_like(target), split='v', group_N=group)
  assert cal.n_groups == 2000 and 1000 < cal.n_eff[0] < 8000
  covs, ses = [], []
  for _ in range(200):
    pred, target, group = draw()
    lo, hi = cal.intervals(pred, coverage=0.9)
    rep = calibration.coverage_report(target, np.ones_like(target), lo, hi, group_N=group)
    covs.append(rep['coverage_valence'])
    ses.append(rep['coverage_se_valence'])
  assert abs(np.mean(covs) - 0.9) < 0.01
  assert np.std(covs) == pytest.approx(np.mean(ses), rel=0.2)
  assert np.std(covs) > 2 * math.sqrt(0.9 * 0.1 / 2000)


def test_a_category_gets_quantiles_of_its_own_faces():
  # Blurred faces (sharpness feature below 0) err 3x more than the difficulty model says (its
  # signs forbid it to use sharpness here, and flip disagreement carries nothing): one quantile
  # for all under-covers them; the category's own quantile holds on each side.
  rng = np.random.default_rng(0)

  def draw(n_videos, frames=4):
    blurred = np.repeat(rng.uniform(0, 1, n_videos) < 0.3, frames)
    feats = np.stack([np.where(blurred, -1.0, 1.0), rng.uniform(0, 1, len(blurred))], -1)
    sigma = np.where(blurred, 0.3, 0.1)
    pred = np.zeros((len(blurred), 2))
    target = sigma[:, None] * rng.standard_normal((len(blurred), 2))
    return pred, target, feats, np.repeat(np.arange(n_videos), frames), blurred

  pred, target, feats, group, _ = draw(3000)
  kw = dict(split='v', group_N=group, features_NxF=feats, feature_names=('sharp', 'gap'),
            feature_signs=(1, 1))
  one = calibration.calibrate(pred, target, np.ones_like(pred), **kw)
  two = calibration.calibrate(pred, target, np.ones_like(pred),
                              categories=(('sharp', 'below', 0.0),), **kw)
  assert two.categories[0]['n'] == pytest.approx(0.3 * 6000, rel=0.1)
  # Each side's half-width is its own errors' 90 % quantile: 0.1 and 0.3 x 1.645 (|z| at 90 %).
  half = two.widths(2, np.array([[1.0, 0.5], [-1.0, 0.5]]), coverage=0.9)[:, 0]
  assert half == pytest.approx([0.1645, 0.4935], rel=0.08)
  t_pred, t_target, t_feats, _, t_blurred = draw(3000)
  for cal, ok in ((one, False), (two, True)):
    lo, hi = cal.intervals(t_pred, t_feats, coverage=0.9)
    cov = ((t_target >= lo) & (t_target <= hi))[:, 0]
    assert (abs(cov[t_blurred].mean() - 0.9) < 0.02) == ok, cov[t_blurred].mean()
    assert abs(cov[~t_blurred].mean() - 0.9) < 0.02 or not ok
  with pytest.raises(calibration.CalibrationError, match='re-run'):
    two.intervals(t_pred, t_feats[:, :1])


def test_categories_below_and_above_first_one_wins():
  # Blurred faces (sharp < 0) err 3x, rolled ones (roll > 20) 5x, a blurred and rolled face is
  # the first category's (blurred): each category's own quantile holds on its faces. (The signs
  # forbid the difficulty model both features, so sigma is one constant and the widths are the
  # categories' quantiles: 1.645 sigma at 90 %.)
  rng = np.random.default_rng(1)
  n_videos, frames = 4000, 3
  blurred = np.repeat(rng.uniform(0, 1, n_videos) < 0.25, frames)
  rolled = np.repeat(rng.uniform(0, 1, n_videos) < 0.25, frames)
  feats = np.stack([np.where(blurred, -1.0, 1.0), np.where(rolled, 30.0, 5.0)], -1)
  sigma = np.where(blurred, 0.3, np.where(rolled, 0.5, 0.1))
  target = sigma[:, None] * rng.standard_normal((len(sigma), 2))
  pred = np.zeros_like(target)
  cal = calibration.calibrate(
      pred, target, np.ones_like(pred), split='v', group_N=np.repeat(np.arange(n_videos), frames),
      features_NxF=feats, feature_names=('sharp', 'roll'), feature_signs=(1, -1),
      categories=(('sharp', 'below', 0.0), ('roll', 'above', 20.0)))
  assert [c.get('below', c.get('above')) for c in cal.categories] == [0.0, 20.0]
  kinds = np.array([[1.0, 5.0], [-1.0, 5.0], [1.0, 30.0], [-1.0, 30.0]])
  half = cal.widths(4, kinds, coverage=0.9)[:, 0]
  assert half == pytest.approx([0.1645, 0.4935, 0.8225, 0.4935], rel=0.1)
  # Columns named in another order (and one more) are picked by name.
  named = cal.widths(4, np.concatenate([kinds[:, ::-1], np.zeros((4, 1))], -1), coverage=0.9,
                     feature_names=('roll', 'sharp', 'extra'))
  np.testing.assert_allclose(named[:, 0], half)
  with pytest.raises(calibration.CalibrationError, match='re-run'):
    cal.widths(4, kinds[:, :1], feature_names=('sharp',))
