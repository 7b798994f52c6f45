"""vaflax/models/cpu_conv.py: the convolution whose backward pass is arranged for XLA:CPU gives
jax.grad's gradients of lax.conv_general_dilated, and a ResNet train step gives the XLA path's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from vaflax import losses
from vaflax.models import cpu_conv, resnet

_DN = ('NHWC', 'HWIO', 'NHWC')


@pytest.mark.parametrize('hw,k,stride', [(9, 7, 2), (8, 3, 1), (7, 3, 2), (8, 1, 2)])
def test_gradients_equal_lax(hw, k, stride):
  rng = np.random.default_rng(k * 10 + hw)
  x = jnp.asarray(rng.standard_normal((2, hw, hw, 5), np.float32))
  w = jnp.asarray(rng.standard_normal((k, k, 5, 6), np.float32))
  p = (k - 1) // 2
  args = ((stride, stride), ((p, p), (p, p)))
  y_ref, vjp_ref = jax.vjp(lambda x, w: lax.conv_general_dilated(x, w, *args,
                                                                 dimension_numbers=_DN), x, w)
  y, vjp = jax.vjp(lambda x, w: cpu_conv.conv_general_dilated(x, w, *args,
                                                              dimension_numbers=_DN), x, w)
  g = jnp.asarray(rng.standard_normal(y_ref.shape, np.float32))
  np.testing.assert_array_equal(y, y_ref)
  for got, want in zip(vjp(g), vjp_ref(g), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(want))))


def test_uncovered_forms_go_to_lax():
  x = jnp.ones((1, 6, 6, 4))
  w = jnp.ones((3, 3, 2, 4))  # two feature groups: not the custom VJP's form
  y = cpu_conv.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=_DN,
                                    feature_group_count=2)
  np.testing.assert_array_equal(y, lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                                            dimension_numbers=_DN,
                                                            feature_group_count=2))


@pytest.mark.slow
def test_resnet_gradients_equal_xla_path_and_repeat_bit_for_bit():
  models = [resnet.Model(depth=10, width=8, head_hidden=16, conv_impl=impl, rngs=nnx.Rngs(0))
            for impl in ('xla', 'cpu')]
  convs = [m for _, m in nnx.iter_graph(models[1]) if isinstance(m, nnx.Conv)]
  assert len(convs) == 12 and all(c.conv_general_dilated is cpu_conv.conv_general_dilated
                                  for c in convs)
  rng = np.random.default_rng(0)
  batch = {'image': jnp.asarray(rng.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32))}
  va = jnp.asarray(rng.uniform(-1, 1, (4, 2)).astype(np.float32))

  @nnx.jit  # both paths in one program: one compile
  def grads(ms):  # train-mode BatchNorm, the CCC loss
    return [nnx.grad(lambda m: jnp.sum(1.0 - losses.ccc(m(batch)['va'], va, axis=0)))(m)
            for m in ms]

  ref, got = map(jax.tree.leaves, grads(models))
  again = jax.tree.leaves(grads(models)[1])
  for r, g, a in zip(ref, got, again, strict=True):
    np.testing.assert_array_equal(g, a)
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(r))) + 1e-7)


def test_unknown_conv_impl_is_refused():
  with pytest.raises(ValueError, match='conv_impl'):
    resnet.ResNet(18, width=8, conv_impl='cudnn', rngs=nnx.Rngs(0))
