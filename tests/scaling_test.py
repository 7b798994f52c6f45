"""GPU-readiness checks that run on fake CPU devices: bf16 compute, remat, FSDP sharding of the
ViT, and the ResNet stem pool's hand-written gradient."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import common
from vaflax import losses, runs, sharding, train
from vaflax.models import fan, resnet

B = 8


def _vit_config(**model):
  c = common.base_config()
  c.task, c.model_name = 'supervised', 'vit'
  c.model = ml_collections.ConfigDict(
      dict(dict(variant='mu/8', image_size=32, head_zero_init=False, dtype='float32'), **model))
  c.image_size, c.batch_size = 32, B
  return c


def _sgd(c, num_devices=1, fsdp=1):
  c.optimizer.name, c.optimizer.lr, c.optimizer.momentum = 'sgd', 1.0, 0.0
  c.schedule.name, c.schedule.warmup_steps, c.total_steps = 'constant', 0, 10
  c.mesh.num_devices, c.mesh.fsdp = num_devices, fsdp
  return c


def _image_batch(seed=0):
  rng = np.random.default_rng(seed)
  return {'image': rng.uniform(-1, 1, (B, 32, 32, 3)).astype(np.float32),
          'va': rng.uniform(-0.8, 0.8, (B, 2)).astype(np.float32),
          'va_mask': np.ones((B, 2), np.float32)}


def _one_sgd_step(c, batch):
  """(loss, -gradient per parameter leaf (lr 1: new - old), param dtypes, setup with the new
  state) of one real train step."""
  s = train.make_setup(c, 1000)
  old = [np.asarray(x, np.float64) for x in jax.tree.leaves(nnx.state(
      nnx.merge(s.graphdef, s.state)[0], nnx.Param))]
  state, metrics, ok = s.train_step(s.state, sharding.to_global(batch, s.mesh), np.int32(0))
  assert bool(ok)
  model = nnx.merge(s.graphdef, state)[0]
  new = [np.asarray(x, np.float64) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]
  dtypes = {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))}
  s.state = state  # the old one was donated to the step
  return float(metrics['loss']), [n - o for n, o in zip(new, old, strict=True)], dtypes, s


def _rel_err(a_list, b_list):
  num = sum(np.sum((a - b) ** 2) for a, b in zip(a_list, b_list, strict=True))
  den = sum(np.sum(b**2) for b in b_list)
  return float(np.sqrt(num / den))


def _cosine(a_list, b_list):
  dot = sum(np.sum(a * b) for a, b in zip(a_list, b_list, strict=True))
  na = np.sqrt(sum(np.sum(a**2) for a in a_list))
  nb = np.sqrt(sum(np.sum(b**2) for b in b_list))
  return float(dot / (na * nb))


# Gradients of a freshly initialised CNN are ill-conditioned: max-pool winners and ReLU masks
# flip under tiny changes, so the fp32 gradient itself moves by ~35 % when the input is
# perturbed by 0.4 % (bf16's precision; measured on the tiny ResNet below). A conv net's bf16
# gradient is therefore checked for direction (cosine), a ViT's for closeness.


@pytest.mark.slow
def test_bf16_train_step_close_to_fp32_vit():
  batch = _image_batch()
  l32, d32, _, _ = _one_sgd_step(_sgd(_vit_config(dtype='float32')), batch)
  c16 = _sgd(_vit_config(dtype='bfloat16'))
  l16, d16, dtypes, s16 = _one_sgd_step(c16, batch)
  # Parameters (and so the optimizer and the update) stay float32; the loss is float32.
  assert dtypes == {np.dtype('float32')}
  assert np.isfinite(l16) and all(np.isfinite(d).all() for d in d16)
  # The matmuls / convolutions really run in bf16.
  hlo = s16.train_step.lower(s16.state, sharding.to_global(batch, s16.mesh),
                             np.int32(0)).as_text()
  assert ('bf16' in hlo) and (hlo.count('bf16') > 20)
  assert abs(l16 - l32) < 0.02 * abs(l32)
  assert _rel_err(d16, d32) < 0.05  # measured 0.01: bf16 keeps 8 mantissa bits


def _loss_and_grads(model_name, kwargs, batch):
  model = runs.model_class(ml_collections.ConfigDict({'model_name': model_name}))(
      **kwargs, rngs=nnx.Rngs(0))
  if model_name == 'fusion':  # its head starts at zero: no gradient would reach the trunk
    k = model.head.out.kernel
    k[...] = 0.3 * jax.random.normal(jax.random.key(5), k[...].shape)
  model.train()

  @nnx.jit
  def f(m, b):
    def lf(m):
      out = m(b)
      return losses.ccc_loss(out['va'], b['va'])[0], out['va']
    (loss, va), g = nnx.value_and_grad(lf, has_aux=True)(m)
    return loss, va, g

  loss, va, g = f(model, batch)
  return float(loss), va, [np.asarray(x, np.float64) for x in jax.tree.leaves(g)]


RESNET = dict(depth=10, width=8, head_hidden=16)
FAN = dict(num_stacks=1, hourglass_depth=1, width=16, head_width=16, head_blocks=1)
FUSION = dict(visual=dict(variant='mu/8', image_size=16), width=16, num_layers=1, num_heads=2,
              max_len=4, audio=dict(n_mels=8, n_fft=128, frames_per_video_frame=2, width=16,
                                    num_layers=1))


@pytest.mark.parametrize('name,kwargs', [('resnet', RESNET), ('fusion', FUSION)],
                         ids=['resnet', 'fusion'])
@pytest.mark.slow
def test_bf16_gradients_close_to_fp32(name, kwargs):
  rng = np.random.default_rng(1)
  if name == 'resnet':
    batch = {'image': rng.uniform(-1, 1, (B, 32, 32, 3)), 'va': rng.uniform(-0.8, 0.8, (B, 2))}
  else:
    batch = {'frames': rng.uniform(-1, 1, (2, 4, 16, 16, 3)),
             'audio': 0.1 * rng.normal(size=(2, 4, 640)), 'va': rng.uniform(-0.8, 0.8, (2, 4, 2))}
  batch = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), batch)
  l32, _, g32 = _loss_and_grads(name, dict(kwargs, dtype='float32'), batch)
  l16, va16, g16 = _loss_and_grads(name, dict(kwargs, dtype='bfloat16'), batch)
  assert va16.dtype == jnp.float32  # the head and the loss stay float32
  assert np.isfinite(l16) and all(np.isfinite(g).all() for g in g16)
  assert abs(l16 - l32) < 0.02 * abs(l32)
  if name == 'fusion':
    assert _rel_err(g16, g32) < 0.08  # measured 0.03
  else:
    assert _cosine(g16, g32) > 0.85  # measured 0.93 (an ill-conditioned CNN, see above)


def _eqns(jaxpr, primitive):
  """Equations of `primitive` in a jaxpr and in the jaxprs nested in its equations (pjit, ...)."""
  out = []
  for e in jaxpr.eqns:
    if e.primitive.name == primitive:
      out.append(e)
    for v in e.params.values():
      for sub in (v if isinstance(v, list | tuple) else [v]):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          out += _eqns(inner, primitive)
  return out


def test_bf16_fan_computes_in_bf16_with_float32_outputs():
  """EmoFAN (traced only: its backward is the slowest compile of the repo): convolutions in
  bf16, parameters and the VA output in float32."""
  m = nnx.eval_shape(lambda: fan.Model(**FAN, dtype='bfloat16', rngs=nnx.Rngs(0)))
  assert {x.dtype for x in jax.tree.leaves(nnx.state(m, nnx.Param))} == {jnp.dtype('float32')}
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  jaxpr = jax.make_jaxpr(lambda mm, b: mm(b))(m, {'image': x})
  convs = _eqns(jaxpr.jaxpr, 'conv_general_dilated')
  assert convs and all(e.outvars[0].aval.dtype == jnp.bfloat16 for e in convs)
  out = jax.eval_shape(lambda mm, b: mm(b), m, {'image': x})
  assert out['va'].dtype == jnp.float32


@pytest.mark.parametrize('name,kwargs', [
    ('resnet', RESNET),
    ('vit', dict(variant='mu/8', image_size=32, head_zero_init=False)),
    ('fan', FAN)], ids=['resnet', 'vit', 'fan'])
@pytest.mark.slow
def test_remat_gives_the_same_gradients(name, kwargs):
  batch = jax.tree.map(jnp.asarray, _image_batch(2))
  l0, _, g0 = _loss_and_grads(name, dict(kwargs, remat=False), batch)
  l1, _, g1 = _loss_and_grads(name, dict(kwargs, remat=True), batch)
  assert l1 == pytest.approx(l0, rel=1e-6)
  for a, b in zip(g1, g0, strict=True):
    # atol: gradients that are zero in exact arithmetic (a conv bias before a train-mode
    # BatchNorm) come out as float32 round-off (~1e-7 .. 1e-6) in both.
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6)


@pytest.mark.slow
def test_vit_fsdp_params_sharded_and_step_matches_one_device():
  if jax.device_count() < 8:
    pytest.skip('needs 8 (fake) devices')
  batch = _image_batch(3)
  c1, c8 = _sgd(_vit_config()), _sgd(_vit_config(), num_devices=8, fsdp=4)
  c1.optimizer.momentum = c8.optimizer.momentum = 0.9  # a state to shard; step 1 is still -lr*g
  l1, d1, _, _ = _one_sgd_step(c1, batch)
  l8, d8, _, s = _one_sgd_step(c8, batch)
  assert dict(s.mesh.shape) == {'data': 2, 'fsdp': 4}
  model, opt = nnx.merge(s.graphdef, s.state)
  # 'mlp' and 'heads' axes go to fsdp (configs/common.py FSDP_RULES): each device holds a quarter.
  fc1 = model.encoder.transformer.blocks[0].mlp.fc1.kernel[...]  # (32, 128) ('embed', 'mlp')
  assert fc1.sharding.spec == jax.sharding.PartitionSpec(None, 'fsdp')
  assert {sh.data.shape for sh in fc1.addressable_shards} == {(32, 32)}
  q = model.encoder.transformer.blocks[0].attn.query.kernel[...]  # ('embed', 'heads')
  assert q.sharding.spec == jax.sharding.PartitionSpec(None, 'fsdp')
  # The optimizer state follows its parameter.
  specs = {str(x.sharding.spec) for x in jax.tree.leaves(nnx.state(opt))}
  assert any('fsdp' in sp for sp in specs)
  # The batch is split over both axes (8 ways) and the step matches one device.
  assert l8 == pytest.approx(l1, rel=1e-5, abs=1e-5)
  assert _rel_err(d8, d1) < 1e-4


@pytest.mark.slow
def test_stem_max_pool_matches_jax_rule_with_ties():
  ref = lambda x: nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  for shape in [(2, 9, 9, 3), (2, 8, 10, 4), (1, 16, 16, 2)]:
    x = jax.random.normal(jax.random.key(0), shape)
    x = jnp.round(jax.nn.relu(x) * 2) / 2  # many exact ties (zeros and equal halves)
    g = jax.random.normal(jax.random.key(1), ref(x).shape)
    (y, gx), (y_ref, gx_ref) = (jax.jit(lambda x, g, f=f: (f(x), jax.vjp(f, x)[1](g)[0]))(x, g)
                                for f in (resnet.stem_max_pool, ref))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(gx, gx_ref, atol=1e-6)
  # By hand: 3x3 input, 2x2 output. Windows (rows, cols in the input): (0-1, 0-1) max 3 at
  # (0,1); (0-1, 1-2) max 3 at (0,1) and (0,2), the first in row-major order wins; (1-2, 0-1)
  # max 3 at (2,0); (1-2, 1-2) max 2 at (1,1).
  x = jnp.array([[1.0, 3.0, 3.0], [0.0, 2.0, 0.0], [3.0, 0.0, 1.0]])[None, :, :, None]
  _, vjp = jax.vjp(resnet.stem_max_pool, x)
  gx = vjp(jnp.array([[1.0, 10.0], [100.0, 1000.0]])[None, :, :, None])[0][0, :, :, 0]
  want = np.array([[0.0, 11.0, 0.0], [0.0, 1000.0, 0.0], [100.0, 0.0, 0.0]])
  np.testing.assert_array_equal(gx, want)
