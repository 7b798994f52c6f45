"""benchmarks/linear_probe.py: the ridge probe recovers a linear VA code, and its kernel (dual)
form, used when features outnumber frames, gives the primal form's predictions."""

import importlib.util
import os

import numpy as np

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     'benchmarks', 'linear_probe.py')
_spec = importlib.util.spec_from_file_location('linear_probe', _PATH)
lp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lp)


def _split(rng, n, mix, noise):
  va = rng.uniform(-0.8, 0.8, (n, 2))
  feats = va @ mix + noise * rng.normal(size=(n, mix.shape[1]))
  return {'f': feats, 'va': va, 'mask': np.ones((n, 2)), 'video': np.arange(n) // 10}


def test_ridge_probe_recovers_a_linear_code_and_dual_equals_primal():
  rng = np.random.default_rng(0)
  mix = rng.normal(size=(2, 6))
  train, val = _split(rng, 200, mix, 0.01), _split(rng, 50, mix, 0.01)
  rows = lp.ridge_scores(train, val, 'f')
  assert rows[0]['ridge'] == lp.RIDGE[0]
  assert rows[0]['ccc_valence'] > 0.99 and rows[0]['ccc_arousal'] > 0.99
  assert rows[-1]['ccc_valence'] < rows[0]['ccc_valence']  # strong shrinkage costs CCC
  # 5 frames of 6 features: the dual form (features > frames); it must equal the primal ridge
  # solution, computed here by hand on the same 5 frames.
  small = {k: v[:5] for k, v in train.items()}
  dual = lp.ridge_scores(small, val, 'f')
  x = (small['f'] - small['f'].mean(0)) / (small['f'].std(0) + 1e-6)
  xv = (val['f'] - small['f'].mean(0)) / (small['f'].std(0) + 1e-6)
  y = small['va'] - small['va'].mean(0)
  w = np.linalg.solve(x.T @ x + lp.RIDGE[0] * np.eye(6), x.T @ y)  # primal, by hand
  expect = lp.metrics.va_metrics(xv @ w + small['va'].mean(0), val['va'], val['mask'])
  np.testing.assert_allclose(dual[0]['ccc_valence'], expect['ccc_valence'], rtol=1e-9)
  np.testing.assert_allclose(dual[0]['ccc_arousal'], expect['ccc_arousal'], rtol=1e-9)
