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

STAGES = {18: ('basic', (2, 2, 2, 2)), 34: ('basic', (3, 4, 6, 3)), 50: ('bottleneck', (3, 4, 6, 3))}

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
# forward; the gradient of each output goes to the first
# maximum of its window in row-major order, as in JAX's own rule and torch's max_pool2d.
_POOL_K, _POOL_S, _POOL_P = 3, 2, 1


def _max_pool_fwd_only(x_BxHxWxC):
  return nnx.max_pool(x_BxHxWxC, (_POOL_K, _POOL_K), strides=(_POOL_S, _POOL_S),
                      padding=((_POOL_P, _POOL_P), (_POOL_P, _POOL_P)))


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
  k, s, p = _POOL_K, _POOL_S, _POOL_P
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=-jnp.inf)
  hp, wp = h + 2 * p, w + 2 * p
  taken = jnp.zeros(y.shape, bool)
  gxp = jnp.zeros(xp.shape, g_BxhxwxC.dtype)
  for i in range(k):
    for j in range(k):
      # The input pixel at window offset (i, j) of every output position.
      hi, wj = i + s * (ho - 1) + 1, j + s * (wo - 1) + 1
      tap = lax.slice(xp, (0, i, j, 0), (b, hi, wj, c), (1, s, s, 1))
      hit = (tap == y) & ~taken
      taken = taken | hit
      gtap = jnp.where(hit, g_BxhxwxC, jnp.zeros_like(g_BxhxwxC))
      # Scatter back: interior padding s-1 puts output (oh, ow) at input (i + s*oh, j + s*ow).
      gxp = gxp + lax.pad(gtap, jnp.zeros((), gtap.dtype),
                          ((0, 0, 0), (i, hp - hi, s - 1), (j, wp - wj, s - 1), (0, 0, 0)))
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

