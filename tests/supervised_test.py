"""Tests for vaflax/tasks/supervised.py against NumPy hand computations."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vaflax import circumplex
from vaflax.tasks import supervised


def _weights(**kw):
  lc = dict(ccc_weight=0.0, binned_weight=0.0, mse_weight=0.0, quadrant_weight=0.0)
  return ml_collections.ConfigDict(dict(lc, **kw))


def _np_quadrant(va):
  """The tie rule of vaflax/circumplex.py, written out: 0 counts as pleasant and activated."""
  v, a = va[..., 0], va[..., 1]
  return np.select([(v >= 0) & (a >= 0), (v < 0) & (a >= 0), (v < 0) & (a < 0)], [0, 1, 2], 3)


def _np_log_softmax(x):
  x = x.astype(np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _data(n=12, seed=0):
  rng = np.random.default_rng(seed)
  va = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
  va[:4] = [[0.0, 0.0], [-0.3, 0.0], [0.0, -0.3], [-0.0, 0.5]]  # points on the axes
  pred = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
  mask = (rng.random((n, 2)) > 0.25).astype(np.float32)
  mask[:4] = 1.0
  logits = rng.normal(size=(n, 4)).astype(np.float32)
  return va, pred, mask, logits


def test_target_quadrant_hand_cases_and_jit():
  va = np.array([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5],
                 [0.0, 0.0], [0.0, -0.2], [-0.2, 0.0], [0.0, 0.2], [0.2, 0.0],
                 [np.nan, 0.3]], np.float32)
  want = [0, 1, 2, 3, 0, 3, 1, 0, 0, circumplex.NO_LABEL]
  np.testing.assert_array_equal(circumplex.va_to_quadrant(va), want)
  got = jax.jit(circumplex.va_to_quadrant)(jnp.asarray(va))  # the loss's path: a traced target
  assert isinstance(got, jax.Array) and got.dtype == jnp.int32
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(_np_quadrant(va[:-1]), want[:-1])


def test_mse_weight_alone_is_the_masked_numpy_mse():
  va, pred, mask, _ = _data()
  loss, m = supervised.supervised_loss({'va': jnp.asarray(pred)},
                                       {'va': jnp.asarray(va), 'va_mask': jnp.asarray(mask)},
                                       _weights(mse_weight=1.0))
  want = np.sum(mask * (pred.astype(np.float64) - va) ** 2) / np.sum(mask)
  assert float(loss) == pytest.approx(want, rel=1e-6)
  assert float(m['loss_mse']) == pytest.approx(want, rel=1e-6)
  assert 'loss_quadrant' not in m and 'loss_ccc' not in m
  loss3, _ = supervised.supervised_loss({'va': jnp.asarray(pred)},
                                        {'va': jnp.asarray(va), 'va_mask': jnp.asarray(mask)},
                                        _weights(mse_weight=3.0))
  assert float(loss3) == pytest.approx(3.0 * want, rel=1e-6)


def test_quadrant_weight_alone_is_numpy_cross_entropy_on_the_target_quadrants():
  va, pred, mask, logits = _data(seed=1)
  va[5, 0] = np.nan  # a masked entry may hold NaN: it must not reach the loss
  mask[5] = [0.0, 1.0]
  out = {'va': jnp.asarray(pred), 'quadrant_logits': jnp.asarray(logits)}
  batch = {'va': jnp.asarray(va), 'va_mask': jnp.asarray(mask)}
  loss, m = jax.jit(lambda o, b: supervised.supervised_loss(o, b, _weights(quadrant_weight=0.5)))(
      out, batch)
  valid = mask.min(-1) > 0  # a frame counts when both dimensions are labelled
  q = _np_quadrant(np.where(np.isfinite(va), va, 0.0))
  ce = -_np_log_softmax(logits)[np.arange(len(q)), q]
  want = ce[valid].mean()
  assert np.isfinite(float(loss))
  assert float(m['loss_quadrant']) == pytest.approx(want, rel=1e-5)
  assert float(loss) == pytest.approx(0.5 * want, rel=1e-5)


def test_weights_add_up():
  va, pred, mask, logits = _data(seed=2)
  out = {'va': jnp.asarray(pred), 'quadrant_logits': jnp.asarray(logits)}
  batch = {'va': jnp.asarray(va), 'va_mask': jnp.asarray(mask)}
  both, _ = supervised.supervised_loss(out, batch, _weights(mse_weight=2.0, quadrant_weight=0.5))
  _, m = supervised.supervised_loss(out, batch, _weights(mse_weight=1.0, quadrant_weight=1.0))
  assert float(both) == pytest.approx(2.0 * float(m['loss_mse']) + 0.5 * float(m['loss_quadrant']),
                                      rel=1e-6)
  with pytest.raises(ValueError, match='quadrant_head'):
    supervised.supervised_loss({'va': jnp.asarray(pred)}, batch, _weights(quadrant_weight=1.0))
