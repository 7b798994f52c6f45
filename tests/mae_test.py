"""Tests for vaflax/models/mae.py and vaflax/tasks/mae.py."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from PIL import Image

from vaflax.models import mae
from vaflax.tasks import mae as mae_task

TINY = dict(variant='mu/8', image_size=32, decoder_width=32, decoder_depth=1,
            decoder_num_heads=2)


@nnx.jit
def _apply(model, batch):
  return model(batch)


def _images(seed=0, b=4):
  return jax.random.uniform(jax.random.key(seed), (b, 32, 32, 3), minval=-1, maxval=1)


@pytest.mark.parametrize('n,ratio', [(196, 0.75), (16, 0.75), (10, 0.5), (7, 0.6)])
def test_random_masking(n, ratio):
  b = 6
  ids_keep, mask, ids_restore = mae.random_masking(jax.random.key(3), b, n, ratio)
  ids_keep, mask, ids_restore = map(np.asarray, (ids_keep, mask, ids_restore))
  k = int(round(n * (1 - ratio)))
  assert ids_keep.shape == (b, k) and mask.shape == (b, n)
  for i in range(b):
    assert len(set(ids_keep[i])) == k  # no patch kept twice
    expected = np.ones(n)
    expected[ids_keep[i]] = 0.0  # kept = visible, everything else masked
    np.testing.assert_array_equal(mask[i], expected)
    assert sorted(ids_restore[i]) == list(range(n))  # a permutation
    np.testing.assert_array_equal(ids_restore[i][ids_keep[i]], np.arange(k))
  # Different examples get different permutations; the same key gives the same masks.
  assert len({tuple(r) for r in ids_keep}) == b
  np.testing.assert_array_equal(mae.random_masking(jax.random.key(3), b, n, ratio)[1], mask)
  assert not np.array_equal(mae.random_masking(jax.random.key(4), b, n, ratio)[1], mask)


def test_patchify_unpatchify():
  x = np.asarray(_images(1, 2))
  p = mae.patchify(x, 8)
  assert p.shape == (2, 16, 8 * 8 * 3)
  # Patch 5 = row 1, column 1, pixels in (y, x, c) order.
  np.testing.assert_array_equal(p[1, 5], x[1, 8:16, 8:16].reshape(-1))
  np.testing.assert_array_equal(mae.unpatchify(p, 8), x)
  rect = np.asarray(jax.random.normal(jax.random.key(2), (1, 16, 24, 3)))
  np.testing.assert_array_equal(mae.unpatchify(mae.patchify(rect, 8), 8, (2, 3)), rect)
  with pytest.raises(ValueError, match='not divisible'):
    mae.patchify(x[:, :30], 8)


def test_loss_counts_only_masked_patches():
  rng = np.random.default_rng(0)
  pred = rng.normal(size=(2, 6, 12)).astype(np.float32)
  target = rng.normal(size=(2, 6, 12)).astype(np.float32)
  mask = np.array([[1, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], np.float32)
  loss, per_example = mae.mae_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask))
  per_patch = ((pred - target) ** 2).mean(-1)
  np.testing.assert_allclose(loss, (per_patch * mask).sum() / mask.sum(), rtol=1e-6)
  np.testing.assert_allclose(per_example, [(per_patch[0] * mask[0]).sum() / 2,
                                           (per_patch[1] * mask[1]).sum() / 3], rtol=1e-6)
  changed = pred.copy()
  changed[0, 1] += 100.0  # a visible patch
  changed[1, 0] -= 100.0
  assert float(mae.mae_loss(jnp.asarray(changed), target, mask)[0]) == float(loss)
  changed[0, 2] += 1.0  # a masked patch
  assert float(mae.mae_loss(jnp.asarray(changed), target, mask)[0]) != float(loss)


def test_model_forward_matches_numpy_loss_and_pastes_visible():
  model = mae.Model(**TINY, rngs=nnx.Rngs(0))
  x = _images(5)
  out = _apply(model, {'image': x, 'mask_rng': jax.random.key(7)})
  assert out['pred_patches'].shape == (4, 16, 192) and out['mask'].shape == (4, 16)
  np.testing.assert_array_equal(np.asarray(out['mask']).sum(1), 12)  # 16 * 0.75 masked
  # norm_pix_loss in NumPy from the returned prediction.
  t = np.asarray(mae.patchify(x, 8), np.float64)
  t = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True) + 1e-6)
  per_patch = ((np.asarray(out['pred_patches']) - t) ** 2).mean(-1)
  m = np.asarray(out['mask'])
  np.testing.assert_allclose(out['loss'], (per_patch * m).sum() / m.sum(), rtol=1e-5)
  # Visible patches of the reconstruction are the input; masked ones are predictions.
  rec = np.asarray(mae.patchify(out['reconstruction'], 8))
  inp = np.asarray(mae.patchify(x, 8))
  vis = m == 0
  np.testing.assert_allclose(rec[vis], inp[vis], atol=1e-6)
  assert not np.allclose(rec[~vis], inp[~vis], atol=1e-2)
  with pytest.raises(KeyError, match='mask_rng'):
    model({'image': x})


def test_encoder_sees_only_visible_patches():
  # Changing masked pixels changes neither the encoder input nor the prediction, for a fixed key.
  model = mae.Model(**TINY, rngs=nnx.Rngs(0))
  x = np.asarray(_images(6))
  key = jax.random.key(8)
  out = _apply(model, {'image': jnp.asarray(x), 'mask_rng': key})
  m = np.asarray(out['mask'])
  x2 = np.asarray(mae.patchify(x, 8)).copy()
  x2[m == 1] = 0.5
  out2 = _apply(model, {'image': mae.unpatchify(jnp.asarray(x2), 8), 'mask_rng': key})
  np.testing.assert_allclose(out2['pred_patches'], out['pred_patches'], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_adam_reduces_loss_and_trainer():
  model = mae.Model(**TINY, rngs=nnx.Rngs(0))
  batch = {'image': _images(9, 8)}
  rng = jax.random.key(1)
  opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, batch):
    (loss, metrics), grads = nnx.value_and_grad(
        lambda m: mae_task.loss_fn(m, batch, rng, None), has_aux=True)(model)
    opt.update(model, grads)
    return loss, metrics

  losses = [float(step(model, opt, batch)[0]) for _ in range(25)]
  assert losses[-1] < 0.8 * losses[0], losses
  _, metrics = step(model, opt, batch)
  assert float(metrics['mask_fraction']) == 0.75
  # The trainer's masks depend on the step key only.
  loss = nnx.jit(lambda m, b, r: mae_task.loss_fn(m, b, r)[0])
  l1, l2, l3 = (float(loss(model, batch, jax.random.key(k))) for k in (2, 2, 3))
  assert l1 == l2 and l1 != l3
  pred = nnx.jit(mae_task.predict_fn)(model, batch)
  assert set(pred) == {'reconstruction', 'mask', 'loss_per_example', 'eval_loss'}
  np.testing.assert_array_equal(pred['eval_loss'], pred['loss_per_example'])
  assert pred['reconstruction'].shape == (8, 32, 32, 3)


def test_mae_encoder_loads_into_vit_model():
  from vaflax import checkpoint
  from vaflax.models import vit

  pre = mae.Model(**TINY, rngs=nnx.Rngs(0))
  va = vit.Model(variant='mu/8', image_size=32, rngs=nnx.Rngs(1))
  checkpoint.transfer_weights(checkpoint.flat_weights(pre), va, [('encoder', 'encoder')])
  x = _images(2)
  enc = nnx.jit(lambda m, x: m.encoder(x)[1])
  np.testing.assert_array_equal(enc(va, x), enc(pre, x))


def test_save_reconstruction_grid(tmp_path):
  model = mae.Model(**TINY, rngs=nnx.Rngs(0))
  x = _images(4, 3)
  out = _apply(model, {'image': x, 'mask_rng': jax.random.key(0)})
  path = tmp_path / 'recon.png'
  grid = mae.save_reconstruction_grid(path, x, out['mask'], out['reconstruction'], 8)
  img = np.asarray(Image.open(path))
  assert img.shape == (3 * 34 - 2, 3 * 34 - 2, 3)
  np.testing.assert_array_equal(img, grid)
  x_u8 = np.clip(np.round((np.asarray(x) + 1) * 127.5), 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(img[34:66, :32], x_u8[1])  # row 1, column "original"
  masked = img[:32, 34:66].reshape(4, 8, 4, 8, 3).transpose(0, 2, 1, 3, 4).reshape(16, -1)
  m = np.asarray(out['mask'])[0]
  assert np.all(masked[m == 1] == 128)  # masked patches drawn mid-grey
