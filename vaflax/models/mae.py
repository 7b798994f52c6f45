"""Masked autoencoder (He et al. 2022) pretraining, the first stage of Zhang et al. 2023.

The encoder is a `vit.Encoder` that sees only the visible patches; a light decoder (ViT-B recipe:
8 blocks, width 512, 16 heads) gets the encoded visible tokens plus a shared mask token at every
masked position, adds its own fixed sin-cos position embedding and predicts the pixels of every
patch. The loss is the MSE on per-patch-normalised pixels (norm_pix_loss) over MASKED patches only.

Masking randomness comes from `batch['mask_rng']` (a PRNG key), not from an nnx.Rngs stream held
by the model. The train loop already derives one key per step from (seed, step); the trainer
(tasks/mae.py) passes it in, so the mask of step s is a pure function of (seed, s): the same
under jit, after a resume from a checkpoint and on any number of hosts, and the step has no
hidden rng counter to carry through jit/checkpoints. A missing key is an error rather than a
silent fixed mask.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vaflax.models import vit
from vaflax.models.vit import patchify, unpatchify

__all__ = ['Model', 'patchify', 'unpatchify', 'random_masking', 'mae_loss',
           'save_reconstruction_grid']

NORM_PIX_EPS = 1e-6  # He et al. 2022 (official code): var + 1e-6 in the per-patch normalisation


def num_kept(num_patches: int, mask_ratio: float) -> int:
  """Number of visible patches: round(P * (1 - mask_ratio)), at least 1."""
  if not 0.0 <= mask_ratio < 1.0:
    raise ValueError(f'mask_ratio must be in [0, 1), got {mask_ratio}')
  return max(1, int(round(num_patches * (1.0 - mask_ratio))))


def random_masking(rng, batch_size: int, num_patches: int, mask_ratio: float):
  """Per-example random permutation masking.

  Returns
    ids_keep_BxV: indices of the V visible patches (in the order of the permutation),
    mask_BxP: 1 = masked, 0 = visible, in the original patch order,
    ids_restore_BxP: inverse permutation: position of patch i in [kept..., masked...].
  """
  k = num_kept(num_patches, mask_ratio)
  noise_BxP = jax.random.uniform(rng, (batch_size, num_patches))
  ids_shuffle_BxP = jnp.argsort(noise_BxP, axis=1)
  ids_restore_BxP = jnp.argsort(ids_shuffle_BxP, axis=1)
  ids_keep_BxV = ids_shuffle_BxP[:, :k]
  mask_BxP = (ids_restore_BxP >= k).astype(jnp.float32)
  return ids_keep_BxV, mask_BxP, ids_restore_BxP


def normalise_patches(target_BxPxY, eps: float = NORM_PIX_EPS):
  """Per-patch mean/variance normalisation of the pixel targets; returns (norm, mean, std)."""
  mean = jnp.mean(target_BxPxY, axis=-1, keepdims=True)
  var = jnp.var(target_BxPxY, axis=-1, keepdims=True)
  std = jnp.sqrt(var + eps)
  return (target_BxPxY - mean) / std, mean, std


def mae_loss(pred_BxPxY, target_BxPxY, mask_BxP):
  """Mean over masked patches of the per-patch pixel MSE; also returns the per-example loss."""
  per_patch_BxP = jnp.mean((pred_BxPxY.astype(jnp.float32) - target_BxPxY) ** 2, axis=-1)
  loss = jnp.sum(per_patch_BxP * mask_BxP) / jnp.maximum(jnp.sum(mask_BxP), 1.0)
  per_example_B = jnp.sum(per_patch_BxP * mask_BxP, axis=1) / jnp.maximum(
      jnp.sum(mask_BxP, axis=1), 1.0)
  return loss, per_example_B


class Model(nnx.Module):
  """MAE. `__call__({'image': (B,H,W,3), 'mask_rng': key}) -> {'loss', 'loss_per_example',
  'pred_patches' (B,P,p*p*3), 'mask' (B,P), 'reconstruction' (B,H,W,3)}`."""

  def __init__(
      self,
      *,
      variant: str | None = 'B/16',
      image_size: int | tuple[int, int] = 224,
      mask_ratio: float = 0.75,  # He et al. 2022
      norm_pix_loss: bool = True,  # He et al. 2022, Table 1(c): better representations
      decoder_width: int = 512,  # He et al. 2022 ViT-B/L/H default decoder
      decoder_depth: int = 8,
      decoder_num_heads: int = 16,
      decoder_mlp_dim: int | None = None,
      remat: bool = False,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      attention_impl: str | None = None,
      rngs: nnx.Rngs,
      **encoder_kwargs,
  ):
    num_kept(1000, mask_ratio)  # validates the ratio early
    dtype, param_dtype = vit.as_dtype(dtype), vit.as_dtype(param_dtype)
    self.mask_ratio = float(mask_ratio)
    self.norm_pix_loss = bool(norm_pix_loss)
    common = dict(remat=remat, dtype=dtype, param_dtype=param_dtype,
                  attention_impl=attention_impl, rngs=rngs)
    encoder_kwargs.setdefault('posemb', 'sincos2d')  # MAE uses a fixed sin-cos embedding
    self.encoder = vit.Encoder(variant=variant, image_size=image_size, **encoder_kwargs, **common)
    enc = self.encoder
    self.patch_size = enc.patch_size
    if decoder_width % decoder_num_heads:
      raise ValueError(f'MAE decoder_width {decoder_width} not divisible by decoder_num_heads '
                       f'{decoder_num_heads}')
    self.decoder_width = decoder_width
    self.decoder_embed = nnx.Linear(
        enc.width, decoder_width, dtype=dtype, param_dtype=param_dtype,
        kernel_init=nnx.with_partitioning(nnx.initializers.xavier_uniform(), ('embed', None)),
        rngs=rngs)
    self.mask_token = nnx.Param(
        nnx.with_partitioning(nnx.initializers.normal(0.02), (None, None, 'embed'))(
            rngs.params(), (1, 1, decoder_width), param_dtype))
    # Inside the decoder 'embed' names the decoder width (the blocks are ViT blocks).
    self.decoder = vit.Transformer(decoder_width, decoder_depth, decoder_num_heads,
                                   decoder_mlp_dim or 4 * decoder_width, **common)
    p2c = self.patch_size ** 2 * enc.channels
    self.decoder_pred = nnx.Linear(
        decoder_width, p2c, dtype=dtype, param_dtype=param_dtype,
        kernel_init=nnx.with_partitioning(nnx.initializers.xavier_uniform(), ('embed', None)),
        rngs=rngs)

  def forward(self, images_BxHxWxC, rng):
    """Returns (pred_patches_BxPxY, mask_BxP) for the given masking key."""
    enc = self.encoder
    x_BxPxD = enc.embed(images_BxHxWxC)
    b, n, d = x_BxPxD.shape
    ids_keep_BxV, mask_BxP, ids_restore_BxP = random_masking(rng, b, n, self.mask_ratio)
    x_BxVxD = jnp.take_along_axis(x_BxPxD, ids_keep_BxV[..., None], axis=1)
    h_Bx1pVxD = enc.encode_tokens(x_BxVxD)  # CLS (if any) + visible tokens
    prefix = enc.num_prefix

    y_Bx1pVxG = self.decoder_embed(h_Bx1pVxD)
    y_prefix, y_BxVxG = y_Bx1pVxG[:, :prefix], y_Bx1pVxG[:, prefix:]
    k = y_BxVxG.shape[1]
    mask_tokens = jnp.broadcast_to(self.mask_token[...].astype(y_BxVxG.dtype),
                                   (b, n - k, self.decoder_width))
    # [kept..., masked...] back to the original patch order.
    y_BxPxG = jnp.take_along_axis(jnp.concatenate([y_BxVxG, mask_tokens], axis=1),
                                  ids_restore_BxP[..., None], axis=1)
    pe_PxG = jnp.asarray(vit.sincos_2d_posemb(*enc.grid_hw, self.decoder_width))
    y_BxPxG = y_BxPxG + pe_PxG[None].astype(y_BxPxG.dtype)
    # The CLS token's decoder position embedding is zero, as in MAE.
    y = self.decoder(jnp.concatenate([y_prefix, y_BxPxG], axis=1))
    pred_BxPxY = self.decoder_pred(y[:, prefix:]).astype(jnp.float32)
    return pred_BxPxY, mask_BxP

  def __call__(self, batch: dict) -> dict:
    for key in ('image', 'mask_rng'):
      if key not in batch:
        raise KeyError(f"mae.Model needs batch[{key!r}] (mask_rng: a PRNG key, supplied by "
                       f"tasks/mae.py); got keys {sorted(batch)}")
    images = batch['image']
    pred_BxPxY, mask_BxP = self.forward(images, batch['mask_rng'])
    target_BxPxY = patchify(images.astype(jnp.float32), self.patch_size)
    if self.norm_pix_loss:
      target_norm, mean, std = normalise_patches(target_BxPxY)
      loss, per_example = mae_loss(pred_BxPxY, target_norm, mask_BxP)
      # For display only: predicted patches mapped back with the TRUE patch mean/std (the
      # prediction carries the within-patch structure; this is how norm_pix MAE is visualised).
      pred_pixels = pred_BxPxY * std + mean
    else:
      loss, per_example = mae_loss(pred_BxPxY, target_BxPxY, mask_BxP)
      pred_pixels = pred_BxPxY
    m = mask_BxP[..., None]
    recon_patches = target_BxPxY * (1.0 - m) + pred_pixels * m
    reconstruction = unpatchify(recon_patches, self.patch_size, self.encoder.grid_hw)
    return {
        'loss': loss,
        'loss_per_example': per_example,
        'pred_patches': pred_BxPxY,
        'mask': mask_BxP,
        'reconstruction': jnp.clip(reconstruction, -1.0, 1.0),
    }


def masked_images(images_BxHxWxC, mask_BxP, patch_size: int, fill: float = 0.0):
  """Images with masked patches replaced by `fill` (0 = mid grey in [-1, 1])."""
  images = np.asarray(images_BxHxWxC, np.float32)
  b, h, w, c = images.shape
  gh, gw = h // patch_size, w // patch_size
  m = np.asarray(mask_BxP, np.float32).reshape(b, gh, 1, gw, 1, 1)
  tiles = images.reshape(b, gh, patch_size, gw, patch_size, c)
  return (tiles * (1.0 - m) + fill * m).reshape(b, h, w, c)


def save_reconstruction_grid(path, images, mask, reconstruction, patch_size: int,
                             max_rows: int = 8) -> np.ndarray:
  """Writes a PNG with one row per example: original | masked | reconstruction.

  Inputs are in [-1, 1]; returns the uint8 grid that was written.
  """
  from PIL import Image  # only needed here

  images = np.asarray(images, np.float32)[:max_rows]
  recon = np.asarray(reconstruction, np.float32)[:max_rows]
  masked = masked_images(images, np.asarray(mask)[:max_rows], patch_size)
  if images.shape != recon.shape:
    raise ValueError(f'images {images.shape} and reconstruction {recon.shape} differ in shape')
  gap = 2
  b, h, w, _ = images.shape
  grid = np.full((b * (h + gap) - gap, 3 * (w + gap) - gap, 3), 255, np.uint8)
  to_u8 = lambda x: np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
  for i in range(b):
    for j, img in enumerate((images[i], masked[i], recon[i])):
      y0, x0 = i * (h + gap), j * (w + gap)
      grid[y0:y0 + h, x0:x0 + w] = to_u8(img[..., :3])
  Image.fromarray(grid).save(path)
  return grid
