"""Learning-rate schedules, the optimizer and the one freezing rule of vaflax.

Everything reads `config.schedule`, `config.optimizer` and `config.frozen` (configs/common.py
declares and documents each field). Training only: a restored run's model (vaflax/runs.py) needs
none of it.

Frozen parameters (`config.frozen`, a regex over '/'-joined parameter paths, `re.match`): the
train step does not differentiate them, the optimizer holds no state for them (no Adam moments,
no weight decay) and modules whose own path matches run in eval mode (BatchNorm running
averages, no dropout). So a frozen sub-tree is bit-identical after any number of steps.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vaflax.checkpoint import key_name, path_str


def make_schedule(config, steps_per_epoch: int, total_steps: int):
  """The learning rate as a function of the step (optax schedules)."""
  sc, lr = config.schedule, float(config.optimizer.lr)
  warmup = int(sc.warmup_steps) or int(round(sc.warmup_epochs * steps_per_epoch))
  if sc.name == 'constant':
    main = optax.constant_schedule(lr)
  elif sc.name == 'step':
    every = int(sc.decay_every_steps) or int(round(sc.decay_every_epochs * steps_per_epoch))
    main = optax.exponential_decay(lr, transition_steps=max(1, every), decay_rate=sc.factor,
                                   staircase=True)
  elif sc.name == 'cosine':
    main = optax.cosine_decay_schedule(lr, max(1, total_steps - warmup), alpha=sc.alpha)
  else:
    raise ValueError(f'config.schedule.name={sc.name!r}: use constant, step or cosine')
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
  return main


def make_optimizer(config, schedule) -> optax.GradientTransformation:
  oc = config.optimizer
  if oc.name == 'adam':
    tx = optax.adam(schedule, b1=oc.b1, b2=oc.b2)
  elif oc.name == 'adamw':
    # No decay on biases, norms and other 1-D parameters (the usual MAE/ViT recipe).
    tx = optax.adamw(schedule, b1=oc.b1, b2=oc.b2, weight_decay=oc.weight_decay,
                     mask=lambda params: jax.tree.map(lambda x: x.ndim >= 2, params))
  elif oc.name == 'sgd':
    tx = optax.sgd(schedule, momentum=oc.momentum or None)
  else:
    raise ValueError(f'config.optimizer.name={oc.name!r}: use adam, adamw or sgd')
  if oc.layer_decay:  # layer-wise lr decay for ViT fine-tuning (BEiT, Bao et al. 2022; MAE)
    tx = optax.chain(tx, scale_by_layerwise_lr_decay(oc.layer_decay))
  if oc.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(oc.grad_clip_norm), tx)
  return tx


# --- Freezing ------------------------------------------------------------------------------------


def frozen_regex(config) -> re.Pattern | None:
  return re.compile(config.frozen) if config.frozen else None


def trainable(config):
  """The nnx filter of the parameters the step differentiates and the optimizer updates."""
  rx = frozen_regex(config)
  if rx is None:
    return nnx.Param
  return nnx.All(nnx.Param, lambda path, _: rx.match(path_str(path)) is None)


def set_frozen_modules_to_eval(model, config) -> None:
  """Eval mode (running averages, no dropout) for every sub-module whose path matches
  config.frozen; call after model.train()."""
  rx = frozen_regex(config)
  if rx is None:
    return
  for path, module in nnx.iter_modules(model):
    if path and rx.match(path_str(path)):
      module.eval()


def check_frozen(config, model_state) -> int:
  """Number of frozen parameters; an error when config.frozen matches none (a typo would train
  everything silently)."""
  rx = frozen_regex(config)
  if rx is None:
    return 0
  flat = nnx.to_flat_state(nnx.state(model_state, nnx.Param) if isinstance(model_state, nnx.Module)
                           else model_state)
  n = sum(1 for p, _ in flat if rx.match(path_str(p)))
  if n == 0:
    some = ', '.join(path_str(p) for p, _ in list(flat)[:6])
    raise ValueError(f'config.frozen={config.frozen!r} matches no parameter path (paths look '
                     f'like {some})')
  return n


# --- Layer-wise learning-rate decay --------------------------------------------------------------

_EMBED_NAMES = ('patch_embed', 'pos_embed', 'cls_token')


def _names(path) -> list:
  return [key_name(k) for k in path]


def layer_id(path, depth: int) -> int:
  """Layer id of a parameter path: embeddings 0, block i -> i + 1, anything else depth + 1."""
  names = _names(path)
  for i, n in enumerate(names[:-1]):
    if n == 'blocks' and isinstance(names[i + 1], int):
      return names[i + 1] + 1
  if any(n in _EMBED_NAMES for n in names):
    return 0
  return depth + 1


def _depth_of(tree) -> int:
  depth = 0
  for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
    names = _names(path)
    for i, n in enumerate(names[:-1]):
      if n == 'blocks' and isinstance(names[i + 1], int):
        depth = max(depth, names[i + 1] + 1)
  return depth


def layerwise_lr_decay_multipliers(model_state, decay: float, depth: int | None = None):
  """Pytree like `model_state` with lr multiplier decay ** (depth + 1 - layer_id) per leaf.

  `depth` defaults to the number of transformer blocks found in the paths (`.../blocks/<i>/...`).
  """
  depth = _depth_of(model_state) if depth is None else depth
  return jax.tree_util.tree_map_with_path(
      lambda path, _: float(decay ** (depth + 1 - layer_id(path, depth))), model_state)


def scale_by_layerwise_lr_decay(decay: float, depth: int | None = None
                                ) -> optax.GradientTransformation:
  """Optax transform that multiplies each update by its layer-decay factor."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    mult = layerwise_lr_decay_multipliers(updates, decay, depth)
    updates = jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, mult)
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)
