"""Losses for valence/arousal regression: pure jnp functions with masks, jit-friendly.

Conventions
- `mask` is 1 where an entry is a valid target and 0 where it is not (invalid marker, padding,
  missing frame). Masked entries may hold anything, NaN and inf included: they are replaced
  before any arithmetic, so they reach neither the value nor the gradient.
- A NaN in an *unmasked* entry propagates to the result on purpose, so that the non-finite guard
  of the train loop stops the run instead of silently training on it.
- CCC is Lin's concordance correlation coefficient with population (ddof 0) moments, as in the
  ABAW evaluation: target [3, -0.5, 2, 7] vs prediction [2.5, 0, 2, 8] gives 0.976789.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

NUM_VA_BINS = 20  # Deng et al. 2020 discretise each of valence and arousal into 20 bins on [-1, 1]


def _prepare(pred, target, mask):
  pred = jnp.asarray(pred, jnp.float32)
  target = jnp.asarray(target, jnp.float32)
  if mask is None:
    w = jnp.ones(jnp.broadcast_shapes(pred.shape, target.shape), jnp.float32)
  else:
    w = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), jnp.broadcast_shapes(pred.shape, target.shape))
  valid = w > 0
  # Double-where: masked entries become 0 so NaN/inf there cannot leak into values or gradients.
  pred = jnp.where(valid, pred, 0.0)
  target = jnp.where(valid, target, 0.0)
  return pred, target, w


def _moments(pred, target, mask, axis):
  p, t, w = _prepare(pred, target, mask)
  n = jnp.sum(w, axis=axis)
  safe_n = jnp.maximum(n, 1e-12)
  mp = jnp.sum(w * p, axis=axis) / safe_n
  mt = jnp.sum(w * t, axis=axis) / safe_n
  dp = p - jnp.expand_dims(mp, axis) if axis is not None else p - mp
  dt = t - jnp.expand_dims(mt, axis) if axis is not None else t - mt
  vp = jnp.sum(w * dp * dp, axis=axis) / safe_n
  vt = jnp.sum(w * dt * dt, axis=axis) / safe_n
  cov = jnp.sum(w * dp * dt, axis=axis) / safe_n
  return mp, mt, vp, vt, cov, n


def ccc(pred, target, mask=None, *, axis=None, eps: float = 1e-8):
  """Lin's CCC with population moments over `axis` (default: all entries).

  eps keeps the loss finite for constant inputs (the value is then 0); metrics pass eps=0 to get
  NaN where the CCC is undefined, as audmetric and the ABAW script do.
  """
  mp, mt, vp, vt, cov, _ = _moments(pred, target, mask, axis)
  return 2.0 * cov / (vp + vt + (mp - mt) ** 2 + eps)


def pcc(pred, target, mask=None, *, axis=None, eps: float = 1e-8):
  """Pearson correlation with population moments over `axis`."""
  _, _, vp, vt, cov, _ = _moments(pred, target, mask, axis)
  return cov / jnp.sqrt(vp * vt + eps)


def rmse(pred, target, mask=None, *, axis=None, eps: float = 0.0):
  """Root mean squared error over the valid entries."""
  p, t, w = _prepare(pred, target, mask)
  n = jnp.maximum(jnp.sum(w, axis=axis), 1e-12)
  return jnp.sqrt(jnp.sum(w * (p - t) ** 2, axis=axis) / n + eps)


def masked_mean(x, mask=None, axis=None):
  x = jnp.asarray(x, jnp.float32)
  if mask is None:
    return jnp.mean(x, axis=axis)
  w = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), x.shape)
  x = jnp.where(w > 0, x, 0.0)
  return jnp.sum(w * x, axis=axis) / jnp.maximum(jnp.sum(w, axis=axis), 1e-12)


def va_ccc_per_dim(va_pred, va_target, va_mask=None):
  """CCC of valence and of arousal, pooled over every leading axis: `(..., 2) -> (2,)`."""
  p = jnp.reshape(va_pred, (-1, 2))
  t = jnp.reshape(va_target, (-1, 2))
  m = None if va_mask is None else jnp.reshape(jnp.broadcast_to(va_mask, va_target.shape), (-1, 2))
  return ccc(p, t, m, axis=0)


def ccc_loss(va_pred, va_target, va_mask=None):
  """(1 - CCC_valence) + (1 - CCC_arousal), the loss of the MAE and ResNet VA recipes."""
  c = va_ccc_per_dim(va_pred, va_target, va_mask)
  return jnp.sum(1.0 - c), c


# --- Binned valence/arousal (Deng et al. 2020) -------------------------------------------------


def bin_centres(num_bins: int = NUM_VA_BINS):
  """Centres of `num_bins` equal-width bins on [-1, 1].

  Deng et al.'s code used linspace(-1, 1, 20), which are the bin *edges'* end points, not the
  centres; the centres are what makes the softmax expectation an unbiased decoder.
  """
  edges = jnp.linspace(-1.0, 1.0, num_bins + 1)
  return 0.5 * (edges[:-1] + edges[1:])


def va_to_bin(x, num_bins: int = NUM_VA_BINS):
  """Index of the equal-width bin on [-1, 1] that holds x (values outside are clipped)."""
  idx = jnp.floor((jnp.asarray(x, jnp.float32) + 1.0) * 0.5 * num_bins)
  return jnp.clip(idx, 0, num_bins - 1).astype(jnp.int32)


def binned_expectation(logits):
  """Softmax expectation over the bin centres: `(..., K) -> (...)`."""
  return jnp.sum(jax.nn.softmax(logits, axis=-1) * bin_centres(logits.shape[-1]), axis=-1)


def binned_cross_entropy(logits, target, mask=None):
  """Mean cross-entropy of `logits (..., K)` against the bin of `target (...)` over valid entries."""
  labels = va_to_bin(jnp.where(jnp.isfinite(target), target, 0.0), logits.shape[-1])
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  return masked_mean(ce, mask)


def distillation_kl(student_logits, teacher_logits, *, temperature: float = 1.5, mask=None):
  """KL(teacher_T || student_T) over bins, averaged over valid entries.

  Both distributions are softened by `temperature` (Deng et al. 2020 use 1.5). The teacher is a
  fixed target: no gradient flows into it.
  """
  t = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32)) / temperature
  s = student_logits.astype(jnp.float32) / temperature
  log_pt = jax.nn.log_softmax(t, axis=-1)
  log_ps = jax.nn.log_softmax(s, axis=-1)
  kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)
  return masked_mean(kl, mask)


# --- Shake-shake weighting (Toisoul et al. 2021) ----------------------------------------------


def shake_shake_coefficients(rng, shape=()):
  """alpha, beta, gamma ~ U[0, 1], normalised to sum to 1 (Toisoul et al. 2021, Methods)."""
  c = jax.random.uniform(rng, shape + (3,), jnp.float32)
  return c / jnp.maximum(jnp.sum(c, axis=-1, keepdims=True), 1e-6)


def shake_shake_regression(pred, target, mask, coefficients):
  """alpha * RMSE + beta * (1 - PCC) + gamma * (1 - CCC) for one dimension."""
  a, b, g = coefficients[..., 0], coefficients[..., 1], coefficients[..., 2]
  return (
      a * rmse(pred, target, mask, eps=1e-12)  # eps: finite gradient when all entries are masked
      + b * (1.0 - pcc(pred, target, mask))
      + g * (1.0 - ccc(pred, target, mask))
  )
