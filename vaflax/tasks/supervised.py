"""Supervised VA regression for frame (image) and window (frames) models.

loss (config.loss):
  ccc_weight      * [(1 - CCC_v) + (1 - CCC_a)] on `va`, pooled over the valid entries of the batch
  binned_weight   * cross-entropy over the bins of `va_logits` (Deng et al. 2020), per dimension
  mse_weight      * masked mean squared error (a stabiliser for tiny batches)
  quadrant_weight * cross-entropy of `quadrant_logits` against the quadrant of the target VA
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from vaflax import circumplex, losses


def supervised_loss(out, batch, lc):
  va_t, mask = batch['va'], batch['va_mask']
  metrics = {}
  loss = 0.0
  c = losses.va_ccc_per_dim(out['va'], va_t, mask)
  metrics['ccc_valence'], metrics['ccc_arousal'] = c[0], c[1]
  if lc.ccc_weight:
    l_ccc = jnp.sum(1.0 - c)
    loss += lc.ccc_weight * l_ccc
    metrics['loss_ccc'] = l_ccc
  if lc.binned_weight:
    if 'va_logits' not in out:
      raise ValueError('config.loss.binned_weight > 0 needs a model with num_bins > 0')
    ce = sum(losses.binned_cross_entropy(out['va_logits'][..., d, :], va_t[..., d], mask[..., d])
             for d in range(2))
    loss += lc.binned_weight * ce
    metrics['loss_binned_ce'] = ce
  if lc.mse_weight:
    mse = losses.masked_mean((out['va'] - va_t) ** 2, mask)
    loss += lc.mse_weight * mse
    metrics['loss_mse'] = mse
  if lc.quadrant_weight:
    if 'quadrant_logits' not in out:
      raise ValueError('config.loss.quadrant_weight > 0 needs a model with quadrant_head=True')
    # A non-finite (masked) target has no quadrant (-1): any class will do, its CE is masked out.
    q = jnp.maximum(circumplex.va_to_quadrant(jnp.asarray(va_t)), 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(out['quadrant_logits'], q)
    qmask = jnp.min(mask, axis=-1)
    l_q = losses.masked_mean(ce, qmask)
    loss += lc.quadrant_weight * l_q
    metrics['loss_quadrant'] = l_q
  return loss, metrics


def loss_fn(model, batch, rng, config):
  del rng  # dropout draws from the model's own nnx.Rngs stream (checkpointed with the state)
  out = model(batch)
  return supervised_loss(out, batch, config.loss)


def predict_fn(model, batch, config):
  del config
  out = model(batch)
  res = {'va': out['va']}
  if 'quadrant_logits' in out:
    res['quadrant_logits'] = out['quadrant_logits']
  return res
