"""vaflax/optim.py: the one freezing rule, through the loop's real jitted step."""

import jax
import numpy as np
import pytest
from conftest import tiny_config
from flax import nnx

from vaflax import checkpoint, optim, sharding, train
from vaflax.data import pipeline


def _leaves(state, prefix):
  state = nnx.filter_state(state, checkpoint.WEIGHTS)
  return {optim.path_str(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)
          if optim.path_str(p).startswith(prefix)}


@pytest.mark.slow
@pytest.mark.parametrize('frozen,prefix', [('backbone(/|$)', 'backbone'), ('', None)])
def test_frozen_subtree_has_no_optimizer_state_and_stays_bit_identical(
    synthetic_data_dir, frozen, prefix):
  """AdamW with weight decay 0.5 for 4 steps: the frozen backbone (parameters and BatchNorm
  statistics) is bit-identical and holds no optimizer state; the head moves. Without freezing the
  same backbone moves (the check can fail)."""
  c = tiny_config(synthetic_data_dir, frozen=frozen)
  c.optimizer.name, c.optimizer.lr, c.optimizer.weight_decay = 'adamw', 1e-2, 0.5
  s = train.make_setup(c, 1000)
  model0 = _leaves(s.state[0], '')
  opt_paths = [optim.path_str(p) for p, _ in nnx.to_flat_state(s.state[1])]
  it = iter(pipeline.make_train_dataset(c)[0])
  state = s.state
  for step in range(4):
    state, _, ok = s.train_step(state, sharding.to_global(next(it), s.mesh), np.int32(step))
    assert bool(ok)
  model1 = _leaves(state[0], '')
  moved = {k for k in model0 if not np.array_equal(model0[k], model1[k])}
  assert any(k.startswith('head/') for k in moved)
  backbone = {k for k in model0 if k.startswith('backbone/')}
  if prefix:
    assert not moved & backbone, sorted(moved & backbone)[:5]
    assert not [p for p in opt_paths if '/backbone/' in p]  # no Adam moments for it
    assert [p for p in opt_paths if '/head/' in p]
  else:
    # Parameters and BatchNorm statistics of the backbone all move when it is not frozen.
    assert backbone <= moved, sorted(backbone - moved)[:5]


def test_frozen_regex_that_matches_nothing_is_an_error(synthetic_data_dir):
  c = tiny_config(synthetic_data_dir, frozen='backbnoe')
  with pytest.raises(ValueError, match="config.frozen='backbnoe' matches no parameter path"):
    train.make_setup(c, 1000)


@pytest.mark.slow
def test_frozen_module_runs_in_eval_mode():
  """A frozen module's BatchNorm reads its running averages in training too."""
  import ml_collections  # noqa: PLC0415

  from vaflax.models import resnet  # noqa: PLC0415

  m = resnet.Model(depth=10, width=8, head_hidden=16, rngs=nnx.Rngs(0))
  m.train()
  optim.set_frozen_modules_to_eval(m, ml_collections.ConfigDict({'frozen': 'backbone(/|$)'}))
  assert m.backbone.stem_bn.use_running_average
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
  mean0 = np.asarray(m.backbone.stem_bn.mean[...])
  m({'image': x})
  np.testing.assert_array_equal(m.backbone.stem_bn.mean[...], mean0)
