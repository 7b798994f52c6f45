"""The BlazeFace full-range network (MediaPipe `face_detection_full_range_sparse.tflite`) in NNX.

The layers are the ones of the .tflite graph, op for op (vaflax/blazeface/convert.py checks the
match when it converts): every 3x3 convolution is depthwise, zero-padded by 1 on each side
(explicit PAD ops, so stride 2 sees one more column on the left than TF 'SAME' would), followed by
a 1x1 convolution; ReLU where the graph fuses one. Residual blocks add without channel padding
(the two 1x1 convolutions of a block return to its width). A feature pyramid (6 -> 12 -> 24 -> 48)
upsamples with half-pixel bilinear interpolation and adds 1x1 laterals; the heads are a 1x1
convolution, a stride-2 depthwise 3x3 and a depth-to-space by 2, which gives one anchor per cell
of the 48x48 grid (2304 anchors). BlazeFace: Bazarevsky et al. 2019, arXiv:1907.05047.

Input: (B, 192, 192, 3) float32 in [-1, 1]. Output: regressors (B, 2304, 16) (box centre, size
and 6 keypoints, in input pixels relative to the anchor) and score logits (B, 2304). The network
is fully convolutional: any side that is a multiple of 32 gives (side / 4)^2 anchors on the same
stride-4 grid (predict runs a 96 px copy for faces that fill the frame, vaflax/predict/detection.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

INPUT_SIDE = 192
STRIDE = 4  # input pixels per anchor cell
GRID = INPUT_SIDE // STRIDE  # anchors per side: one per cell of the stride-4 map
NUM_COORDS = 16  # box (4) + 6 keypoints x (x, y)
STEM = 32

# (input channels, bottleneck width of the down-sampling step, output channels, residual blocks
# (bottleneck: a quarter of the width), lateral 1x1 width) per backbone resolution, 96 -> 6.
STAGES = (
    (STEM, None, STEM, 2, None),  # 96 x 96: no down-sampling step, no lateral
    (STEM, 16, 64, 2, 48),  # 48 x 48
    (64, 32, 128, 2, 64),  # 24 x 24
    (128, 48, 192, 2, 96),  # 12 x 12
    (192, 96, 384, 3, 96),  # 6 x 6: its lateral is the top of the pyramid
)
# (width, residual blocks (bottleneck: half the width), output 1x1 width or None) per top-down
# resolution, 12 -> 48.
TOP_DOWN = ((96, 2, 64), (64, 2, 48), (48, 1, None))
HEADS = (('classifier', 4), ('regressor', 4 * NUM_COORDS))  # 1x1 width before depth-to-space


class Conv1x1(nnx.Module):
  """1x1 convolution as a matrix product (kernel (1, 1, I, O): nnx.Conv's layout)."""

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
    init = nnx.initializers.lecun_normal()
    self.kernel = nnx.Param(init(rngs.params(), (1, 1, cin, cout)))
    self.bias = nnx.Param(jnp.zeros((cout,)))

  def __call__(self, x_BxHxWxC):
    return x_BxHxWxC @ self.kernel[0, 0] + self.bias[...]


class Depthwise3x3(nnx.Module):
  """Depthwise 3x3, zero padding 1 on every side, stride 1 or 2 (kernel (3, 3, 1, C)).

  Nine shifted multiply-adds: XLA's CPU backend runs a grouped convolution ~6x slower."""

  def __init__(self, channels: int, stride: int, *, rngs: nnx.Rngs):
    init = nnx.initializers.lecun_normal()
    self.kernel = nnx.Param(init(rngs.params(), (3, 3, 1, channels)))
    self.bias = nnx.Param(jnp.zeros((channels,)))
    self.stride = stride

  def __call__(self, x_BxHxWxC):
    _, h, w, _ = x_BxHxWxC.shape
    s = self.stride
    ho, wo = (h - 1) // s + 1, (w - 1) // s + 1
    xp = jnp.pad(x_BxHxWxC, ((0, 0), (1, 1), (1, 1), (0, 0)))
    k = self.kernel[...]
    y = self.bias[...]
    for i in range(3):
      for j in range(3):
        y = y + xp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :] * k[i, j, 0]
    return y


class SepConv(nnx.Module):
  """Depthwise 3x3 (padded by 1) then 1x1, ReLU after the 1x1 if `relu`."""

  def __init__(self, cin: int, cout: int, stride: int, relu: bool, *, rngs: nnx.Rngs):
    self.dw = Depthwise3x3(cin, stride, rngs=rngs)
    self.pw = Conv1x1(cin, cout, rngs=rngs)
    self.relu = relu

  def __call__(self, x_BxHxWxC):
    y = self.pw(self.dw(x_BxHxWxC))
    return jax.nn.relu(y) if self.relu else y


