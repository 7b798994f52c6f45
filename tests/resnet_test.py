import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vaflax import losses
from vaflax.models import count_params, resnet


@pytest.mark.parametrize('depth,expected', [(18, 11_176_512), (50, 23_508_032)])
def test_backbone_parameter_count_equals_torchvision(depth, expected):
  # torchvision resnet18/50 without the fc layer: conv weights + BatchNorm scale and bias.
  backbone = nnx.eval_shape(lambda: resnet.ResNet(depth, rngs=nnx.Rngs(0)))
  assert count_params(backbone) == expected
  assert backbone.num_features == (512 if depth == 18 else 2048)


def test_binned_model_outputs_expectation_over_bin_centres():
  m = resnet.Model(depth=18, width=8, head_hidden=16, num_bins=20, rngs=nnx.Rngs(0))
  m.eval()
  x = np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
  out = m({'image': jnp.asarray(x)})
  assert out['va_logits'].shape == (3, 2, 20) and out['va'].shape == (3, 2)
  logits = np.asarray(out['va_logits'], np.float64)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  centres = -1 + (2 * np.arange(20) + 1) / 20  # -0.95, -0.85, ..., 0.95
  np.testing.assert_allclose(np.asarray(out['va']), (p * centres).sum(-1), atol=1e-6)
  np.testing.assert_allclose(np.asarray(losses.bin_centres(20)), centres, atol=1e-7)
