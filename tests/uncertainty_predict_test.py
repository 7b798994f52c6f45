"""Calibrated intervals, quality columns and clip confidence through predict, the API and
evaluate (issue 31; docs/uncertainty.md), on the tiny run with a hand-made plain calibration."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
import skimage.data
from conftest import tiny_run
from PIL import Image

from vaflax import calibration, circumplex, evaluate, predict, quality

Q = 0.25  # the hand-made calibration's quantile, both dimensions, at its coverage 0.9


@pytest.fixture(scope='module')
def calibrated(tmp_path_factory, synthetic_data_dir):
  """A copy of the tiny run (the shared one stays uncalibrated) with a plain calibration."""
  wd = str(tmp_path_factory.mktemp('cal') / 'run')
  shutil.copytree(tiny_run(tmp_path_factory, synthetic_data_dir), wd)
  cal = calibration.Calibration('plain', 'validation', 100, 0.9,
                                {'0.8': [0.2, 0.15], '0.9': [Q, Q], '0.95': [0.4, 0.5]})
  calibration.save(cal, wd)
  return wd


@pytest.fixture(scope='module')
def predictor(calibrated, synthetic_data_dir):
  return predict.Predictor(calibrated, batch_size=8, data_dir=synthetic_data_dir)


def _rows(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def _photos(d):
  d.mkdir(exist_ok=True)
  img = skimage.data.astronaut()
  Image.fromarray(img).save(d / 'astro.png')
  # The same photo at a quarter of its size: the face (94 px wide at full size) is ~24 px.
  Image.fromarray(img).resize((128, 128), Image.BILINEAR).save(d / 'astro_small.png')
  return d


@pytest.mark.slow
def test_predict_rows_carry_intervals_quality_and_clip_confidence(predictor, tmp_path):
  src = _photos(tmp_path / 'in')
  out = str(tmp_path / 'out')
  opts = predict.Options(plots=False, progress=False, save_crops=True, min_face=10)
  s = predict.predict_file(predictor, src / 'astro.png', out, opts)
  assert s['calibration']['method'] == 'plain' and s['calibration']['coverage'] == 0.9
  rows = _rows(s['files']['csv'])
  assert list(rows[0])[:len(predict.CSV_COLUMNS)] == list(predict.CSV_COLUMNS)
  (r,) = rows
  v, a = float(r['valence']), float(r['arousal'])
  # lo/hi = clip(v -+ q): the CSV rounds both to 4 decimals, so they agree within 1e-4.
  for name, x in (('valence', v), ('arousal', a)):
    assert abs(float(r[f'{name}_lo']) - max(-1.0, x - Q)) <= 1.01e-4
    assert abs(float(r[f'{name}_hi']) - min(1.0, x + Q)) <= 1.01e-4
  # Quality of the crop predict cut (saved as a lossless PNG): the same numbers.
  crop = np.asarray(Image.open(os.path.join(out, 'astro_crops', f"0_{r['face_id']}.png")))
  assert abs(float(r['sharpness']) - quality.sharpness(crop)) < 1e-5
  assert float(r['face_px']) == min(float(r['w']), float(r['h'])) > quality.SMALL_PX
  assert r['flags'] == '' and abs(float(r['yaw'])) < 30
  # One face: confidence is 1 when its interval box lies inside the reported quadrant, else 0,
  # and the clip is uncertain when the box crosses an axis.
  lo = np.array([float(r['valence_lo']), float(r['arousal_lo'])])
  hi = np.array([float(r['valence_hi']), float(r['arousal_hi'])])
  crosses = bool(np.any((lo < 0) & (hi >= 0)))
  assert s['uncertain'] == crosses
  assert s['quadrant_confidence'] == (0.0 if crosses else 1.0)
  assert s['dominant_quadrant'] == r['quadrant']
  table = predict.summary.row(s)
  assert table['quadrant_confidence'] == f"{s['quadrant_confidence']:.4f}"
  assert table['uncertain'] == str(crosses).lower()

  # A quarter-size photo: the face is flagged small (and blurred once upscaled to the crop).
  s2 = predict.predict_file(predictor, src / 'astro_small.png', out, opts)
  (r2,) = _rows(s2['files']['csv'])
  assert float(r2['face_px']) < quality.SMALL_PX and 'small' in r2['flags'].split('|')
  assert float(r2['sharpness']) < float(r['sharpness'])

  # The API on predict's own crops gives the intervals of its CSV.
  run = _api_run(predictor)
  got = run.predict([crop])
  for k in ('valence_lo', 'valence_hi', 'arousal_lo', 'arousal_hi'):
    np.testing.assert_allclose(got[k], [float(r[k])], atol=1.01e-4)


def _api_run(predictor):
  from vaflax import api  # noqa: PLC0415

  run = api.Run.__new__(api.Run)  # the test's Predictor, not a second restore
  run._speech, run._predictor = None, predictor
  run.workdir, run.step, run.config = predictor.workdir, predictor.step, predictor.config
  return run


def test_clip_confidence_hand_case():
  from vaflax.predict import pipeline  # noqa: PLC0415

  # Three face rows in the quadrant of valence > 0, arousal > 0: two boxes inside it, one
  # crossing the valence axis; the mean box (valence 0.1 to 0.5) stays right of the axis.
  lo = np.array([[0.1, 0.2], [0.3, 0.1], [-0.1, 0.3], [np.nan, np.nan]])
  hi = np.array([[0.5, 0.6], [0.7, 0.5], [0.3, 0.7], [np.nan, np.nan]])
  has = np.array([True, True, True, False])
  res = pipeline.Resolved(np.zeros((4, 2)), np.zeros(4, np.int64), None, np.zeros(4, np.int64),
                          has, lo, hi)
  name = circumplex.QUADRANT_NAMES[int(circumplex.va_to_quadrant(np.array([0.3, 0.4])))]
  c = pipeline.clip_confidence(res, name)
  assert c['quadrant_confidence'] == pytest.approx(2 / 3)
  assert c['uncertain'] is False
  assert c['valence_mean_lo'] == pytest.approx(0.1)
  no_cal = pipeline.clip_confidence(res._replace(lo=None, hi=None), name)
  assert no_cal == {'quadrant_confidence': None, 'uncertain': None}


@pytest.mark.slow
def test_evaluate_coverage_recounts_from_its_predictions_csv(calibrated, synthetic_data_dir,
                                                             tmp_path):
  rec = evaluate.evaluate_run(calibrated, split='test', output=str(tmp_path),
                              data_dir=synthetic_data_dir)
  rep = rec['calibration']
  assert rep['method'] == 'plain' and set(rep['coverages']) == {'0.8', '0.9', '0.95'}
  rows = _rows(rec['files']['frames_csv'])
  p = np.array([[float(r['valence_pred']), float(r['arousal_pred'])] for r in rows])
  t = np.array([[float(r['valence']), float(r['arousal'])] for r in rows])
  m = np.array([[float(r['valence_mask']), float(r['arousal_mask'])] for r in rows]) > 0
  quantiles = {'0.8': [0.2, 0.15], '0.9': [Q, Q], '0.95': [0.4, 0.5]}
  for key, q in quantiles.items():
    lo, hi = np.clip(p - q, -1, 1), np.clip(p + q, -1, 1)
    got = rep['coverages'][key]
    for d, name in enumerate(('valence', 'arousal')):
      sel = m[:, d]
      cover = np.mean((t[sel, d] >= lo[sel, d]) & (t[sel, d] <= hi[sel, d]))
      assert got[f'coverage_{name}'] == pytest.approx(cover, abs=1e-12), (key, name)
      assert got[f'width_{name}'] == pytest.approx(np.mean(hi[sel, d] - lo[sel, d]), abs=1e-6)
      assert got[f'n_{name}'] == int(sel.sum())
      assert sum(b[f'n_{name}'] for b in got['bins'].values()) == int(sel.sum())
  assert os.path.getsize(rec['files']['reliability_png']) > 1000
  with open(rec['files']['metrics_json']) as f:
    assert json.load(f)['calibration']['coverages']['0.9']['n_valence'] == int(m[:, 0].sum())


@pytest.mark.slow
def test_a_rolled_face_gets_the_rolled_faces_quantiles(tmp_path, tmp_path_factory,
                                                       synthetic_data_dir):
  # A hand-made scaled calibration: sigma 1 everywhere (zero weights), quantile 0.25 for clean
  # faces, 0.5 for blurred ones and 0.6 for faces rolled over 20 degrees in the crop. The photo
  # rolled 30 degrees (a box crop keeps the tilt) gets 0.6; the upright one 0.25.
  wd = str(tmp_path / 'run')
  shutil.copytree(tiny_run(tmp_path_factory, synthetic_data_dir), wd)
  names = quality.DIFFICULTY_FEATURES
  cats = tuple({'feature': f, side: t, 'n': 50, 'quantiles': {'0.9': [q, q]}}
               for (f, side, t), q in zip(quality.DIFFICULTY_CATEGORIES, (0.5, 0.6), strict=True))
  cal = calibration.Calibration(
      'scaled', 'validation', 100, 0.9, {'0.9': [Q, Q]}, weights=((0.0,) * 4, (0.0,) * 4),
      features=names, feature_range=((-10.0, 0.0, 0.0), (10.0, 10.0, 90.0)), categories=cats)
  calibration.save(cal, wd)
  pred = predict.Predictor(wd, batch_size=8, data_dir=synthetic_data_dir)
  src = tmp_path / 'in'
  src.mkdir()
  img = Image.fromarray(skimage.data.astronaut())
  img.save(src / 'upright.png')
  img.rotate(30, resample=Image.BILINEAR, center=(220, 130)).save(src / 'rolled.png')
  opts = predict.Options(plots=False, progress=False, min_face=10)
  half = {}
  for name in ('upright', 'rolled'):
    (r,) = _rows(predict.predict_file(pred, src / f'{name}.png', str(tmp_path / 'out'),
                                      opts)['files']['csv'])
    v = float(r['valence'])
    half[name] = (float(r['valence_hi']) - float(r['valence_lo'])) / 2
    assert -1 < v - half[name] and v + half[name] < 1  # not clipped: the half-width is exact
    half[name + '_roll'] = float(r['roll'])
  assert abs(half['upright_roll']) < 10 and abs(abs(half['rolled_roll']) - 30) < 8
  assert half['upright'] == pytest.approx(Q, abs=1e-4)
  assert half['rolled'] == pytest.approx(0.6, abs=1e-4)
