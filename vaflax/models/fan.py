"""EmoFAN (Toisoul et al. 2021): a Face Alignment Network with an emotion head, in Flax NNX, NHWC.

FAN (Bulat & Tzimiropoulos 2017, "How far are we from solving the 2D & 3D face alignment
problem?"): a stem that brings a face crop to 1/4 resolution, then `num_stacks` stacked hourglasses
(Newell et al. 2016) built from the hierarchical, parallel, multi-scale block of Bulat &
Tzimiropoulos 2017 ("Binarized convolutional landmark localizers ..."), each predicting
`num_landmarks` heatmaps, with the heatmaps and features of one stack re-injected into the next
(intermediate supervision). The emotion head of EmoNet reads the features of the last stack
multiplied by the sum of its heatmaps (a spatial attention on the face parts), together with the
stem features and the heatmaps, and regresses tanh-bounded valence/arousal and, optionally,
discrete emotion logits.

Sizes (XLA cost analysis of the forward pass, one image, a multiply-add = 2 FLOPs):
- EmoNet: width 256, 2 stacks (its released models; the FAN paper uses 4), depth 4, 256 px,
  head_width 256, 4 head blocks: 14.7M params (FAN 12.1M), 39 GFLOPs. 4 stacks: 26.4M
  (FAN 23.8M, as the 2D-FAN), 61 GFLOPs.
- runlocal: width 32, 1 stack, depth 2, 64 px, head_width 32, 2 head blocks: 0.10M params
  (FAN 64k), 34 MFLOPs; a jitted Adam step at batch 32 takes ~0.23 s on 2 busy CPU cores.

Landmarks are (x, y) in [0, 1] relative to the crop; a heatmap pixel (i, j) (row, column) has its
centre at ((j + 0.5) / w, (i + 0.5) / h), so a horizontal mirror maps x -> 1 - x exactly.
"""

from __future__ import annotations

import einops
import jax
import jax.numpy as jnp
from flax import nnx

# The one iBUG-68 mirror permutation of the project (also used by the flip_lr op); re-exported.
from vaflax.faces import IBUG68_FLIP, flip_landmarks  # noqa: F401
from vaflax.models import heads

# Outer eye corners of the iBUG-68 markup: the inter-ocular normaliser of the 300-W NME.
LEFT_EYE_OUTER, RIGHT_EYE_OUTER = 36, 45

# He init for the ReLU convs; LeCun for the linear 1x1 maps and dense layers. Plain (not
# truncated) normals: the truncated sampler costs ~1 s of XLA compile per kernel shape on CPU.
_he = jax.nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
_lecun = jax.nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')
_conv_init = nnx.with_partitioning(_he, (None, None, 'conv_in', 'conv_out'))
_conv1x1_init = nnx.with_partitioning(_lecun, (None, None, 'conv_in', 'conv_out'))


# --- Landmark utilities -------------------------------------------------------------------------


def flip_heatmaps(heatmaps_BxhxwxL):
  """Heatmaps of a mirrored image -> heatmaps of the original (mirror columns, swap indices)."""
  if heatmaps_BxhxwxL.shape[-1] != 68:
    raise ValueError(f'flip_heatmaps needs 68 iBUG-68 channels, got {heatmaps_BxhxwxL.shape}')
  return heatmaps_BxhxwxL[..., :, ::-1, :][..., IBUG68_FLIP]


def landmarks_to_heatmaps(landmarks_BxLx2, size, sigma: float = 1.0):
  """Gaussian heatmap targets `(B, h, w, L)` with peak 1 at each landmark.

  `size` is h (square) or (h, w); `sigma` is in heatmap pixels (FAN trains at 64x64 with ~1).
  """
  h, w = (size, size) if isinstance(size, int) else size
  lm = jnp.asarray(landmarks_BxLx2, jnp.float32)
  u_BxL = lm[..., 0] * w - 0.5  # column coordinate, pixel centres at integers
  v_BxL = lm[..., 1] * h - 0.5
  cols = jnp.arange(w, dtype=jnp.float32)
  rows = jnp.arange(h, dtype=jnp.float32)
  gx_BxLxw = jnp.exp(-((cols - u_BxL[..., None]) ** 2) / (2.0 * sigma**2))
  gy_BxLxh = jnp.exp(-((rows - v_BxL[..., None]) ** 2) / (2.0 * sigma**2))
  return jnp.einsum('...lh,...lw->...hwl', gy_BxLxh, gx_BxLxw)  # separable gaussian


