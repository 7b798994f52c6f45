"""python -m vaflax.calibrate on a run written by the real loop: its quantiles are the conformal
quantiles of evaluate's own per-frame residuals, and --check reads them back."""

import csv
import json
import math
import shutil

import numpy as np
import pytest
from conftest import tiny_run

from vaflax import calibrate, calibration, evaluate


@pytest.fixture(scope='module')
def workdir(tmp_path_factory, synthetic_data_dir):
  """A copy of the session's tiny run: the calibration.json written here must not reach the
  other tests sharing that run (predict would then report intervals)."""
  wd = tmp_path_factory.mktemp('calibrated') / 'run'
  shutil.copytree(tiny_run(tmp_path_factory, synthetic_data_dir), wd)
  return str(wd)


@pytest.mark.slow
def test_calibrate_matches_evaluates_residuals_and_checks_coverage(workdir, tmp_path, capsys):
  # Calibrate on the test split (plain), so evaluate's CSV of the same split is the reference.
  rc = calibrate.main([f'--workdir={workdir}', '--split=test', '--method=plain',
                       '--config.batch_size=96'])
  assert rc == 0, capsys.readouterr().err
  cal = calibration.load(workdir)
  assert cal.method == 'plain' and cal.split == 'test' and cal.n == 576
  out = tmp_path / 'eval'
  assert evaluate.main([f'--workdir={workdir}', '--split=test', f'--output={out}',
                        '--config.batch_size=96']) == 0
  with open(out / 'predictions_synthetic_va_test.csv') as f:
    rows = list(csv.DictReader(f))
  resid = np.array([[abs(float(r['valence_pred']) - float(r['valence'])),
                     abs(float(r['arousal_pred']) - float(r['arousal']))] for r in rows])
  for c in (0.5, 0.8, 0.9, 0.95, 0.99):
    k = math.ceil((len(resid) + 1) * c)
    want = np.sort(resid, axis=0)[k - 1]
    assert cal.quantiles[f'{c:g}'] == pytest.approx(want, abs=1e-6), c
  # On its own split the coverage is at least nominal (by construction: k of n scores <= q).
  rep = calibrate.check_run(workdir, 'test', overrides=['batch_size=96'])
  for c, r in rep['coverages'].items():
    assert r['coverage_valence'] >= float(c) and r['coverage_arousal'] >= float(c), (c, r)
    assert set(r['bins']) == {'blurry', 'middle', 'sharp'}
  saved = json.load(open(f'{workdir}/calibration.json'))
  assert saved['coverage'] == 0.9 and saved['weights'] is None


@pytest.mark.slow
def test_scaled_calibration_widens_intervals_on_blurred_faces(workdir, capsys):
  rc = calibrate.main([f'--workdir={workdir}', '--split=validation', '--method=scaled',
                       '--config.batch_size=96'])
  assert rc == 0, capsys.readouterr().err
  cal = calibration.load(workdir)
  assert cal.method == 'scaled' and cal.features == ('log_sharpness', 'flip_gap', 'abs_roll')
  assert [next(iter(set(c) & {'below', 'above'})) for c in cal.categories] == ['below', 'above']
  assert all(c['n'] > 0 for c in cal.categories)  # degraded copies fall in both
  clean = calibrate.check_run(workdir, 'test', overrides=['batch_size=96'])
  blurred = calibrate.check_run(workdir, 'test', degrade='blur', overrides=['batch_size=96'])
  w = lambda rep: rep['coverages']['0.9']['width_valence']  # noqa: E731
  # The difficulty model's sign is whatever the fit found on this 1-step model; what must hold
  # is that the same faces, blurred, get other intervals than the clean ones (features reach
  # the widths), and both widths are finite and positive.
  assert 0 < w(clean) < 4 and 0 < w(blurred) < 4 and w(clean) != pytest.approx(w(blurred))


def test_degraded_copies_carry_their_roll():
  # A face's keypoints in the model input, rolled by the 'rotate' degradation: its roll (from
  # the record's landmarks moved by the same pixel map) changes by the 30 degrees applied.
  rng = np.random.default_rng(0)
  side = 64
  lm = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.5, 0.75]])  # upright KEYPOINTS, [0, 1]
  img = np.zeros((1, side, side, 3), np.float32)
  out, maps = calibrate._degrade('rotate', img, rng)
  assert out.shape == img.shape and maps.shape == (1, 2, 3)
  (upright,) = calibrate._rolls(lm[None], np.ones(1), side)
  (rolled,) = calibrate._rolls(lm[None], np.ones(1), side, maps)
  assert upright == pytest.approx(0.0) and abs(rolled) == pytest.approx(30.0)
  _, maps = calibrate._degrade('blur', img, rng)
  assert calibrate._rolls(lm[None], np.ones(1), side, maps)[0] == pytest.approx(0.0)
  assert np.isnan(calibrate._rolls(lm[None], np.zeros(1), side)[0])  # no landmarks: unknown
