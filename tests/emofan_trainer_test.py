"""Tests for vaflax/tasks/emofan.py."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from vaflax.models import fan
from vaflax.tasks import emofan

B, S = 6, 32  # batch, image side


def _config(flip_tta=False):
  c = ml_collections.ConfigDict()
  c.loss = ml_collections.ConfigDict(
      dict(va_weight=1.0, landmark_weight=10.0, emotion_weight=0.5, heatmap_sigma=1.0))
  c.eval = ml_collections.ConfigDict(dict(flip_tta=flip_tta))
  return c


# --- NumPy references ---------------------------------------------------------------------------


def _np_shake(p, t, m, c):
  p, t = p[m > 0].astype(np.float64), t[m > 0].astype(np.float64)
  rmse = np.sqrt(np.mean((p - t) ** 2))
  cov = np.mean((p - p.mean()) * (t - t.mean()))
  pcc = cov / np.sqrt(p.var() * t.var())
  ccc = 2 * cov / (p.var() + t.var() + (p.mean() - t.mean()) ** 2)
  return c[0] * rmse + c[1] * (1 - pcc) + c[2] * (1 - ccc)


def test_shake_shake_matches_numpy():
  rs = np.random.RandomState(0)
  pred = rs.uniform(-1, 1, (9, 2)).astype(np.float32)
  target = rs.uniform(-1, 1, (9, 2)).astype(np.float32)
  mask = (rs.rand(9, 2) > 0.3).astype(np.float32)
  target[mask == 0] = np.nan
  coef = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]], np.float32)
  total, (l_v, l_a) = emofan.va_shake_shake_loss(pred, target, mask, coef)
  ref = [_np_shake(pred[:, d], target[:, d], mask[:, d], coef[d]) for d in range(2)]
  np.testing.assert_allclose([l_v, l_a], ref, rtol=1e-4)
  np.testing.assert_allclose(total, sum(ref), rtol=1e-4)


def test_shake_shake_dimension_without_labels_is_zero_with_finite_gradient():
  rs = np.random.RandomState(1)
  pred = jnp.asarray(rs.uniform(-1, 1, (5, 2)), jnp.float32)
  target = np.full((5, 2), np.nan, np.float32)
  target[:, 0] = rs.uniform(-1, 1, 5)
  mask = np.stack([np.ones(5), np.zeros(5)], -1).astype(np.float32)  # no arousal labels
  coef = np.full((2, 3), 1 / 3, np.float32)
  f = lambda p: emofan.va_shake_shake_loss(p, target, mask, coef)[0]
  val, g = jax.value_and_grad(f)(pred)
  np.testing.assert_allclose(val, _np_shake(np.asarray(pred[:, 0]), target[:, 0], mask[:, 0],
                                            coef[0]), rtol=1e-4)
  assert np.all(np.isfinite(g)) and np.all(g[:, 1] == 0) and np.any(g[:, 0] != 0)


def test_heatmap_loss_matches_numpy():
  rs = np.random.RandomState(2)
  hm = rs.randn(2, 3, 8, 8, 68).astype(np.float32) * 0.1  # 2 stacks
  lm = rs.uniform(0.1, 0.9, (3, 68, 2)).astype(np.float32)
  mask = np.array([1.0, 0.0, 1.0], np.float32)
  lm[1] = np.nan
  yy, xx = np.mgrid[0:8, 0:8]
  u, v = lm[:, None, None, :, 0] * 8 - 0.5, lm[:, None, None, :, 1] * 8 - 0.5  # pixel centres
  d2 = (xx[None, :, :, None] - u) ** 2 + (yy[None, :, :, None] - v) ** 2
  tgt = np.exp(-d2 / (2 * 1.5**2))
  ref = np.mean([np.mean((hm[s, [0, 2]] - tgt[[0, 2]]) ** 2) for s in range(2)])
  np.testing.assert_allclose(emofan.heatmap_loss(hm, lm, mask, 1.5), ref, rtol=1e-5)


# --- A tiny EmoFAN, one compiled gradient for all tests ----------------------------------------


def _batch():
  rs = np.random.RandomState(3)
  va = rs.uniform(-0.8, 0.8, (B, 2)).astype(np.float32)
  # Images whose brightness pattern follows VA, so a few steps can fit them.
  img = rs.uniform(-0.3, 0.3, (B, S, S, 3)).astype(np.float32)
  img[:, : S // 2] += va[:, 0, None, None, None]
  img[:, :, : S // 2, 1] += va[:, 1, None, None]
  va_mask = np.ones((B, 2), np.float32)
  va_mask[0] = 0.0
  va_mask[1, 1] = 0.0
  va[va_mask == 0] = np.nan  # masked targets may be anything
  lm = rs.uniform(0.2, 0.8, (B, 68, 2)).astype(np.float32)
  lm_mask = np.array([1, 1, 0, 1, 1, 0], np.float32)
  lm[lm_mask == 0] = np.nan
  emotion = np.array([0, -1, 2, 1, -1, 2], np.int32)
  return {'image': img, 'va': va, 'va_mask': va_mask, 'landmarks': lm,
          'landmarks_mask': lm_mask, 'emotion': emotion}


@pytest.fixture(scope='module')
def setup():
  """A tiny EmoFAN in train mode, its Adam optimizer and ONE compiled train step (compiles
  dominate the test time): the step returns the loss, metrics and gradients before updating."""
  cfg = _config()
  model = fan.Model(num_stacks=1, hourglass_depth=1, width=16, head_width=16, head_blocks=1,
                    num_emotions=3, rngs=nnx.Rngs(jax.random.key(0, impl='rbg')))
  model.train()
  opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def step(m, o, batch, rng):
    (loss, metrics), grads = nnx.value_and_grad(
        lambda mm: emofan.loss_fn(mm, batch, rng, cfg), has_aux=True)(m)
    o.update(m, grads)
    return loss, metrics, grads

  return model, opt, step


@pytest.mark.slow
def test_loss_finite_with_masked_nan_targets_and_ignores_them(setup):
  model, opt, step = setup
  batch = _batch()
  rng = jax.random.key(7)
  loss, metrics, grads = step(*nnx.clone((model, opt)), batch, rng)
  assert np.isfinite(loss)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  # Without freeze_fan the losses reach the landmark network (its stem and its heatmap conv).
  assert np.any(np.asarray(grads['fan']['stem_conv']['kernel']) != 0)
  assert np.any(np.asarray(grads['fan']['heatmap'][0]['kernel']) != 0)
  for k in ('loss_valence', 'loss_arousal', 'loss_emotion', 'loss_heatmap', 'nme',
            'emotion_accuracy', 'ccc_valence', 'ccc_arousal'):
    assert np.isfinite(metrics[k]), k
  # Other values in the masked entries change nothing (BatchNorm sees the same images).
  b2 = dict(batch, va=np.where(batch['va_mask'] > 0, batch['va'], 5.0),
            landmarks=np.where(batch['landmarks_mask'][:, None, None] > 0, batch['landmarks'], 0.),
            emotion=np.where(batch['emotion'] >= 0, batch['emotion'], -3))
  loss2, _, _ = step(*nnx.clone((model, opt)), b2, rng)
  np.testing.assert_allclose(loss2, loss, rtol=1e-6)
  # The loss total is its parts, with the shake-shake draw of this rng.
  total = (metrics['loss_valence'] + metrics['loss_arousal'] + 0.5 * metrics['loss_emotion']
           + 10.0 * metrics['loss_heatmap'])
  np.testing.assert_allclose(loss, total, rtol=1e-5)
  # Another rng draws other shake-shake coefficients.
  loss3, _, _ = step(*nnx.clone((model, opt)), batch, jax.random.key(8))
  assert abs(float(loss3) - float(loss)) > 1e-4


def test_few_adam_steps_reduce_the_loss(setup):
  model, opt = nnx.clone(setup[:2])
  step = setup[2]
  batch = _batch()
  rng = jax.random.key(0)  # fixed: the same coefficients at every step, so losses compare
  losses_seen, va_seen = [], []
  for _ in range(25):
    loss, metrics, _ = step(model, opt, batch, rng)
    losses_seen.append(float(loss))
    va_seen.append(float(metrics['loss_valence'] + metrics['loss_arousal']))
  assert losses_seen[-1] < 0.7 * losses_seen[0], losses_seen
  assert va_seen[-1] < 0.9 * va_seen[0], va_seen  # the VA head learns too, not only heatmaps


class _SidedModel(nnx.Module):
  """VA = (left-half mean - right-half mean, global mean): the first flips sign under a mirror.

  Heatmaps are those of fixed landmarks as they appear in the image: the mirrored landmarks when
  the marker pixel (top-left in the original) is on the right.
  """

  def __init__(self, landmarks):
    self.landmarks = landmarks
    self.num_landmarks = landmarks.shape[-2]  # as fan.Model: predict_fn mirrors iBUG-68 only
    self.seen = []

  def __call__(self, batch):
    img = batch['image']
    self.seen.append(np.asarray(img))
    w = img.shape[2]
    v = jnp.mean(img[:, :, : w // 2], axis=(1, 2, 3)) - jnp.mean(img[:, :, w // 2:], axis=(1, 2, 3))
    a = jnp.mean(img, axis=(1, 2, 3))
    mirrored = (img[:, 0, -1, 0] > img[:, 0, 0, 0])[:, None, None, None]
    hm = jnp.where(mirrored, fan.landmarks_to_heatmaps(fan.flip_landmarks(self.landmarks), 16, 1.0),
                   fan.landmarks_to_heatmaps(self.landmarks, 16, 1.0))
    return {'va': jnp.stack([v, a], -1), 'heatmaps': hm}


@pytest.mark.slow
def test_flip_tta_sees_the_mirror():
  rs = np.random.RandomState(4)
  img = rs.uniform(-1, 0, (2, 16, 16, 3)).astype(np.float32)
  img[:, 0, 0, 0] = 1.0  # marker
  lm = rs.uniform(0.2, 0.8, (2, 68, 2)).astype(np.float32)
  m = _SidedModel(jnp.asarray(lm))
  plain = m({'image': img})['va']
  assert abs(float(plain[0, 0])) > 1e-3  # the sided output is sensitive to the mirror
  m.seen.clear()
  res = emofan.predict_fn(m, {'image': img}, _config(flip_tta=True))
  np.testing.assert_array_equal(m.seen[1], img[:, :, ::-1])
  np.testing.assert_allclose(res['va'][:, 0], 0.0, atol=1e-6)  # v and -v average out
  np.testing.assert_allclose(res['va'][:, 1], plain[:, 1], rtol=1e-6)
  # The mirrored heatmaps are mapped back before averaging: landmarks come out where they are.
  np.testing.assert_allclose(res['landmarks'], lm, atol=0.02)
  res_plain = emofan.predict_fn(m, {'image': img}, _config(flip_tta=False))
  np.testing.assert_allclose(res_plain['va'], plain, atol=1e-7)


def test_predict_fn_traces_on_emofan_with_flip_tta():
  # Shapes only (no compile): the real model's 68 heatmaps go through the mirror mapping.
  img = jnp.zeros((2, 16, 16, 3))

  def f():
    m = fan.Model(num_stacks=1, hourglass_depth=1, width=16, head_width=16, head_blocks=1,
                  num_emotions=4, rngs=nnx.Rngs(0))
    m.eval()
    return emofan.predict_fn(m, {'image': img}, _config(flip_tta=True))

  res = nnx.eval_shape(f)
  assert res['va'].shape == (2, 2) and res['landmarks'].shape == (2, 68, 2)
  assert res['emotion_logits'].shape == (2, 4)


def test_two_stage_recipe_plan():
  """configs/emofan_va.py:stage=two_stage is the emofan recipe: landmarks (heatmap loss only),
  then the head on the landmarks stage's FAN, frozen; the head starts anew."""
  from configs import emofan_va  # noqa: PLC0415
  from vaflax import recipes, runs, stages  # noqa: PLC0415

  c = emofan_va.get_config('runlocal,stage=two_stage')
  assert c.recipe == 'emofan'
  lm, head = stages.plan(recipes.get(c.recipe), c, '/w')
  assert (lm.name, head.name) == ('landmarks', 'head')
  assert (lm.config.loss.va_weight, lm.config.loss.emotion_weight) == (0.0, 0.0)
  assert lm.config.loss.landmark_weight > 0 and lm.config.frozen == '' and lm.config.recipe == ''
  assert head.config.loss.landmark_weight == 0.0 and head.config.loss.va_weight == 1.0
  assert head.config.frozen == 'fan(/|$)'
  assert head.init == (runs.WeightSource('/w/landmarks', (('fan', 'fan'),)),)
  assert head.config.init_from == '/w/landmarks:fan=fan'
  with pytest.raises(ValueError, match='two_stage'):
    emofan_va.get_config('runlocal,stage=two_stage,init=/w1')