def heatmaps_to_landmarks(heatmaps_BxhxwxL, *, refine: bool = True, radius: int = 2):
  """Landmarks `(B, L, 2)` in [0, 1] from heatmaps: argmax, then (with `refine`) the mean of the
  pixel positions weighted by the positive heatmap values in a (2r+1)^2 window around it (a local
  soft-argmax that recovers sub-pixel positions that the plain argmax rounds off)."""
  hm = jnp.asarray(heatmaps_BxhxwxL, jnp.float32)
  h, w = hm.shape[-3], hm.shape[-2]
  flat_BxLxhw = einops.rearrange(hm, '... h w l -> ... l (h w)')
  idx_BxL = jnp.argmax(flat_BxLxhw, axis=-1)
  iy = (idx_BxL // w).astype(jnp.float32)
  ix = (idx_BxL % w).astype(jnp.float32)
  if refine and radius > 0:
    offs = jnp.arange(-radius, radius + 1)
    yy_BxLxJx1 = (idx_BxL // w)[..., None, None] + offs[:, None]
    xx_BxLx1xJ = (idx_BxL % w)[..., None, None] + offs[None, :]
    # A window cut by the border would pull the estimate inwards: shrink it per axis to the
    # largest one centred on the argmax that fits (on the border itself: the argmax alone).
    rad_y = jnp.minimum(idx_BxL // w, h - 1 - idx_BxL // w)[..., None, None]
    rad_x = jnp.minimum(idx_BxL % w, w - 1 - idx_BxL % w)[..., None, None]
    inside = (jnp.abs(offs)[:, None] <= rad_y) & (jnp.abs(offs)[None, :] <= rad_x)
    yy, xx = jnp.broadcast_arrays(jnp.clip(yy_BxLxJx1, 0, h - 1), jnp.clip(xx_BxLx1xJ, 0, w - 1))
    k = 2 * radius + 1
    gather = (yy * w + xx).reshape(idx_BxL.shape + (k * k,))
    vals = jnp.take_along_axis(flat_BxLxhw, gather, axis=-1)
    wts = jnp.where(inside.reshape(gather.shape), jnp.maximum(vals, 0.0), 0.0)
    tot = jnp.sum(wts, axis=-1)
    ok = tot > 0  # all-nonpositive window: keep the argmax
    safe = jnp.where(ok, tot, 1.0)
    ry = jnp.sum(wts * yy.reshape(gather.shape), axis=-1) / safe
    rx = jnp.sum(wts * xx.reshape(gather.shape), axis=-1) / safe
    iy = jnp.where(ok, ry, iy)
    ix = jnp.where(ok, rx, ix)
  return jnp.stack([(ix + 0.5) / w, (iy + 0.5) / h], axis=-1)


def normalised_mean_error(pred_BxLx2, target_BxLx2, mask_B=None, *, per_example: bool = False):
  """Mean point-to-point error over the L landmarks divided by the outer inter-ocular distance
  (iBUG-68 points 36 and 45, the 300-W protocol), averaged over the valid examples.

  Masked examples may hold NaN targets: they are replaced before any arithmetic.
  """
  p = jnp.asarray(pred_BxLx2, jnp.float32)
  t = jnp.asarray(target_BxLx2, jnp.float32)
  if t.shape[-2] != 68:
    raise ValueError(f'normalised_mean_error needs iBUG-68 targets (B, 68, 2), got {t.shape}')
  m = jnp.ones(t.shape[:-2], jnp.float32) if mask_B is None else jnp.asarray(mask_B, jnp.float32)
  valid = (m > 0)[..., None, None]
  p = jnp.where(valid, p, 0.0)
  t = jnp.where(valid, t, 0.0)
  iod = jnp.linalg.norm(t[..., LEFT_EYE_OUTER, :] - t[..., RIGHT_EYE_OUTER, :], axis=-1)
  d2 = jnp.sum((p - t) ** 2, axis=-1)
  # Double-where: an exact hit has distance 0 without the infinite derivative of sqrt at 0.
  err = jnp.mean(jnp.where(d2 > 0, jnp.sqrt(jnp.where(d2 > 0, d2, 1.0)), 0.0), axis=-1)
  nme_B = err / jnp.maximum(iod, 1e-6)
  if per_example:
    return nme_B
  return jnp.sum(jnp.where(m > 0, nme_B * m, 0.0)) / jnp.maximum(jnp.sum(m), 1e-12)


# --- Building blocks ----------------------------------------------------------------------------


def _bn(c, *, rngs, dtype):
  # PyTorch defaults (momentum 0.1 = Flax 0.9, eps 1e-5), as in the released FAN/EmoNet.
  return nnx.BatchNorm(c, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)


def _conv(cin, cout, k, *, stride=1, use_bias=False, rngs, dtype):
  pad = (k - 1) // 2
  return nnx.Conv(cin, cout, (k, k), strides=stride, padding=((pad, pad), (pad, pad)),
                  use_bias=use_bias, kernel_init=_conv_init if k > 1 else _conv1x1_init,
                  dtype=dtype, rngs=rngs)


class ConvBlock(nnx.Module):
  """Hierarchical, parallel, multi-scale block (Bulat & Tzimiropoulos 2017, Fig. 2).

  Three pre-activated (BN-ReLU) 3x3 convs with C/2, C/4 and C/4 output channels, each reading the
  previous one, concatenated to C channels: receptive fields 3, 5 and 7 at the cost of one
  bottleneck. Residual connection, through a pre-activated 1x1 projection when channels differ.
  """

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs, dtype):
    if cout % 4:
      raise ValueError(f'ConvBlock output channels must be divisible by 4, got {cout}')
    self.bn1 = _bn(cin, rngs=rngs, dtype=dtype)
    self.conv1 = _conv(cin, cout // 2, 3, rngs=rngs, dtype=dtype)
    self.bn2 = _bn(cout // 2, rngs=rngs, dtype=dtype)
    self.conv2 = _conv(cout // 2, cout // 4, 3, rngs=rngs, dtype=dtype)
    self.bn3 = _bn(cout // 4, rngs=rngs, dtype=dtype)
    self.conv3 = _conv(cout // 4, cout // 4, 3, rngs=rngs, dtype=dtype)
    if cin != cout:
      self.proj_bn = _bn(cin, rngs=rngs, dtype=dtype)
      self.proj = _conv(cin, cout, 1, rngs=rngs, dtype=dtype)
    else:
      self.proj_bn = self.proj = None

  def __call__(self, x_BxHxWxC):
    y1 = self.conv1(nnx.relu(self.bn1(x_BxHxWxC)))
    y2 = self.conv2(nnx.relu(self.bn2(y1)))
    y3 = self.conv3(nnx.relu(self.bn3(y2)))
    y = jnp.concatenate([y1, y2, y3], axis=-1)
    sc = x_BxHxWxC if self.proj is None else self.proj(nnx.relu(self.proj_bn(x_BxHxWxC)))
    return y + sc


POOLS = ('avg', 'max')


def _pool2(x, pool: str):
  # FAN halves the resolution with 2x2 pooling: max in the released EmoNet and the face-alignment
  # package before 1.3 (as Newell et al.), average in face-alignment 1.3+ and vaflax's own models.
  # window_shape by keyword: jax2onnx (vaflax.export) replaces these functions with ones that
  # take it by keyword only.
  if pool == 'max':
    return nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))
  return nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))


class Hourglass(nnx.Module):
  """Recursive hourglass of `depth` levels: a full-resolution skip branch plus a pooled branch
  that recurses and is upsampled (nearest) back and added."""

  def __init__(self, depth: int, c: int, *, pool: str, rngs: nnx.Rngs, dtype):
    self.pool = pool
    self.up = ConvBlock(c, c, rngs=rngs, dtype=dtype)
    self.low1 = ConvBlock(c, c, rngs=rngs, dtype=dtype)
    self.inner = (Hourglass(depth - 1, c, pool=pool, rngs=rngs, dtype=dtype) if depth > 1
                  else ConvBlock(c, c, rngs=rngs, dtype=dtype))
    self.low3 = ConvBlock(c, c, rngs=rngs, dtype=dtype)

  def __call__(self, x_BxHxWxC):
    up = self.up(x_BxHxWxC)
    low = self.low3(self.inner(self.low1(_pool2(x_BxHxWxC, self.pool))))
    return up + einops.repeat(low, 'b h w c -> b (h 2) (w 2) c')


class FAN(nnx.Module):
  """Stem + stacked hourglasses: image (B,H,W,3) -> stem features, the features of each stack
  (remapped for the next stack, except the last: what EmoNet's head reads) and the per-stack
  heatmaps, all at (H/4, W/4)."""

  def __init__(self, *, num_stacks: int, depth: int, width: int, num_landmarks: int,
               pool: str = 'avg', remat: bool = False, rngs: nnx.Rngs, dtype):
    if width % 8:  # the stem's width/2 block splits its channels in quarters
      raise ValueError(f'FAN width must be divisible by 8, got {width}')
    if pool not in POOLS:
      raise ValueError(f'FAN pool must be one of {POOLS}, got {pool!r}')
    self.depth = depth
    self.pool = pool
    self.remat = remat
    self.dtype = dtype
    # FAN stem for width 256: 7x7/2 conv to 64, blocks 64->128, pool, 128->128, 128->256.
    self.stem_conv = _conv(3, width // 4, 7, stride=2, use_bias=True, rngs=rngs, dtype=dtype)
    self.stem_bn = _bn(width // 4, rngs=rngs, dtype=dtype)
    self.stem2 = ConvBlock(width // 4, width // 2, rngs=rngs, dtype=dtype)
    self.stem3 = ConvBlock(width // 2, width // 2, rngs=rngs, dtype=dtype)
    self.stem4 = ConvBlock(width // 2, width, rngs=rngs, dtype=dtype)
    mk = lambda f: nnx.List([f() for _ in range(num_stacks)])
    self.hourglass = mk(lambda: Hourglass(depth, width, pool=pool, rngs=rngs, dtype=dtype))
    self.top = mk(lambda: ConvBlock(width, width, rngs=rngs, dtype=dtype))
    self.last_conv = mk(lambda: _conv(width, width, 1, use_bias=True, rngs=rngs, dtype=dtype))
    self.last_bn = mk(lambda: _bn(width, rngs=rngs, dtype=dtype))
    self.heatmap = mk(lambda: _conv(width, num_landmarks, 1, use_bias=True, rngs=rngs,
                                    dtype=dtype))
    # Remapping into the next stack (Newell et al. 2016, Fig. 4): features and heatmaps -> width.
    self.remap_feat = nnx.List([_conv(width, width, 1, use_bias=True, rngs=rngs, dtype=dtype)
                                for _ in range(num_stacks - 1)])
    self.remap_hm = nnx.List([_conv(num_landmarks, width, 1, use_bias=True, rngs=rngs, dtype=dtype)
                              for _ in range(num_stacks - 1)])

  def __call__(self, x_BxHxWx3):
    _, h, w, _ = x_BxHxWx3.shape
    unit = 4 * 2**self.depth
    if h % unit or w % unit:
      raise ValueError(f'FAN with hourglass depth {self.depth} needs image sides divisible by '
                       f'{unit}, got {h}x{w}')
    x = nnx.relu(self.stem_bn(self.stem_conv(x_BxHxWx3.astype(self.dtype))))
    x = _pool2(self.stem2(x), self.pool)
    stem_BxhxwxC = self.stem4(self.stem3(x))
    prev = stem_BxhxwxC
    heatmaps, stack_feats = [], []
    for i in range(len(self.hourglass)):
      # remat: each hourglass recomputed in the backward pass (~1/3 more compute, the largest
      # activations of the model not kept).
      hg = (nnx.remat(lambda m, x: m(x))(self.hourglass[i], prev) if self.remat
            else self.hourglass[i](prev))
      f = self.top[i](hg)
      feats = nnx.relu(self.last_bn[i](self.last_conv[i](f)))
      hm_BxhxwxL = self.heatmap[i](feats)
      heatmaps.append(hm_BxhxwxL)
      if i < len(self.hourglass) - 1:
        feats = self.remap_feat[i](feats)
        prev = prev + feats + self.remap_hm[i](hm_BxhxwxL)
      stack_feats.append(feats)
    return stem_BxhxwxC, stack_feats, heatmaps


HEADS = ('vaflax', 'emonet')


class Model(nnx.Module):
  """EmoFAN: FAN landmarks + attention-weighted emotion head -> valence/arousal (+ emotions).

  Returns `va` (B,2), `heatmaps` (B,H/4,W/4,L) of the last stack, `heatmaps_all`
  (S,B,H/4,W/4,L) of every stack, and `emotion_logits` (B,E) when `num_emotions > 0`.
  EmoNet's second training stage freezes the FAN (config.frozen = 'fan(/|$)', vaflax/optim.py):
  a fixed landmark extractor, no gradient, running BatchNorm statistics.
  `detach_heatmaps` (default) lets only the landmark loss shape the heatmaps: the emotion head
  reads them (attention and input) without passing gradients back; the FAN features still get
  the emotion head's gradients unless the FAN is frozen.

  Two emotion heads (`head`), both reading the summed last-stack heatmaps as attention:
  - 'emonet', the released EmoNet exactly (face-analysis/emonet, `attention=True`): the stem
    features and the attended features of *every* stack (for all but the last, after the
    remapping 1x1 conv) -> a 1x1 conv with bias to `head_width` -> `head_blocks` x (ConvBlock,
    2x2 max pool) -> mean over the map (EmoNet's AvgPool2d(4) on its 4x4 map at 256 px) ->
    Linear, BatchNorm1d, ReLU, Linear. `va` is the raw regression (EmoNet has no tanh).
    With `pool='max'` this is the released architecture (vaflax/convert/emonet.py).
  - 'vaflax' (default, vaflax's own variant): stem, attended last-stack features and the heatmaps
    themselves -> a ConvBlock -> blocks as above -> BN-ReLU -> mean -> tanh-bounded `va`.
  """

  def __init__(self, *, num_stacks: int = 2, hourglass_depth: int = 4, width: int = 256,
               num_landmarks: int = 68, num_emotions: int = 0, head_width: int = 256,
               head_blocks: int = 4, detach_heatmaps: bool = True, pool: str = 'avg',
               head: str = 'vaflax', remat: bool = False, dtype: str = 'float32',
               rngs: nnx.Rngs):
    if num_stacks < 1 or hourglass_depth < 1:
      raise ValueError(f'num_stacks and hourglass_depth must be >= 1, got {num_stacks}, '
                       f'{hourglass_depth}')
    if head not in HEADS:
      raise ValueError(f'fan.Model head must be one of {HEADS}, got {head!r}')
    dt = jnp.dtype(dtype)
    self.dtype = dt
    self.detach_heatmaps = detach_heatmaps
    self.num_landmarks = num_landmarks
    self.head_kind = head
    self.fan = FAN(num_stacks=num_stacks, depth=hourglass_depth, width=width,
                   num_landmarks=num_landmarks, pool=pool, remat=remat, rngs=rngs, dtype=dt)
    if head == 'emonet':
      self.head_in = _conv((num_stacks + 1) * width, head_width, 1, use_bias=True, rngs=rngs,
                           dtype=dt)
      self.head_bn = None
    else:
      self.head_in = ConvBlock(2 * width + num_landmarks, head_width, rngs=rngs, dtype=dt)
      self.head_bn = _bn(head_width, rngs=rngs, dtype=dt)
    # Blocks that each halve the resolution (4 blocks: 64x64 -> 4x4 for a 256 px input).
    self.head_blocks = nnx.List([ConvBlock(head_width, head_width, rngs=rngs, dtype=dt)
                                 for _ in range(head_blocks)])
    # EmoNet's emo_fc_2: Linear -> BatchNorm1d -> ReLU -> Linear to VA and the emotion logits.
    self.head = heads.VAHead(head_width, head_width // 2, num_emotions=num_emotions,
                             hidden_norm=True, dropout=None, kernel_init=_lecun, out_init=_lecun,
                             bounded=head != 'emonet', rngs=rngs)

  def __call__(self, batch):
    if 'image' not in batch:
      raise KeyError(f'fan.Model needs batch["image"] (B,H,W,3); got keys {sorted(batch)}')
    img = batch['image']
    if img.ndim != 4 or img.shape[-1] != 3:
      raise ValueError(f'fan.Model: batch["image"] must be (B,H,W,3), got {img.shape}')
    stem, stack_feats, heatmaps = self.fan(img)
    hm_BxhxwxL = heatmaps[-1]
    if self.detach_heatmaps:
      # EmoNet's FAN is frozen, so its attention is always the landmark heatmaps. Trained jointly,
      # the VA loss would reshape them into a free attention map and undo the landmark fit.
      hm_BxhxwxL = jax.lax.stop_gradient(hm_BxhxwxL)
    # Attention (Toisoul et al. 2021): the summed landmark heatmaps weight the face features.
    attn_Bxhxwx1 = jnp.sum(hm_BxhxwxL, axis=-1, keepdims=True)
    if self.head_kind == 'emonet':
      x = jnp.concatenate([stem] + [f * attn_Bxhxwx1 for f in stack_feats], axis=-1)
    else:
      x = jnp.concatenate([stem, stack_feats[-1] * attn_Bxhxwx1, hm_BxhxwxL], axis=-1)
    x = self.head_in(x)
    for blk in self.head_blocks:
      # SAME padding keeps a 1x1 map at 1x1, so tiny inputs accept any number of blocks; on
      # even sides (EmoNet's 64 -> 4) it is PyTorch's MaxPool2d(2, 2).
      x = nnx.max_pool(blk(x), window_shape=(2, 2), strides=(2, 2), padding='SAME')
    if self.head_bn is not None:
      x = nnx.relu(self.head_bn(x))
    pooled_BxC = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return dict(self.head(pooled_BxC), heatmaps=hm_BxhxwxL.astype(jnp.float32),
                heatmaps_all=jnp.stack(heatmaps).astype(jnp.float32), features=pooled_BxC)
