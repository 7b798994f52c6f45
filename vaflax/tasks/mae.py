"""MAE pretraining task (He et al. 2022; stage 1 of Zhang et al. 2023).

The masking key of a step is derived from the loop's per-step `rng`, so masks are reproducible
under jit and across resumes (see models/mae.py). Evaluation uses one fixed key, so validation
losses of different checkpoints are measured on the same masks.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vaflax import sharding
from vaflax.models import mae, vit

_MASK_STREAM = 0x4D41  # fold_in tag: keeps the masking key independent of other uses of `rng`
EVAL_MASK_SEED = 0
RECON_ROWS = 8  # validation images drawn in each reconstruction PNG


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
  """Reconstruction with a fixed mask: {'reconstruction', 'mask', 'loss_per_example',
  'eval_loss'}; the loop averages the per-example `eval_loss` into val/loss (no 'va': MAE
  pretraining has no VA metrics)."""
  del config
  out = model(_with_mask_rng(batch, jax.random.key(EVAL_MASK_SEED)))
  res = {k: out[k] for k in ('reconstruction', 'mask', 'loss_per_example')}
  res['eval_loss'] = out['loss_per_example']
  return res


def make_on_eval(setup):
  """The run's on_eval (built once by the loop, so its jitted reconstruction compiles once):
  writes workdir/reconstructions/step_<step>.png, original | masked | reconstruction of up to 8
  images spread over the first validation batch (fixed eval mask), so a person can watch MAE
  learn."""
  graphdef = setup.graphdef

  def reconstruct(state, batch):
    model, _ = nnx.merge(graphdef, state)  # the training state: (model, optimizer)
    model.eval()
    # Rows spread over the batch (consecutive records are often frames of one clip).
    stride = max(1, batch['image'].shape[0] // RECON_ROWS)
    images = batch['image'][::stride][:RECON_ROWS]
    out = predict_fn(model, {'image': images}, setup.config)
    return {'image': images, 'mask': out['mask'], 'reconstruction': out['reconstruction']}

  # Replicated output: every host holds the rows, process 0 writes them (multi-host safe).
  reconstruct = jax.jit(reconstruct, out_shardings=sharding.replicated(setup.mesh),
                        in_shardings=(setup.state_sharding, sharding.batch_sharding(setup.mesh)))
  mc = setup.config.model
  patch_size = vit.decode_variant(mc.variant, patch_size=mc.get('patch_size'))['patch_size']

  def on_eval(state, eval_data, workdir: str, step: int) -> dict:
    batch = next(iter(eval_data))
    out = jax.device_get(reconstruct(state, sharding.to_global({'image': batch['image']},
                                                               setup.mesh)))
    if jax.process_index() == 0:
      stride = max(1, batch['image'].shape[0] // RECON_ROWS)
      rows = int(np.sum(batch['eval_mask'][::stride][:RECON_ROWS] > 0))  # padding rows left out
      folder = os.path.join(workdir, 'reconstructions')
      os.makedirs(folder, exist_ok=True)
      mae.save_reconstruction_grid(os.path.join(folder, f'step_{step}.png'), out['image'][:rows],
                                   out['mask'][:rows], out['reconstruction'][:rows], patch_size)
    return {}

  return on_eval
