"""A run: its workdir, its config and its model; the one way to load one and to write its folder.

`load_run(workdir)` reads `workdir/config.json`, builds the model's abstract state (shapes and
shardings only: nothing is initialised or compiled) and restores the model's weights into it;
`Run.model()` is the model in eval mode. init_from, stage chaining, evaluate, predict, abaw,
export and the public API (vaflax/__init__.py) all load through here. This is the inference
layer (docs/architecture.md): it imports no training code, and loading a run builds no
optimizer (the loop restores its optimizer state itself, vaflax/train.py `restore`).

`WeightSource` is where a model's first weights come from (`config.init_from`): a workdir and a
mapping of parameter path prefixes, one typed value that recipes compose and the loop loads.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys

import jax
import ml_collections
from flax import nnx

from vaflax import checkpoint as ckpt_lib
from vaflax import cli, sharding, tasks

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


def build_state(config, mesh, create=None, *, init: bool = True):
  """(graphdef, state, state_sharding) of what `create()` builds (default: the model of
  `config`; the loop passes one that builds (model, optimizer)), sharded by the config's rules.

  With init=False the state is abstract (ShapeDtypeStructs carrying their shardings): a restore
  target that costs no initialisation and no compile."""
  if create is None:
    create = lambda: make_model(config, nnx.Rngs(config.seed))
  graphdefs = []

  def init_state():
    graphdef, state = nnx.split(create())
    graphdefs.append(graphdef)  # static: the same in every trace
    return state

  # One trace of the construction serves both: jax.jit reuses the trace jax.eval_shape made of
  # the same function (the shardings are applied when lowering).
  abs_state = jax.eval_shape(init_state)
  graphdef = graphdefs[0]
  state_sh = sharding.state_shardings(abs_state, mesh, config.sharding_rules)
  if init:
    state = jax.jit(init_state, out_shardings=state_sh)()
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


# The one --config.x=y parser (ml_collections' semantics), re-exported for the run's config.json.
apply_overrides = cli.apply_overrides


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
  """A restored run: its model's state, on its mesh."""

  workdir: str
  config: ml_collections.ConfigDict
  step: int
  mesh: jax.sharding.Mesh
  graphdef: object
  state: object
  state_sharding: object
  meta: dict = dataclasses.field(default_factory=dict)

  def model(self) -> nnx.Module:
    """The model in eval mode (BatchNorm running averages, no dropout)."""
    model = nnx.merge(self.graphdef, self.state)
    model.eval()
    return model

  def weights(self) -> dict:
    """{'a/b/kernel': array} of the parameters and BatchNorm statistics."""
    return ckpt_lib.flat_weights(self.state)


def load_run(workdir: str, step: int | None = None, *, overrides=(), mesh=None) -> Run:
  """Restores the model of the run in `workdir` (a multi-stage workdir: its last finished stage).

  `overrides` are 'a.b=value' strings applied to the loaded config. The state is restored
  straight into its abstract shardings: no throwaway initialisation, and the optimizer's state
  (a separate checkpoint item) is not read.
  """
  workdir = resolve_workdir(workdir)
  config = load_config(workdir, overrides)
  mesh = mesh or sharding.make_mesh(config.mesh)
  graphdef, state, state_sh = build_state(config, mesh, init=False)
  ckpt_dir = os.path.join(workdir, CHECKPOINTS)
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f'{ckpt_dir}: no checkpoints (has the run trained a step?)')
  mngr = checkpoint_manager(workdir, async_save=False)
  try:
    steps = mngr.all_steps()
    if not steps:
      raise FileNotFoundError(f'{ckpt_dir}: no complete checkpoint')
    if step is None:
      step = max(steps)
    elif step not in steps:
      raise ValueError(f'checkpoint step {step}: {ckpt_dir} has steps {sorted(steps)}')
    model_state, _, meta = ckpt_lib.restore(mngr, state, step=step,
                                            expected_meta=checkpoint_meta(config))
  finally:
    mngr.close()
  return Run(workdir, config, int(step), mesh, graphdef, model_state, state_sh, meta)


# --- Writing a run directory ---------------------------------------------------------------------
# The one writer of the layout load_run reads: config.json and checkpoints/<step>/{model, meta,
# optimizer, data_iter} (vaflax/checkpoint.py writes the items). The loop writes its folder with
# prepare_workdir and checkpoint_manager; vaflax.convert and the benchmarks write a finished
# model with write_run.


