"""A run: its config, its model (and optimizer) state; the one way to load one from a workdir.

`load_run(workdir)` reads `workdir/config.json`, builds the model's abstract state (shapes and
shardings only: nothing is initialised or compiled) and restores the checkpoint into it. The
optimizer state is read only when asked (resuming a run); its structure does not depend on the
learning-rate schedule (vaflax/optim.py), so no data size is needed. Training resume, init_from,
stage chaining, evaluate, predict and the public API (vaflax/__init__.py) all load through here.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import os
import sys

import jax
import ml_collections
from flax import nnx

from vaflax import checkpoint as ckpt_lib
from vaflax import optim, sharding, tasks

CHECKPOINTS = 'checkpoints'
CONFIG = 'config.json'


# --- Building a model's state --------------------------------------------------------------------


def model_class(config):
  try:
    return importlib.import_module(f'vaflax.models.{config.model_name}').Model
  except ModuleNotFoundError as e:
    raise ValueError(f'config.model_name={config.model_name!r}: no module vaflax/models/'
                     f'{config.model_name}.py') from e


def make_model(config, rngs: nnx.Rngs):
  """The model of `config`, built by its task when the task wraps it (distillation)."""
  task = tasks.get(config.task)
  if task.make_model is not None:
    return task.make_model(config, model_class(config), rngs)
  return model_class(config)(**config.model.to_dict(), rngs=rngs)


def build_state(config, mesh, tx=None, *, init: bool = True):
  """(graphdef, state, state_sharding) of the model, or of (model, optimizer) when `tx` is given.

  With init=False the state is abstract (ShapeDtypeStructs carrying their shardings): a restore
  target that costs no initialisation and no compile."""
  def create():
    model = make_model(config, nnx.Rngs(config.seed))
    if tx is None:
      return model
    return model, nnx.Optimizer(model, tx, wrt=optim.trainable(config))

  graphdef, abs_state = nnx.split(nnx.eval_shape(create))
  state_sh = sharding.state_shardings(abs_state, mesh, config.sharding_rules)
  if init:
    state = jax.jit(lambda: nnx.split(create())[1], out_shardings=state_sh)()
  else:
    def abstract(v, sh):
      if not hasattr(v, 'shape'):  # e.g. optax.masked's MaskedNode (AdamW): no array to restore
        return v
      return v.replace(jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sh))

    state = jax.tree.map(abstract, abs_state, state_sh,
                         is_leaf=lambda x: isinstance(x, nnx.Variable))
  return graphdef, state, state_sh


# --- Workdirs and their configs ------------------------------------------------------------------


def resolve_workdir(workdir: str) -> str:
  """`workdir`, or for a multi-stage workdir the stage sub-workdir that finished last."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'{workdir}: no such directory')
  has_config = os.path.isfile(os.path.join(workdir, CONFIG))
  if has_config and os.path.isdir(os.path.join(workdir, CHECKPOINTS)):
    return workdir
  stages = [os.path.join(workdir, d) for d in sorted(os.listdir(workdir))
            if os.path.isfile(os.path.join(workdir, d, CONFIG))
            and os.path.isdir(os.path.join(workdir, d, CHECKPOINTS))]
  if has_config and not stages:
    return workdir  # a run that has not checkpointed yet: load_run says so
  if not stages:
    raise FileNotFoundError(f'{workdir}: no config.json and checkpoints here nor in a stage '
                            'sub-folder (not a vaflax workdir, or its training never started)')

  def finished(d):
    f = os.path.join(d, 'final_metrics.json')
    return (os.path.exists(f), os.path.getmtime(f if os.path.exists(f) else os.path.join(d, CHECKPOINTS)))

  chosen = max(stages, key=finished)
  print(f'{workdir} is a multi-stage workdir (stages: {", ".join(os.path.basename(s) for s in stages)});'
        f' using {os.path.basename(chosen)}, the stage that finished last. Pass '
        f'{chosen} or another stage to choose.', file=sys.stderr)
  return chosen


