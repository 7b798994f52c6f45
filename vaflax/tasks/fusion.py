"""Per-frame VA over windows (audio-visual fusion, Zhang et al. 2023): CCC loss.

The loss is (1 - CCC_valence) + (1 - CCC_arousal), each CCC pooled over every valid frame of
every window in the batch (`va_mask` = 1), as in the paper's fine-tuning stages.
"""

from __future__ import annotations

import jax.numpy as jnp

from vaflax import losses


def _va_mask(batch: dict):
  va = batch['va']
  mask = batch.get('va_mask')
  if mask is None:
    return None
  mask = jnp.asarray(mask)
  if mask.ndim == va.ndim - 1:  # a per-frame mask (B, T) covers both dimensions
    mask = mask[..., None]
  if jnp.broadcast_shapes(mask.shape, va.shape) != va.shape:
    raise ValueError(f"batch['va_mask'] {mask.shape} does not fit batch['va'] {va.shape}")
  return mask


def loss_fn(model, batch: dict, rng, config=None):
  """CCC loss over valid frames; `rng` and `config` are not read (dropout uses model rngs)."""
  del rng, config
  if 'va' not in batch:
    raise KeyError(f"fusion task needs batch['va'] (B, T, 2); got keys {sorted(batch)}")
  out = model(batch)
  if out['va'].shape != batch['va'].shape:
    raise ValueError(f"prediction {out['va'].shape} and batch['va'] {batch['va'].shape} differ")
  loss, ccc_VA = losses.ccc_loss(out['va'], batch['va'], _va_mask(batch))
  return loss, {'loss': loss, 'ccc_valence': ccc_VA[0], 'ccc_arousal': ccc_VA[1]}


def predict_fn(model, batch: dict, config=None) -> dict:
  del config
  return {'va': model(batch)['va']}


def speech_loss_fn(model, batch, rng, config=None):
  """A converted speech encoder (task 'speech', vaflax/convert/speech.py) is not trained alone."""
  raise ValueError('a converted speech encoder (task speech) is a frozen feature extractor: '
                   'train the fusion on it (configs/mae_va.py:audio=speech,audio_init=RUN)')


def speech_predict_fn(model, batch: dict, config=None) -> dict:
  """Every hidden state of a speech encoder run: {'hidden_states': (I, B, T, D)}."""
  del config
  return {'hidden_states': model(batch['wave'], batch.get('wave_mask'))}