def checkpoint_meta(config) -> dict:
  """What every checkpoint records of the model it holds; load_run and a resuming loop check it
  against the config that reads it."""
  return {'model_name': config.model_name, 'task': config.task}


def checkpoint_manager(workdir: str, *, max_to_keep: int = 3, async_save: bool = True):
  """The CheckpointManager of workdir/checkpoints. One per workdir: the loop saves and resumes
  through the one it opens (vaflax/train.py)."""
  return ckpt_lib.manager(os.path.join(workdir, CHECKPOINTS), max_to_keep=max_to_keep,
                          async_save=async_save)


def write_run(workdir: str, config, model_state, meta: dict | None = None) -> str:
  """A run directory of `model_state` (an nnx.State of the model of `config`): config.json and
  the step-0 checkpoint of the model, with `meta` added to its record. Refuses a workdir that
  holds checkpoints already. Returns its absolute path."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  ckpt_dir = os.path.join(workdir, CHECKPOINTS)
  if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
    raise FileExistsError(f'{workdir} holds checkpoints already: choose an empty --workdir')
  prepare_workdir(workdir, config)
  with checkpoint_manager(workdir, async_save=False) as mngr:
    ckpt_lib.save(mngr, 0, model_state, meta=dict(meta or {}, **checkpoint_meta(config)),
                  force=True)
    mngr.wait_until_finished()
  return workdir


def prepare_workdir(workdir: str, config) -> str:
  """Creates `workdir` (checked writable) and writes its config.json; returns its absolute path.
  The loop, the stage runner and write_run start their run directories here."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test_{jax.process_index()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise PermissionError(
        f'workdir {workdir} is not writable ({e.strerror}): choose another --workdir, or fix its '
        'permissions / free disk space') from None
  write_config(workdir, config)
  return workdir


def write_config(workdir: str, config) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, CONFIG), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


# --- Where a model's first weights come from -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WeightSource:
  """A run to copy weights from (`workdir`, any vaflax run; vaflax/runs.py finds its stage) and
  how its parameter paths map onto the model's: (SOURCE prefix, TARGET prefix) pairs
  (checkpoint.transfer_weights), or None when none was given (every path to the same path,
  unless a recipe says otherwise: vaflax/recipes.py)."""

  workdir: str
  mapping: tuple[tuple[str, str], ...] | None = None

  def __post_init__(self):
    if not self.workdir:
      raise ValueError('init_from: a weight source needs a workdir')
    if any(c in self.workdir for c in ':;'):
      raise ValueError(f'init_from: workdir {self.workdir!r} contains ":" or ";", which '
                       'config.init_from uses as separators; move or link it elsewhere')

  def pairs(self) -> list[tuple[str, str]]:
    """The mapping transfer_weights takes (identity when none was given)."""
    return list(self.mapping) if self.mapping is not None else [('', '')]

  def under(self, prefix: str) -> WeightSource:
    """The same source with every target placed under `prefix` (a sub-model, e.g.
    'students/0' in distillation)."""
    return WeightSource(self.workdir, tuple((src, '/'.join(x for x in (prefix, dst) if x))
                                            for src, dst in self.pairs()))

  def __str__(self) -> str:
    if self.mapping is None:
      return self.workdir
    return f'{self.workdir}:' + ','.join(f'{src}={dst}' for src, dst in self.mapping)


def parse_init_from(text: str) -> tuple[WeightSource, ...]:
  """config.init_from -> its sources. The text is one or more sources separated by ';', each a
  workdir with an optional mapping after ':' of SOURCE=TARGET path prefixes, several separated
  by ',' ('' is the root): 'W/mae:encoder=encoder', 'W/teacher:=teacher;W/cnn'. The inverse of
  `format_init_from`."""
  out = []
  for part in filter(None, (p.strip() for p in (text or '').split(';'))):
    path, colon, mapping = part.partition(':')
    out.append(WeightSource(path.strip(), tuple(ckpt_lib.parse_mapping(mapping))
                            if colon and mapping.strip() else None))
  return tuple(out)


def format_init_from(sources) -> str:
  """The config.init_from text of `sources` (what a stage's config.json records)."""
  return ';'.join(str(s) for s in sources)
