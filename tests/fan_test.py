"""Tests for vaflax/models/fan.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vaflax import faces
from vaflax.models import count_params, fan

TINY = dict(num_stacks=2, hourglass_depth=1, width=16, head_width=16, head_blocks=1)


def _model(**kw):
  # The 'rbg' generator compiles ~3x faster than threefry: eager init is mostly XLA compiles.
  return fan.Model(**(TINY | kw), rngs=nnx.Rngs(jax.random.key(0, impl='rbg')))


def _np(v):
  return np.asarray(v[...], np.float64)


@pytest.mark.slow
def test_output_shapes():
  m = _model(num_emotions=7)
  x = jax.random.uniform(jax.random.key(0), (3, 32, 24, 3), minval=-1, maxval=1)
  out = nnx.jit(lambda mm, b: mm(b))(m, {'image': x})
  assert out['va'].shape == (3, 2)
  assert out['heatmaps'].shape == (3, 8, 6, 68)
  assert out['heatmaps_all'].shape == (2, 3, 8, 6, 68)
  np.testing.assert_array_equal(out['heatmaps_all'][-1], out['heatmaps'])
  assert out['emotion_logits'].shape == (3, 7)
  assert np.all(np.abs(out['va']) <= 1.0)
  assert 'emotion_logits' not in nnx.eval_shape(lambda: _model()({'image': x}))


def test_bad_image_size_names_the_constraint():
  with pytest.raises(ValueError, match='divisible by 16'):
    nnx.eval_shape(lambda: _model(hourglass_depth=2)({'image': jnp.zeros((1, 40, 40, 3))}))


def test_conv_block_matches_numpy():
  """The multi-scale block: three chained pre-activated 3x3 convs (C/2, C/4, C/4), concatenated,
  plus a pre-activated 1x1 projection of the input (eval-mode BatchNorm with random statistics)."""
  blk = fan.ConvBlock(4, 8, rngs=nnx.Rngs(1), dtype=jnp.float32)
  rs = np.random.RandomState(0)
  for bn in (blk.bn1, blk.bn2, blk.bn3, blk.proj_bn):
    for v in (bn.scale, bn.bias, bn.mean):
      v[...] = jnp.asarray(rs.randn(*v.shape), jnp.float32)
    bn.var[...] = jnp.asarray(rs.rand(*bn.var.shape) + 0.5, jnp.float32)
  blk.eval()
  x = rs.randn(2, 5, 6, 4)

  def bn_relu(y, bn):
    y = (y - _np(bn.mean)) / np.sqrt(_np(bn.var) + 1e-5) * _np(bn.scale) + _np(bn.bias)
    return np.maximum(y, 0)

  def conv(y, c):
    k = _np(c.kernel)
    kh = k.shape[0]
    p = (kh - 1) // 2
    yp = np.pad(y, ((0, 0), (p, p), (p, p), (0, 0)))
    out = np.zeros(y.shape[:3] + (k.shape[-1],))
    for i in range(kh):
      for j in range(kh):
        out += np.einsum('bhwc,cd->bhwd', yp[:, i:i + y.shape[1], j:j + y.shape[2]], k[i, j])
    return out

  y1 = conv(bn_relu(x, blk.bn1), blk.conv1)
  y2 = conv(bn_relu(y1, blk.bn2), blk.conv2)
  y3 = conv(bn_relu(y2, blk.bn3), blk.conv3)
  assert (y1.shape[-1], y2.shape[-1], y3.shape[-1]) == (4, 2, 2)
  ref = np.concatenate([y1, y2, y3], -1) + conv(bn_relu(x, blk.proj_bn), blk.proj)
  out = nnx.jit(lambda b, y: b(y))(blk, jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_landmarks_to_heatmaps_argmax_and_recovery():
  lm = np.array([[[(5 + 0.5) / 16, (9 + 0.5) / 16], [(0 + 0.5) / 16, (15 + 0.5) / 16]]],
                np.float32)  # pixel centres (col 5, row 9) and (col 0, row 15)
  hm = np.asarray(fan.landmarks_to_heatmaps(lm, 16, sigma=1.5))
  assert hm.shape == (1, 16, 16, 2)
  for k, (r, c) in enumerate([(9, 5), (15, 0)]):
    assert np.unravel_index(np.argmax(hm[0, :, :, k]), (16, 16)) == (r, c)
    assert hm[0, r, c, k] == pytest.approx(1.0)
  # The gaussian value one pixel right of the first landmark: exp(-1 / (2 sigma^2)).
  assert hm[0, 9, 6, 0] == pytest.approx(np.exp(-1 / (2 * 1.5**2)), rel=1e-6)
  for refine in (False, True):
    np.testing.assert_allclose(fan.heatmaps_to_landmarks(hm, refine=refine), lm, atol=1e-6)


def test_soft_argmax_refines_sub_pixel_positions():
  rs = np.random.RandomState(0)
  lm = rs.uniform(0.15, 0.85, (2, 68, 2)).astype(np.float32)
  hm = fan.landmarks_to_heatmaps(lm, (16, 20), sigma=1.0)
  px = np.array([20, 16])  # (w, h): errors in heatmap pixels
  err_arg = np.abs(np.asarray(fan.heatmaps_to_landmarks(hm, refine=False)) - lm) * px
  err_ref = np.abs(np.asarray(fan.heatmaps_to_landmarks(hm, refine=True)) - lm) * px
  assert err_arg.max() <= 0.5 + 1e-5
  assert err_ref.max() < 0.1 and err_ref.mean() < 0.5 * err_arg.mean()


def test_flip_landmarks():
  # One permutation for the whole project: the flip_lr op and the model share vaflax.faces's.
  assert fan.IBUG68_FLIP is faces.IBUG68_FLIP and fan.flip_landmarks is faces.flip_landmarks
  rs = np.random.RandomState(0)
  lm = rs.uniform(0, 1, (3, 68, 2)).astype(np.float32)
  f = np.asarray(fan.flip_landmarks(lm))
  np.testing.assert_allclose(fan.flip_landmarks(f), lm, atol=1e-7)
  np.testing.assert_allclose(f[:, 45], np.stack([1 - lm[:, 36, 0], lm[:, 36, 1]], -1), atol=1e-7)
  np.testing.assert_allclose(f[:, 36], np.stack([1 - lm[:, 45, 0], lm[:, 45, 1]], -1), atol=1e-7)
  # Midline points (nose bridge 27-30, tip 33, lips 51, 57, 62, 66, chin 8) keep their index.
  for k in (8, 27, 28, 29, 30, 33, 51, 57, 62, 66):
    np.testing.assert_allclose(f[:, k, 0], 1 - lm[:, k, 0], atol=1e-7)
  # Left and right parts swap as groups: jaw 0 <-> 16, brows 17 <-> 26, mouth corners 48 <-> 54.
  for a, b in ((0, 16), (17, 26), (31, 35), (39, 42), (48, 54), (60, 64)):
    assert fan.IBUG68_FLIP[a] == b and fan.IBUG68_FLIP[b] == a
  assert sorted(fan.IBUG68_FLIP) == list(range(68))


def test_flip_heatmaps_matches_flipped_landmarks():
  rs = np.random.RandomState(1)
  lm = rs.uniform(0.1, 0.9, (2, 68, 2)).astype(np.float32)
  hm_of_flipped = fan.landmarks_to_heatmaps(fan.flip_landmarks(lm), 16, 1.0)
  np.testing.assert_allclose(fan.flip_heatmaps(hm_of_flipped),
                             fan.landmarks_to_heatmaps(lm, 16, 1.0), atol=1e-6)


def test_normalised_mean_error_hand_case():
  t = np.zeros((2, 68, 2), np.float32)
  t[:, 36] = [0.2, 0.4]
  t[:, 45] = [0.8, 0.4]  # inter-ocular distance 0.6
  p = t.copy()
  p[0, :, 0] += 0.03  # every point 0.03 off -> NME 0.05
  p[1, 0] += [0.3, 0.4]  # one point 0.5 off -> 0.5 / 68 / 0.6
  np.testing.assert_allclose(fan.normalised_mean_error(p, t, per_example=True),
                             [0.05, 0.5 / 68 / 0.6], rtol=1e-4)
  t_nan = t.copy()
  t_nan[1] = np.nan
  assert fan.normalised_mean_error(p, t_nan, np.array([1.0, 0.0])) == pytest.approx(0.05, rel=1e-4)


def test_paper_fan4_param_count():
  """The 4-stack, width-256 FAN (Bulat & Tzimiropoulos 2017) counted by hand, block by block."""
  def block(cin, c):  # BN gamma/beta + three 3x3 convs without bias (+ BN and 1x1 projection)
    n = 2 * cin + 9 * cin * c // 2 + c + 9 * (c // 2) * (c // 4) + c // 2 + 9 * (c // 4) ** 2
    return n + (2 * cin + cin * c if cin != c else 0)
  stem = (7 * 7 * 3 * 64 + 64) + 2 * 64 + block(64, 128) + block(128, 128) + block(128, 256)
  hourglass = (3 * 4 + 1) * block(256, 256)  # 3 blocks per level + 1 at the bottom
  stack = hourglass + block(256, 256) + (256 * 256 + 256) + 2 * 256 + (256 * 68 + 68)
  remap = (256 * 256 + 256) + (68 * 256 + 256)
  f = nnx.eval_shape(lambda: fan.FAN(num_stacks=4, depth=4, width=256, num_landmarks=68,
                                     rngs=nnx.Rngs(0), dtype=jnp.float32))
  assert count_params(f) == stem + 4 * stack + 3 * remap == 23_820_176
