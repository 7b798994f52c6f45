import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaflax import losses


def np_ccc(p, t):
  p, t = np.asarray(p, np.float64), np.asarray(t, np.float64)
  return 2 * np.mean((p - p.mean()) * (t - t.mean())) / (p.var() + t.var() + (p.mean() - t.mean()) ** 2)


def test_ccc_abaw_vector():
  c = losses.ccc(jnp.array([2.5, 0.0, 2.0, 8.0]), jnp.array([3.0, -0.5, 2.0, 7.0]), eps=0.0)
  assert float(c) == pytest.approx(0.976789, abs=1e-6)


def test_ccc_random_against_numpy():
  rng = np.random.default_rng(0)
  t = rng.uniform(-1, 1, 100)
  p = 0.6 * t + 0.2 + rng.normal(0, 0.3, 100)
  assert float(losses.ccc(p, t, eps=0.0)) == pytest.approx(0.7171390314894869, abs=1e-6)
  assert float(losses.ccc(p, t, eps=0.0)) == pytest.approx(np_ccc(p, t), abs=1e-6)


def test_ccc_masking_equals_subset_and_ignores_nan():
  rng = np.random.default_rng(1)
  p, t = rng.normal(size=50), rng.normal(size=50)
  m = rng.random(50) > 0.3
  t_nan = np.where(m, t, np.nan)
  p_inf = np.where(m, p, np.inf)
  got = losses.ccc(p_inf, t_nan, m.astype(np.float32), eps=0.0)
  assert float(got) == pytest.approx(np_ccc(p[m], t[m]), abs=1e-6)
  # ... and the gradient through masked NaN entries is finite and zero there.
  g = jax.grad(lambda x: losses.ccc(x, t_nan, m.astype(np.float32)))(jnp.asarray(p_inf))
  assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[~m] == 0)


def test_ccc_unmasked_nan_propagates():
  assert np.isnan(float(losses.ccc(jnp.array([1.0, np.nan, 2.0]), jnp.array([1.0, 2.0, 3.0]))))


def test_ccc_constant_inputs():
  t = jnp.array([1.0, 2.0, 3.0])
  assert float(losses.ccc(jnp.zeros(3), t)) == pytest.approx(0.0, abs=1e-7)  # no covariance
  assert float(losses.ccc(jnp.ones(3), jnp.ones(3))) == 0.0  # both constant: 0 with eps
  assert np.isnan(float(losses.ccc(jnp.ones(3), jnp.ones(3), eps=0.0)))  # undefined without
  assert float(losses.ccc(t, t)) == pytest.approx(1.0, abs=1e-6)


def test_ccc_axis_and_va_loss():
  rng = np.random.default_rng(2)
  p, t = rng.normal(size=(40, 2)), rng.normal(size=(40, 2))
  per = losses.va_ccc_per_dim(p.reshape(4, 10, 2), t.reshape(4, 10, 2))
  np.testing.assert_allclose(np.asarray(per), [np_ccc(p[:, 0], t[:, 0]), np_ccc(p[:, 1], t[:, 1])], atol=1e-5)
  loss, _ = losses.ccc_loss(p, t)
  assert float(loss) == pytest.approx(2 - float(np.sum(per)), abs=1e-5)


def test_pcc_rmse_against_numpy():
  rng = np.random.default_rng(3)
  p, t = rng.normal(size=64), rng.normal(size=64)
  assert float(losses.pcc(p, t, eps=0.0)) == pytest.approx(np.corrcoef(p, t)[0, 1], abs=1e-5)
  assert float(losses.rmse(p, t)) == pytest.approx(np.sqrt(np.mean((p - t) ** 2)), abs=1e-5)
  m = np.arange(64) % 2 == 0
  assert float(losses.rmse(p, t, m)) == pytest.approx(np.sqrt(np.mean((p[m] - t[m]) ** 2)), abs=1e-5)


def test_bins_and_expectation():
  c = np.asarray(losses.bin_centres(20))
  np.testing.assert_allclose(c, -1 + 0.05 + 0.1 * np.arange(20), atol=1e-6)
  np.testing.assert_array_equal(losses.va_to_bin(jnp.array([-1.0, -0.95, 0.0, 0.99, 1.0, 3.0])),
                                [0, 0, 10, 19, 19, 19])
  logits = np.random.default_rng(4).normal(size=(5, 20))
  sm = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  np.testing.assert_allclose(losses.binned_expectation(logits), sm @ c, atol=1e-6)


def test_binned_cross_entropy_against_numpy():
  rng = np.random.default_rng(5)
  logits, target = rng.normal(size=(6, 20)), rng.uniform(-1, 1, 6)
  mask = np.array([1, 1, 0, 1, 1, 0], np.float32)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  bins = np.clip(np.floor((target + 1) / 2 * 20), 0, 19).astype(int)
  ce = -logp[np.arange(6), bins]
  want = (ce * mask).sum() / mask.sum()
  assert float(losses.binned_cross_entropy(logits, target, mask)) == pytest.approx(want, abs=1e-5)


def test_distillation_kl_against_numpy():
  rng = np.random.default_rng(6)
  s, t = rng.normal(size=(4, 20)), rng.normal(size=(4, 20))
  T = 1.5
  pt = np.exp(t / T) / np.exp(t / T).sum(-1, keepdims=True)
  ps = np.exp(s / T) / np.exp(s / T).sum(-1, keepdims=True)
  want = np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), -1))
  assert float(losses.distillation_kl(s, t, temperature=T)) == pytest.approx(want, abs=1e-5)
  assert float(losses.distillation_kl(t, t, temperature=T)) == pytest.approx(0.0, abs=1e-6)
  g = jax.grad(lambda tt: losses.distillation_kl(jnp.asarray(s), tt))(jnp.asarray(t))
  assert np.all(np.asarray(g) == 0)  # the teacher gets no gradient


def test_shake_shake():
  c = losses.shake_shake_coefficients(jax.random.key(0))
  assert float(c.sum()) == pytest.approx(1.0, abs=1e-6) and np.all(np.asarray(c) >= 0)
  rng = np.random.default_rng(7)
  p, t = rng.uniform(-1, 1, 30), rng.uniform(-1, 1, 30)
  coef = jnp.array([0.2, 0.3, 0.5])
  want = (0.2 * np.sqrt(np.mean((p - t) ** 2)) + 0.3 * (1 - np.corrcoef(p, t)[0, 1])
          + 0.5 * (1 - np_ccc(p, t)))
  assert float(losses.shake_shake_regression(p, t, None, coef)) == pytest.approx(want, abs=1e-5)
