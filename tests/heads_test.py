"""Tests for vaflax/models/heads.py against a NumPy forward pass of the same weights."""

import numpy as np
import pytest
from flax import nnx

from vaflax import losses
from vaflax.models import heads


def _np(v):
  return np.asarray(v[...], np.float64)


def test_readout_slices_va_bins_quadrants_and_emotions():
  head = heads.VAHead(6, 8, num_bins=5, quadrant_head=True, num_emotions=3, rngs=nnx.Rngs(0))
  x = np.random.default_rng(0).normal(size=(2, 4, 6)).astype(np.float32)  # any leading axes
  out = head(x)
  h = np.maximum(x @ _np(head.hidden.kernel) + _np(head.hidden.bias), 0.0)
  y = h @ _np(head.out.kernel) + _np(head.out.bias)
  assert head.out.kernel.shape == (8, 2 * 5 + 4 + 3)
  np.testing.assert_allclose(out['va_logits'], y[..., :10].reshape(2, 4, 2, 5), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(out['va'], losses.binned_expectation(y[..., :10].reshape(2, 4, 2, 5)),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out['quadrant_logits'], y[..., 10:14], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out['emotion_logits'], y[..., 14:], rtol=1e-5, atol=1e-6)


def test_plain_tanh_head_and_embedding_only():
  head = heads.VAHead(6, rngs=nnx.Rngs(1))  # no hidden layer: Linear -> tanh
  x = np.random.default_rng(1).normal(size=(3, 6)).astype(np.float32)
  out = head(x)
  assert sorted(out) == ['va']
  np.testing.assert_allclose(out['va'], np.tanh(x @ _np(head.out.kernel) + _np(head.out.bias)),
                             rtol=1e-5, atol=1e-6)
  emb = heads.VAHead(6, 4, readout=False, rngs=nnx.Rngs(2))
  assert emb.out is None
  np.testing.assert_allclose(emb.embed(x), np.maximum(x @ _np(emb.hidden.kernel)
                                                      + _np(emb.hidden.bias), 0.0),
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='hidden'):
    heads.VAHead(6, readout=False, rngs=nnx.Rngs(0))


def test_hidden_norm_is_batchnorm_before_relu():
  head = heads.VAHead(6, 4, hidden_norm=True, rngs=nnx.Rngs(3))
  head.eval()
  head.hidden_norm.mean[...] = np.full(4, 0.5, np.float32)
  head.hidden_norm.var[...] = np.full(4, 4.0, np.float32)
  x = np.random.default_rng(3).normal(size=(3, 6)).astype(np.float32)
  z = x @ _np(head.hidden.kernel) + _np(head.hidden.bias)
  h = np.maximum((z - 0.5) / np.sqrt(4.0 + 1e-5), 0.0)
  np.testing.assert_allclose(head(x)['va'], np.tanh(h @ _np(head.out.kernel) + _np(head.out.bias)),
                             rtol=1e-5, atol=1e-6)