def _parse_value(text: str, current):
  if isinstance(current, bool):
    if text.lower() in ('1', 'true', 'yes'):
      return True
    if text.lower() in ('0', 'false', 'no'):
      return False
    raise ValueError(f'expected a boolean, got {text!r}')
  if isinstance(current, int):
    return int(text)
  if isinstance(current, float):
    return float(text)
  if isinstance(current, str):
    return text
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config: ml_collections.ConfigDict, overrides) -> None:
  """Applies 'a.b=value' strings in place; the value takes the type of the current field."""
  for item in overrides:
    key, eq, text = item.partition('=')
    if not eq:
      raise ValueError(f'--config.{item}: expected --config.<field>=<value>')
    node = config
    *path, last = key.split('.')
    try:
      for p in path:
        node = node[p]
      current = node[last]
    except (KeyError, AttributeError, TypeError):
      raise ValueError(f'--config.{key}: the run config has no field {key!r}') from None
    try:
      node[last] = _parse_value(text, current)
    except (ValueError, TypeError) as e:
      raise ValueError(f'--config.{key}={text}: {e}') from None


def load_config(workdir: str, overrides=()) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG)
  try:
    with open(path) as f:
      config = ml_collections.ConfigDict(json.load(f))
  except FileNotFoundError:
    raise FileNotFoundError(f'{path}: no such file (not a vaflax workdir?)') from None
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: not valid JSON ({e})') from None
  for key in ('task', 'model_name', 'model', 'input'):
    if key not in config:
      raise ValueError(f'{path}: no {key!r} field; is this the config.json of a vaflax run?')
  apply_overrides(config, overrides)
  return config


# --- Loading a run -------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
  """A restored run. `state` is the model's; `opt_state` is None unless asked for."""

  workdir: str
  config: ml_collections.ConfigDict
  step: int
  mesh: jax.sharding.Mesh
  graphdef: object
  state: object
  state_sharding: object
  opt_state: object = None
  meta: dict = dataclasses.field(default_factory=dict)

  def model(self) -> nnx.Module:
    """The model in eval mode (BatchNorm running averages, no dropout)."""
    model = nnx.merge(self.graphdef, self.state)
    model.eval()
    return model

  def weights(self) -> dict:
    """{'a/b/kernel': array} of the parameters and BatchNorm statistics."""
    return ckpt_lib.flat_weights(self.state)


def load_run(workdir: str, step: int | None = None, *, with_optimizer: bool = False,
             config=None, overrides=(), mesh=None, data_iter=None,
             expected_meta: dict | None = None) -> Run:
  """Restores the run in `workdir` (a multi-stage workdir: its last finished stage).

  `config` replaces workdir/config.json (a resuming run passes its own); `overrides` are
  'a.b=value' strings applied to the loaded config. `data_iter` (a Grain iterator) is set to the
  saved position. The state is restored straight into its abstract shardings: no throwaway
  initialisation, no optimizer state unless `with_optimizer`.
  """
  workdir = resolve_workdir(workdir) if config is None else os.path.abspath(workdir)
  if config is None:
    config = load_config(workdir, overrides)
  mesh = mesh or sharding.make_mesh(config.mesh)
  tx = optim.make_optimizer(config, optim.restore_schedule) if with_optimizer else None
  graphdef, state, state_sh = build_state(config, mesh, tx, init=False)
  model_like, opt_like = (state[0], state[1]) if with_optimizer else (state, None)
  ckpt_dir = os.path.join(workdir, CHECKPOINTS)
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f'{ckpt_dir}: no checkpoints (has the run trained a step?)')
  mngr = ckpt_lib.manager(ckpt_dir, async_save=False)
  try:
    steps = mngr.all_steps()
    if not steps:
      raise FileNotFoundError(f'{ckpt_dir}: no complete checkpoint')
    if step is None:
      step = max(steps)
    elif step not in steps:
      raise ValueError(f'checkpoint step {step}: {ckpt_dir} has steps {sorted(steps)}')
    model_state, opt_state, meta = ckpt_lib.restore(
        mngr, model_like, opt_like, data_iter, step=step,
        expected_meta=expected_meta or {'model_name': config.model_name, 'task': config.task})
  finally:
    mngr.close()
  if with_optimizer:
    graphdef_model = nnx.graphdef(nnx.merge(graphdef, state)[0])
    return Run(workdir, config, int(step), mesh, graphdef_model, model_state, state_sh[0],
               opt_state, meta)
  return Run(workdir, config, int(step), mesh, graphdef, model_state, state_sh, None, meta)