class Residual(nnx.Module):
  """relu(x + SepConv(no relu)(SepConv(relu)(x))) through a bottleneck of width // `squeeze`."""

  def __init__(self, width: int, squeeze: int, *, rngs: nnx.Rngs):
    self.a = SepConv(width, width // squeeze, 1, True, rngs=rngs)
    self.b = SepConv(width // squeeze, width, 1, False, rngs=rngs)

  def __call__(self, x_BxHxWxC):
    return jax.nn.relu(x_BxHxWxC + self.b(self.a(x_BxHxWxC)))


class Stage(nnx.Module):
  def __init__(self, cin, mid, cout, blocks, lateral, *, rngs: nnx.Rngs):
    self.down = (nnx.List([SepConv(cin, mid, 2, True, rngs=rngs),
                           SepConv(mid, cout, 1, True, rngs=rngs)]) if mid else None)
    self.blocks = nnx.List([Residual(cout, 4, rngs=rngs) for _ in range(blocks)])
    self.lateral = Conv1x1(cout, lateral, rngs=rngs) if lateral else None

  def __call__(self, x_BxHxWxC):
    for layer in (self.down or []):
      x_BxHxWxC = layer(x_BxHxWxC)
    for block in self.blocks:
      x_BxHxWxC = block(x_BxHxWxC)
    lat = jax.nn.relu(self.lateral(x_BxHxWxC)) if self.lateral is not None else None
    return x_BxHxWxC, lat


def upsample2(x_BxhxwxC):
  """x2 bilinear with half-pixel centres and clamped edges (TFLite RESIZE_BILINEAR,
  half_pixel_centers=True): output 2i blends rows i-1 and i by 1:3, output 2i+1 rows i and i+1."""
  def along(x, axis):
    n = x.shape[axis]
    prev = jnp.take(x, jnp.clip(jnp.arange(n) - 1, 0, n - 1), axis=axis)
    nxt = jnp.take(x, jnp.clip(jnp.arange(n) + 1, 0, n - 1), axis=axis)
    even, odd = 0.25 * prev + 0.75 * x, 0.75 * x + 0.25 * nxt
    y = jnp.stack([even, odd], axis=axis + 1)
    return y.reshape(x.shape[:axis] + (2 * n,) + x.shape[axis + 1:])
  return along(along(x_BxhxwxC, 1), 2)


def depth_to_space2(x_BxhxwxC):
  """TFLite DEPTH_TO_SPACE (block 2): channel (i * 2 + j) * C' + c goes to pixel (2y + i, 2x + j)."""
  b, h, w, c = x_BxhxwxC.shape
  x = x_BxhxwxC.reshape(b, h, w, 2, 2, c // 4)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, c // 4)


class Head(nnx.Module):
  def __init__(self, cin, width, *, rngs: nnx.Rngs):
    self.pw = Conv1x1(cin, width, rngs=rngs)
    self.dw = Depthwise3x3(width, 2, rngs=rngs)

  def __call__(self, x_BxHxWxC):
    return depth_to_space2(self.dw(self.pw(x_BxHxWxC)))


class BlazeFaceFullRange(nnx.Module):
  def __init__(self, *, rngs: nnx.Rngs):
    # A full 3x3 convolution (3 -> 32 channels, stride 2, zero padding 1).
    self.stem = nnx.Conv(3, STEM, (3, 3), strides=2, padding=((1, 1), (1, 1)), rngs=rngs)
    self.stages = nnx.List([Stage(*s, rngs=rngs) for s in STAGES])
    self.top_down = nnx.List()
    for width, blocks, out in TOP_DOWN:
      self.top_down.append(nnx.List([Residual(width, 2, rngs=rngs) for _ in range(blocks)]
                                    + ([Conv1x1(width, out, rngs=rngs)] if out else [])))
    self.classifier = Head(TOP_DOWN[-1][0], HEADS[0][1], rngs=rngs)
    self.regressor = Head(TOP_DOWN[-1][0], HEADS[1][1], rngs=rngs)

  def __call__(self, x_BxHxWx3):
    """(regressors (B, A, 16), score logits (B, A)) of a [-1, 1] (B, S, S, 3) input, S a multiple
    of 32 (192: MediaPipe's size), A = (S / 4)^2 anchors (2304 at 192)."""
    x = jax.nn.relu(self.stem(x_BxHxWx3))
    laterals = []
    for stage in self.stages:
      x, lat = stage(x)
      laterals.append(lat)
    x = laterals.pop()  # the top of the pyramid, 6 x 6
    for layers in self.top_down:
      x = upsample2(x) + laterals.pop()
      for layer in layers:
        x = layer(x) if isinstance(layer, Residual) else jax.nn.relu(layer(x))
    b = x.shape[0]
    logits_BxA = self.classifier(x).reshape(b, -1)
    reg_BxAx16 = self.regressor(x).reshape(b, -1, NUM_COORDS)
    return reg_BxAx16, logits_BxA


def graph_order() -> list[tuple[str, str, int]]:
  """(parameter path, 'conv' | 'dw', stride) of every convolution in the order the .tflite graph
  runs them; the converter zips this with the graph's CONV_2D / DEPTHWISE_CONV_2D ops."""
  out = [('stem', 'conv', 2)]

  def sep(p, stride=1):
    out.extend([(f'{p}/dw', 'dw', stride), (f'{p}/pw', 'conv', 1)])

  for i, (_, mid, _, blocks, lateral) in enumerate(STAGES):
    if mid:
      sep(f'stages/{i}/down/0', 2)
      sep(f'stages/{i}/down/1')
    for j in range(blocks):
      sep(f'stages/{i}/blocks/{j}/a')
      sep(f'stages/{i}/blocks/{j}/b')
    if lateral:
      out.append((f'stages/{i}/lateral', 'conv', 1))
  for i, (_, blocks, conv) in enumerate(TOP_DOWN):
    for j in range(blocks):
      sep(f'top_down/{i}/{j}/a')
      sep(f'top_down/{i}/{j}/b')
    if conv:
      out.append((f'top_down/{i}/{blocks}', 'conv', 1))
  for name, _ in HEADS:
    out.extend([(f'{name}/pw', 'conv', 1), (f'{name}/dw', 'dw', 2)])
  return out