@pytest.mark.slow
def test_two_stage_recipe_runs_and_freezes_the_landmark_fan(tmp_path, synthetic_data_dir):
  """Both stages through the one runner: the head stage's FAN is exactly the landmarks stage's
  final FAN (loaded, then frozen), its head trained."""
  from configs import emofan_va  # noqa: PLC0415
  from vaflax import recipes, runs, stages  # noqa: PLC0415

  c = emofan_va.get_config('runlocal,stage=two_stage')
  c.input.data_dir = synthetic_data_dir
  c.input.eval_split = ''
  c.model.update(num_stacks=1, hourglass_depth=1, width=16, head_width=16, head_blocks=1)
  c.image_size = 32
  c.batch_size, c.total_steps, c.log_every_steps = 8, 3, 3
  c.checkpoint_every_steps = c.eval_every_steps = 3
  c.schedule.warmup_steps = 0
  c.mesh.num_devices = 1
  c.tensorboard = False
  stages.run(recipes.get(c.recipe), c, str(tmp_path))
  lm = runs.load_run(str(tmp_path / 'landmarks')).weights()
  head = runs.load_run(str(tmp_path / 'head')).weights()
  fan_keys = [k for k in lm if k.startswith('fan/')]
  assert fan_keys
  for k in fan_keys:
    np.testing.assert_array_equal(head[k], lm[k], err_msg=k)
  assert any(not np.array_equal(head[k], lm[k]) for k in lm if not k.startswith('fan/'))
