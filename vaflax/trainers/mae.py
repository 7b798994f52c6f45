"""MAE pretraining task (He et al. 2022; stage 1 of Zhang et al. 2023).

The masking key of a step is derived from the loop's per-step `rng`, so masks are reproducible
under jit and across resumes (see models/mae.py). Evaluation uses one fixed key, so validation
losses of different checkpoints are measured on the same masks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_MASK_STREAM = 0x4D41  # fold_in tag: keeps the masking key independent of other uses of `rng`
EVAL_MASK_SEED = 0


def _with_mask_rng(batch: dict, rng) -> dict:
  if 'image' not in batch:
    raise KeyError(f"MAE task needs batch['image'] (B, H, W, 3); got keys {sorted(batch)}")
  return {'image': batch['image'], 'mask_rng': jax.random.fold_in(rng, _MASK_STREAM)}


def loss_fn(model, batch: dict, rng, config=None):
  """MSE on per-patch-normalised pixels of the masked patches; config is not read."""
  del config
  out = model(_with_mask_rng(batch, rng))
  metrics = {
      'loss': out['loss'],
      'mask_fraction': jnp.mean(out['mask']),
  }
  return out['loss'], metrics


def predict_fn(model, batch: dict, config=None) -> dict:
  """Reconstruction with a fixed mask: {'reconstruction', 'mask', 'loss_per_example'}.

  There is no 'va' here: MAE pretraining has no VA evaluation (run it with input.eval_split='').
  """
  del config
  out = model(_with_mask_rng(batch, jax.random.key(EVAL_MASK_SEED)))
  return {k: out[k] for k in ('reconstruction', 'mask', 'loss_per_example')}
