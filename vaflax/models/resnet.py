"""ResNet-18/34/50 (He et al. 2016) in Flax NNX, torchvision block layout, NHWC.

Parameter counts equal torchvision's: ResNet-50 without its classifier has 23,508,032
parameters, ResNet-18 11,176,512. Bottlenecks put the stride on the 3x3 conv ("ResNet v1.5",
as torchvision does). BatchNorm uses torchvision's momentum 0.1 (= Flax momentum 0.9) and eps 1e-5.

`Model` is the VA regressor of the spine: backbone -> MLP head -> tanh-bounded (valence, arousal),
optionally with 20-bin logits per dimension (Deng et al. 2020) and a 4-way quadrant head.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from vaflax.models import cpu_conv, heads

# Blocks per stage. ResNet-10 (one basic block per stage) is the smallest: quick runs and tests.
STAGES = {10: ('basic', (1, 1, 1, 1)), 18: ('basic', (2, 2, 2, 2)), 34: ('basic', (3, 4, 6, 3)),
          50: ('bottleneck', (3, 4, 6, 3))}

# torchvision initialises convs with kaiming_normal(mode='fan_out', nonlinearity='relu').
_conv_init = nnx.with_partitioning(
    jax.nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'), (None, None, 'conv_in', 'conv_out'))


def _conv(cin, cout, k, stride, *, rngs, dtype):
  pad = (k - 1) // 2
  return nnx.Conv(cin, cout, (k, k), strides=stride, padding=((pad, pad), (pad, pad)),
                  use_bias=False, kernel_init=_conv_init, dtype=dtype, rngs=rngs)


def _bn(c, *, rngs, dtype, zero=False):
  return nnx.BatchNorm(c, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs,
                       scale_init=nnx.initializers.zeros if zero else nnx.initializers.ones)


# --- Stem max pool (3x3, stride 2, padding 1) with a cheap backward pass ---------------------------
# JAX differentiates a max reduce_window through a variadic reduce_window over (value, index)
# pairs; on XLA:CPU that made the pool's backward ~6x slower than this VJP and ~10 % of a ResNet-18
# train step (measured while writing it; the CPU comparison is in benchmarks/RESULTS.md). Same
# forward; the gradient of each output goes to the first maximum of its window in row-major
# order, as in JAX's own rule and torch's max_pool2d. Both directions are written as nine strided
# slices of the padded input: XLA:CPU runs that forward faster than its reduce_window, and the
# backward adds each tap's share into one of the four (row, column) parities of the input,
# which are interleaved once (benchmarks/RESULTS.md, "CPU: convolution backward").
_POOL_K, _POOL_S, _POOL_P = 3, 2, 1


def _pool_taps(x_BxHxWxC):
  """(padded input, taps): taps[i][j] (B, h, w, C) is the input at window offset (i, j) of every
  output position."""
  b, h, w, c = x_BxHxWxC.shape
  k, s, p = _POOL_K, _POOL_S, _POOL_P
  ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
  xp = jnp.pad(x_BxHxWxC, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=-jnp.inf)
  return [[lax.slice(xp, (0, i, j, 0), (b, i + s * (ho - 1) + 1, j + s * (wo - 1) + 1, c),
                     (1, s, s, 1)) for j in range(k)] for i in range(k)]


def _max_pool_fwd_only(x_BxHxWxC):
  taps = [t for row in _pool_taps(x_BxHxWxC) for t in row]
  y = taps[0]
  for t in taps[1:]:
    y = jnp.maximum(y, t)
  return y


@jax.custom_vjp
def stem_max_pool(x_BxHxWxC):
  return _max_pool_fwd_only(x_BxHxWxC)


def _stem_max_pool_fwd(x):
  y = _max_pool_fwd_only(x)
  return y, (x, y)


def _stem_max_pool_bwd(res, g_BxhxwxC):
  x, y = res
  b, h, w, c = x.shape
  _, ho, wo, _ = y.shape
  taps = _pool_taps(x)
  taken = jnp.zeros(y.shape, bool)
  share = {}  # (i, j) -> the gradient that window offset (i, j) receives, (B, ho, wo, C)
  for i in range(_POOL_K):
    for j in range(_POOL_K):
      hit = (taps[i][j] == y) & ~taken
      taken = taken | hit
      share[i, j] = jnp.where(hit, g_BxhxwxC, jnp.zeros_like(g_BxhxwxC))

  def at(i, j):  # offset (i, j) of output (oh, ow) is padded input (2 oh + i, 2 ow + j): parity
    # (i % 2, j % 2), cell (oh + i // 2, ow + j // 2) of a (ho + 1, wo + 1) grid of 2x2 cells.
    di, dj = i // 2, j // 2
    return jnp.pad(share[i, j], ((0, 0), (di, 1 - di), (dj, 1 - dj), (0, 0)))

  even_even = at(0, 0) + at(0, 2) + at(2, 0) + at(2, 2)
  even_odd = at(0, 1) + at(2, 1)
  odd_even = at(1, 0) + at(1, 2)
  odd_odd = at(1, 1)
  gxp = jnp.stack([jnp.stack([even_even, even_odd], 3), jnp.stack([odd_even, odd_odd], 3)], 2)
  gxp = gxp.reshape(b, 2 * ho + 2, 2 * wo + 2, c)
  p = _POOL_P
  return (gxp[:, p : p + h, p : p + w, :],)


stem_max_pool.defvjp(_stem_max_pool_fwd, _stem_max_pool_bwd)


def _shortcut(cin, cout, stride, *, rngs, dtype):
  """(1x1 conv, BN) projection of the residual when the shape changes (He et al. 2016, option
  B; torchvision's `downsample`), else (None, None): the identity."""
  if stride == 1 and cin == cout:
    return None, None
  return _conv(cin, cout, 1, stride, rngs=rngs, dtype=dtype), _bn(cout, rngs=rngs, dtype=dtype)


class BasicBlock(nnx.Module):
  expansion = 1

  def __init__(self, cin, width, stride, *, rngs, dtype, zero_init_residual):
    cout = width
    self.conv1 = _conv(cin, cout, 3, stride, rngs=rngs, dtype=dtype)
    self.bn1 = _bn(cout, rngs=rngs, dtype=dtype)
    self.conv2 = _conv(cout, cout, 3, 1, rngs=rngs, dtype=dtype)
    self.bn2 = _bn(cout, rngs=rngs, dtype=dtype, zero=zero_init_residual)
    self.down_conv, self.down_bn = _shortcut(cin, cout, stride, rngs=rngs, dtype=dtype)

  def __call__(self, x):
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    sc = x if self.down_conv is None else self.down_bn(self.down_conv(x))
    return nnx.relu(y + sc)


class Bottleneck(nnx.Module):
  expansion = 4

  def __init__(self, cin, width, stride, *, rngs, dtype, zero_init_residual):
    cout = width * self.expansion
    self.conv1 = _conv(cin, width, 1, 1, rngs=rngs, dtype=dtype)
    self.bn1 = _bn(width, rngs=rngs, dtype=dtype)
    self.conv2 = _conv(width, width, 3, stride, rngs=rngs, dtype=dtype)
    self.bn2 = _bn(width, rngs=rngs, dtype=dtype)
    self.conv3 = _conv(width, cout, 1, 1, rngs=rngs, dtype=dtype)
    self.bn3 = _bn(cout, rngs=rngs, dtype=dtype, zero=zero_init_residual)
    self.down_conv, self.down_bn = _shortcut(cin, cout, stride, rngs=rngs, dtype=dtype)

  def __call__(self, x):
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = nnx.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    sc = x if self.down_conv is None else self.down_bn(self.down_conv(x))
    return nnx.relu(y + sc)


def _set_conv_impl(module, conv_impl: str):
  """'xla': lax.conv_general_dilated; 'cpu': vaflax/models/cpu_conv.py (same forward, a backward
  pass that is faster on XLA:CPU); 'auto': 'cpu' when JAX's default backend is the CPU."""
  if conv_impl not in ('auto', 'xla', 'cpu'):
    raise ValueError(f"conv_impl must be 'auto', 'xla' or 'cpu', got {conv_impl!r}")
  if conv_impl == 'cpu' or (conv_impl == 'auto' and jax.default_backend() == 'cpu'):
    for _, m in nnx.iter_graph(module):
      if isinstance(m, nnx.Conv):
        m.conv_general_dilated = cpu_conv.conv_general_dilated


class ResNet(nnx.Module):
  """Backbone without classifier: images (B,H,W,3) -> pooled features (B, 512 or 2048)."""

  def __init__(self, depth: int = 18, *, width: int = 64, dtype=jnp.float32,
               zero_init_residual: bool = False, remat: bool = False, conv_impl: str = 'auto',
               rngs: nnx.Rngs):
    if depth not in STAGES:
      raise ValueError(f'ResNet depth must be one of {sorted(STAGES)}, got {depth}')
    kind, counts = STAGES[depth]
    block_cls = BasicBlock if kind == 'basic' else Bottleneck
    self.dtype = dtype
    self.remat = remat
    self.stem_conv = _conv(3, width, 7, 2, rngs=rngs, dtype=dtype)
    self.stem_bn = _bn(width, rngs=rngs, dtype=dtype)
    blocks = []
    cin = width
    for stage, n in enumerate(counts):
      w = width * 2**stage
      for i in range(n):
        stride = 2 if (i == 0 and stage > 0) else 1
        blocks.append(block_cls(cin, w, stride, rngs=rngs, dtype=dtype,
                                zero_init_residual=zero_init_residual))
        cin = w * block_cls.expansion
    self.blocks = nnx.List(blocks)
    self.num_features = cin
    _set_conv_impl(self, conv_impl)

  def __call__(self, x_BxHxWx3):
    x = x_BxHxWx3.astype(self.dtype)
    x = nnx.relu(self.stem_bn(self.stem_conv(x)))
    x = stem_max_pool(x)
    for blk in self.blocks:
      x = nnx.remat(lambda b, h: b(h))(blk, x) if self.remat else blk(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


class Model(nnx.Module):
  """ResNet + MLP head for valence/arousal (the CNN of Deng et al. 2020 with `num_bins`)."""

  def __init__(self, *, depth: int = 18, width: int = 64, head_hidden: int = 128,
               num_bins: int = 0, quadrant_head: bool = False, dropout: float = 0.0,
               dtype: str = 'float32', zero_init_residual: bool = False, remat: bool = False,
               conv_impl: str = 'auto', rngs: nnx.Rngs):
    dt = jnp.dtype(dtype)
    self.backbone = ResNet(depth, width=width, dtype=dt, zero_init_residual=zero_init_residual,
                           remat=remat, conv_impl=conv_impl, rngs=rngs)
    self.head = heads.VAHead(self.backbone.num_features, head_hidden, num_bins=num_bins,
                             quadrant_head=quadrant_head, dropout=dropout, rngs=rngs)

  def features(self, batch):
    """Global-average-pooled backbone features (B, D): the input of torchvision's `fc`."""
    return self.backbone(batch['image'])

  def __call__(self, batch):
    feats_BxD = self.features(batch)
    out = self.head(feats_BxD)
    out['features'] = feats_BxD
    return out

