"""Vision Transformer (Dosovitskiy et al. 2021) as used by the MAE recipe (Zhang et al. 2023).

`Encoder` is the shared trunk (patch embedding, position embedding, optional CLS token, pre-norm
blocks, final LayerNorm) used by the MAE pretraining model (models/mae.py), the VA fine-tuning
`Model` below and the audio-visual fusion model (models/fusion.py).

Variants are named like big_vision: 'B/16' = ViT-Base with 16x16 patches. 'mu/8' is a tiny
model for CPU tests and runlocal. Any of width/depth/num_heads/mlp_dim/patch_size can be
overridden by keyword.

Layer-wise learning-rate decay for fine-tuning (BEiT, Bao et al. 2022; MAE, He et al. 2022) is
`config.optimizer.layer_decay` (vaflax/optim.py), keyed on the `blocks/<i>` parameter paths here.
"""

from __future__ import annotations

import re
from typing import Any

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vaflax.models import heads

# name -> (width, depth, num_heads, mlp_dim); Dosovitskiy et al. 2021 Table 1, Ti/S from
# Touvron et al. 2021 (DeiT); 'mu' is a tiny model for tests and runlocal.
VARIANTS: dict[str, tuple[int, int, int, int]] = {
    'mu': (32, 2, 2, 128),
    'Ti': (192, 12, 3, 768),
    'S': (384, 12, 6, 1536),
    'B': (768, 12, 12, 3072),
    'L': (1024, 24, 16, 4096),
    'H': (1280, 32, 16, 5120),
}

LN_EPS = 1e-6  # MAE / timm ViT LayerNorm epsilon


def decode_variant(
    variant: str | None,
    *,
    width: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    mlp_dim: int | None = None,
    patch_size: int | None = None,
) -> dict[str, int]:
  """'B/16' -> dict(width, depth, num_heads, mlp_dim, patch_size); keywords override."""
  base: dict[str, int | None] = dict(
      width=None, depth=None, num_heads=None, mlp_dim=None, patch_size=None
  )
  if variant:
    m = re.fullmatch(r'([A-Za-z]+)/(\d+)', variant)
    if m is None or m.group(1) not in VARIANTS:
      raise ValueError(
          f'ViT variant {variant!r}: expected "<name>/<patch>" with name in {sorted(VARIANTS)}, '
          'e.g. "B/16"'
      )
    w, d, h, mlp = VARIANTS[m.group(1)]
    base = dict(width=w, depth=d, num_heads=h, mlp_dim=mlp, patch_size=int(m.group(2)))
  overrides = dict(
      width=width, depth=depth, num_heads=num_heads, mlp_dim=mlp_dim, patch_size=patch_size
  )
  out = {k: (overrides[k] if overrides[k] is not None else base[k]) for k in base}
  if out['mlp_dim'] is None and out['width'] is not None:
    out['mlp_dim'] = 4 * out['width']  # the ViT MLP ratio
  missing = [k for k, v in out.items() if v is None]
  if missing:
    raise ValueError(f'ViT: no variant given and {missing} not set')
  if out['width'] % out['num_heads']:
    raise ValueError(f'ViT: width {out["width"]} not divisible by num_heads {out["num_heads"]}')
  return out  # type: ignore[return-value]


def sincos_2d_posemb(grid_h: int, grid_w: int, width: int, temperature: float = 10_000.0):
  """Fixed 2-D sin-cos position embedding (MAE, He et al. 2022): (grid_h * grid_w, width).

  The first half of the channels encodes the row, the second half the column, each as
  [sin(pos * w_k), cos(pos * w_k)] with w_k = temperature ** (-k / (width / 4)).
  """
  if width % 4:
    raise ValueError(f'sincos2d position embedding needs width % 4 == 0, got {width}')
  y, x = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64),
                     indexing='ij')
  omega = 1.0 / temperature ** (np.arange(width // 4, dtype=np.float64) / (width // 4))
  ang_y = y.reshape(-1, 1) * omega[None]
  ang_x = x.reshape(-1, 1) * omega[None]
  emb = np.concatenate([np.sin(ang_y), np.cos(ang_y), np.sin(ang_x), np.cos(ang_x)], axis=1)
  return emb.astype(np.float32)


def as_dtype(dtype):
  """None stays None (= infer from inputs); strings from configs ('bfloat16') become dtypes."""
  return None if dtype is None else jnp.dtype(dtype)


def _xavier(names):
  return nnx.with_partitioning(nnx.initializers.xavier_uniform(), names)


def _zeros(names):
  return nnx.with_partitioning(nnx.initializers.zeros_init(), names)


def _ones(names):
  return nnx.with_partitioning(nnx.initializers.ones_init(), names)


def layer_norm(width: int, *, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(
      width, epsilon=LN_EPS, dtype=dtype, param_dtype=param_dtype,
      scale_init=_ones(('embed',)), bias_init=_zeros(('embed',)), rngs=rngs,
  )


class Attention(nnx.Module):
  """Multi-head self-attention through `jax.nn.dot_product_attention` (inputs (B, T, N, Z))."""

  def __init__(self, width: int, num_heads: int, *, dtype=None, param_dtype=jnp.float32,
               attention_impl: str | None = None, rngs: nnx.Rngs):
    if attention_impl not in (None, 'xla', 'cudnn'):
      raise ValueError(f"attention_impl must be None, 'xla' or 'cudnn', got {attention_impl!r}")
    self.num_heads = num_heads
    self.attention_impl = attention_impl
    lin = lambda names: nnx.Linear(
        width, width, dtype=dtype, param_dtype=param_dtype, kernel_init=_xavier(names),
        bias_init=_zeros((names[1],)), rngs=rngs,
    )
    self.query = lin(('embed', 'heads'))
    self.key = lin(('embed', 'heads'))
    self.value = lin(('embed', 'heads'))
    self.out = lin(('heads', 'embed'))

  def __call__(self, x_BxTxD, mask_BxT=None):
    split = lambda y: einops.rearrange(y, 'b t (n h) -> b t n h', n=self.num_heads)
    q_BxTxNxZ = split(self.query(x_BxTxD))
    k_BxTxNxZ = split(self.key(x_BxTxD))
    v_BxTxNxZ = split(self.value(x_BxTxD))
    # Key padding mask (1 = attend), broadcast over heads and queries: (B, 1, 1, T).
    mask = None if mask_BxT is None else mask_BxT[:, None, None, :].astype(bool)
    y_BxTxNxZ = jax.nn.dot_product_attention(
        q_BxTxNxZ, k_BxTxNxZ, v_BxTxNxZ, mask=mask, implementation=self.attention_impl
    )
    return self.out(einops.rearrange(y_BxTxNxZ, 'b t n h -> b t (n h)'))


class Mlp(nnx.Module):
  def __init__(self, width: int, mlp_dim: int, *, dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(width, mlp_dim, dtype=dtype, param_dtype=param_dtype,
                          kernel_init=_xavier(('embed', 'mlp')), bias_init=_zeros(('mlp',)),
                          rngs=rngs)
    self.fc2 = nnx.Linear(mlp_dim, width, dtype=dtype, param_dtype=param_dtype,
                          kernel_init=_xavier(('mlp', 'embed')), bias_init=_zeros(('embed',)),
                          rngs=rngs)

  def __call__(self, x):
    # Exact (erf) GELU as in timm/MAE, not the tanh approximation.
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class Block(nnx.Module):
  """Pre-norm Transformer block: x + Attn(LN(x)); x + MLP(LN(x)); optional stochastic depth."""

  def __init__(self, width: int, num_heads: int, mlp_dim: int, *, drop_path: float = 0.0,
               dtype=None, param_dtype=jnp.float32, attention_impl: str | None = None,
               rngs: nnx.Rngs):
    self.norm1 = layer_norm(width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.attn = Attention(width, num_heads, dtype=dtype, param_dtype=param_dtype,
                          attention_impl=attention_impl, rngs=rngs)
    self.norm2 = layer_norm(width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.mlp = Mlp(width, mlp_dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    # Stochastic depth (Huang et al. 2016) = dropout of the whole residual branch per example:
    # a Dropout whose mask is broadcast over tokens and channels. Off in model.eval().
    self.drop_path = (
        nnx.Dropout(drop_path, broadcast_dims=(1, 2), rngs=rngs) if drop_path > 0 else None
    )

  def _branch(self, y):
    return y if self.drop_path is None else self.drop_path(y)

  def __call__(self, x_BxTxD, mask_BxT=None):
    x_BxTxD = x_BxTxD + self._branch(self.attn(self.norm1(x_BxTxD), mask_BxT))
    return x_BxTxD + self._branch(self.mlp(self.norm2(x_BxTxD)))


class Transformer(nnx.Module):
  """A stack of pre-norm blocks followed by a final LayerNorm."""

  def __init__(self, width: int, depth: int, num_heads: int, mlp_dim: int, *,
               drop_path: float = 0.0, remat: bool = False, dtype=None,
               param_dtype=jnp.float32, attention_impl: str | None = None, rngs: nnx.Rngs):
    # Stochastic depth rate grows linearly with depth (Huang et al. 2016, as in MAE/DeiT).
    rates = np.linspace(0.0, drop_path, depth) if depth else []
    self.blocks = nnx.List([
        Block(width, num_heads, mlp_dim, drop_path=float(r), dtype=dtype,
              param_dtype=param_dtype, attention_impl=attention_impl, rngs=rngs)
        for r in rates
    ])
    self.norm = layer_norm(width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.remat = remat

  def __call__(self, x_BxTxD, mask_BxT=None):
    for block in self.blocks:
      if self.remat:
        # Recompute the block's activations in the backward pass to save memory.
        x_BxTxD = nnx.remat(lambda b, x, m: b(x, m))(block, x_BxTxD, mask_BxT)
      else:
        x_BxTxD = block(x_BxTxD, mask_BxT)
    return self.norm(x_BxTxD)


def patchify(images_BxHxWxC, p: int):
  """(B, H, W, C) -> (B, P, p*p*C), patches in row-major order, pixels (py, px, c) inside."""
  _, h, w, _ = images_BxHxWxC.shape
  if h % p or w % p:
    raise ValueError(f'patchify: image size {h}x{w} is not divisible by patch size {p}')
  return einops.rearrange(images_BxHxWxC, 'b (gh py) (gw px) c -> b (gh gw) (py px c)',
                          py=p, px=p)


def unpatchify(patches_BxPxY, p: int, grid_hw: tuple[int, int] | None = None):
  """Inverse of `patchify`; a square grid unless `grid_hw` is given."""
  _, n, d = patches_BxPxY.shape
  if grid_hw is None:
    g = int(round(n ** 0.5))
    if g * g != n:
      raise ValueError(f'unpatchify: {n} patches is not a square grid; pass grid_hw')
    grid_hw = (g, g)
  if grid_hw[0] * grid_hw[1] != n or d % (p * p):
    raise ValueError(f'unpatchify: {n} patches of size {d} do not fit grid {grid_hw}, p={p}')
  return einops.rearrange(patches_BxPxY, 'b (gh gw) (py px c) -> b (gh py) (gw px) c',
                          gh=grid_hw[0], gw=grid_hw[1], py=p, px=p)


class Encoder(nnx.Module):
  """ViT trunk. `__call__(images) -> (tokens_BxTxD after final norm, pooled_BxD)`.

  For MAE the two halves are used separately: `embed` (patch tokens + position embedding) and
  `encode_tokens` (prepend CLS, blocks, final norm) so that patches can be dropped in between.
  """

  def __init__(
      self,
      *,
      variant: str | None = 'B/16',
      width: int | None = None,
      depth: int | None = None,
      num_heads: int | None = None,
      mlp_dim: int | None = None,
      patch_size: int | None = None,
      image_size: int | tuple[int, int] = 224,
      channels: int = 3,
      posemb: str = 'sincos2d',
      pool_type: str = 'gap',
      use_cls_token: bool | None = None,
      drop_path: float = 0.0,
      remat: bool = False,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      attention_impl: str | None = None,
      rngs: nnx.Rngs,
  ):
    cfg = decode_variant(variant, width=width, depth=depth, num_heads=num_heads,
                         mlp_dim=mlp_dim, patch_size=patch_size)
    dtype, param_dtype = as_dtype(dtype), as_dtype(param_dtype)
    self.width, self.depth = cfg['width'], cfg['depth']
    self.num_heads, self.mlp_dim = cfg['num_heads'], cfg['mlp_dim']
    self.patch_size = cfg['patch_size']
    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if hw[0] % self.patch_size or hw[1] % self.patch_size:
      raise ValueError(f'ViT: image_size {hw} not divisible by patch size {self.patch_size}')
    self.image_hw = hw
    self.grid_hw = (hw[0] // self.patch_size, hw[1] // self.patch_size)
    self.num_patches = self.grid_hw[0] * self.grid_hw[1]
    self.channels = channels
    if pool_type not in ('gap', 'cls'):
      raise ValueError(f"ViT: pool_type must be 'gap' or 'cls', got {pool_type!r}")
    if posemb not in ('sincos2d', 'learn'):
      raise ValueError(f"ViT: posemb must be 'sincos2d' or 'learn', got {posemb!r}")
    self.pool_type, self.posemb_type = pool_type, posemb
    # MAE keeps a CLS token even with global-average pooling (so its checkpoints load either
    # way); default: a CLS token always, unless explicitly turned off for 'gap'.
    self.use_cls_token = True if use_cls_token is None else bool(use_cls_token)
    if pool_type == 'cls' and not self.use_cls_token:
      raise ValueError("ViT: pool_type='cls' needs use_cls_token=True")
    self.num_prefix = 1 if self.use_cls_token else 0
    self.dtype = dtype
    d = self.width
    p2c = self.patch_size * self.patch_size * channels
    # Patch embedding = a stride-p conv written as patchify + Linear (same parameter count).
    self.patch_embed = nnx.Linear(p2c, d, dtype=dtype, param_dtype=param_dtype,
                                  kernel_init=_xavier((None, 'embed')),
                                  bias_init=_zeros(('embed',)), rngs=rngs)
    init02 = nnx.initializers.normal(0.02)  # ViT/MAE: CLS token and learned posemb ~ N(0, .02)
    if self.use_cls_token:
      self.cls_token = nnx.Param(
          nnx.with_partitioning(init02, (None, None, 'embed'))(rngs.params(), (1, 1, d),
                                                               param_dtype))
    if posemb == 'learn':
      self.pos_embed = nnx.Param(
          nnx.with_partitioning(init02, (None, None, 'embed'))(
              rngs.params(), (1, self.num_prefix + self.num_patches, d), param_dtype))
    self.transformer = Transformer(d, self.depth, self.num_heads, self.mlp_dim,
                                   drop_path=drop_path, remat=remat, dtype=dtype,
                                   param_dtype=param_dtype, attention_impl=attention_impl,
                                   rngs=rngs)

  # The blocks are reached as encoder.transformer.blocks; expose them for layer-decay code.
  @property
  def blocks(self):
    return self.transformer.blocks

  def _posemb(self):
    """(CLS posemb (1, 1, D) or None, patch posemb (1, P, D))."""
    if self.posemb_type == 'learn':
      pe = self.pos_embed[...]
      return (pe[:, :self.num_prefix] if self.num_prefix else None), pe[:, self.num_prefix:]
    # MAE: fixed sin-cos for patches; the CLS token's position embedding is zero.
    pe = jnp.asarray(sincos_2d_posemb(*self.grid_hw, self.width))[None]
    return None, pe

  def embed(self, images_BxHxWxC):
    """Patch tokens with position embedding, no CLS: (B, P, D)."""
    if images_BxHxWxC.ndim != 4 or images_BxHxWxC.shape[1:] != (*self.image_hw, self.channels):
      raise ValueError(
          f'ViT expects images of shape (B, {self.image_hw[0]}, {self.image_hw[1]}, '
          f'{self.channels}), got {images_BxHxWxC.shape}'
      )
    x_BxPxD = self.patch_embed(patchify(images_BxHxWxC, self.patch_size))
    _, pe_patch = self._posemb()
    return x_BxPxD + pe_patch.astype(x_BxPxD.dtype)

  def encode_tokens(self, x_BxPxD):
    """Prepends CLS (+ its posemb), runs the blocks and the final norm: (B, T, D)."""
    if self.use_cls_token:
      pe_prefix, _ = self._posemb()
      cls_1x1xD = self.cls_token[...]
      if pe_prefix is not None:
        cls_1x1xD = cls_1x1xD + pe_prefix
      cls_Bx1xD = jnp.broadcast_to(cls_1x1xD.astype(x_BxPxD.dtype),
                                   (x_BxPxD.shape[0], 1, self.width))
      x_BxPxD = jnp.concatenate([cls_Bx1xD, x_BxPxD], axis=1)
    return self.transformer(x_BxPxD)

  def pool(self, tokens_BxTxD):
    if self.pool_type == 'cls':
      return tokens_BxTxD[:, 0]
    return jnp.mean(tokens_BxTxD[:, self.num_prefix:].astype(jnp.float32), axis=1)

  def __call__(self, images_BxHxWxC):
    tokens_BxTxD = self.encode_tokens(self.embed(images_BxHxWxC))
    return tokens_BxTxD, self.pool(tokens_BxTxD)


class Model(nnx.Module):
  """ViT for VA regression: encoder -> pooled features -> Linear -> tanh.

  `__call__({'image': (B, H, W, 3) in [-1, 1]}) -> {'va': (B, 2), 'features': (B, D)}`.
  Encoder keyword arguments (variant, image_size, posemb, pool_type, ...) pass through.
  """

  def __init__(self, *, head_zero_init: bool = True, rngs: nnx.Rngs, **encoder_kwargs):
    self.encoder = Encoder(rngs=rngs, **encoder_kwargs)
    # Zero-initialised head (big_vision default): predictions start at 0, the VA mean prior.
    kinit = nnx.initializers.zeros_init() if head_zero_init else nnx.initializers.xavier_uniform()
    self.head = heads.VAHead(self.encoder.width, out_init=kinit, rngs=rngs,
                             param_dtype=as_dtype(encoder_kwargs.get('param_dtype', 'float32')))

  def features(self, batch: dict):
    """The pooled encoder output (B, D) that the head reads, after the final LayerNorm and with
    no patch masked: the CLS token with pool_type='cls', the mean patch token with 'gap'."""
    if 'image' not in batch:
      raise KeyError(f"vit.Model needs batch['image'] (B, H, W, 3); got keys {sorted(batch)}")
    _, features_BxD = self.encoder(batch['image'])
    return features_BxD.astype(jnp.float32)

  def __call__(self, batch: dict) -> dict:
    features_BxD = self.features(batch)
    return dict(self.head(features_BxD), features=features_BxD)
