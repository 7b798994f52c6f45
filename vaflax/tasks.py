"""Tasks: what a method trains (loss) and reports (predictions), registered by name.

A task module in vaflax/trainers/ registers one `Task`; `config.task` names it. The generic loop
(vaflax/train.py) calls only these fields, so a new method is a new Task, not a new loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  # (model, batch, rng, config) -> (scalar loss, {name: scalar metric})
  loss_fn: Callable
  # (model, batch, config) -> {'va': ..., optional 'quadrant_logits', 'va_members', 'eval_<x>'}
  predict_fn: Callable
  # (config, model_class, rngs) -> the model, when the task wraps config.model (distillation)
  make_model: Callable | None = None
  # (setup, state, eval_data, workdir, step) -> extra metrics after each evaluation (MAE PNGs)
  on_eval: Callable | None = None
  # True when predict_fn applies config.eval.flip_tta itself (EmoFAN averages the heatmaps of the
  # image and its mirror before decoding landmarks); otherwise `predict_fn` below wraps it.
  mirrors_itself: bool = False


class Registry:
  """Name -> object, filled when vaflax/trainers/ is imported (each module registers its own)."""

  def __init__(self, field: str):
    self.field = field  # the config field that names an entry, for error messages
    self.entries: dict[str, object] = {}

  def register(self, name: str, obj):
    if self.entries.get(name, obj) is not obj:
      raise ValueError(f'{self.field} {name!r} registered twice')
    self.entries[name] = obj
    return obj

  def get(self, name: str):
    import vaflax.trainers  # noqa: F401, PLC0415 -- registers every task and recipe

    if name not in self.entries:
      raise ValueError(f'{self.field}={name!r}: no such entry; known: '
                       f'{", ".join(sorted(self.entries))}')
    return self.entries[name]


TASKS = Registry('config.task')


def register(task: Task) -> Task:
  return TASKS.register(task.name, task)


def get(name: str) -> Task:
  return TASKS.get(name)


def predict_fn(config) -> Callable:
  """The task's predict_fn under the run's evaluation rules, the one place they are applied:
  with `config.eval.flip_tta` each output is the mean over the input and its mirror
  (vaflax/tta.py). Training's evaluation, vaflax.evaluate and vaflax.predict all call this; their
  `--flip_tta` flags set `config.eval.flip_tta`."""
  from vaflax import tta  # noqa: PLC0415

  task = get(config.task)
  if flip_tta(config) and not task.mirrors_itself:
    return tta.flip_tta(task.predict_fn)
  return task.predict_fn


def flip_tta(config) -> bool:
  """config.eval.flip_tta; False for a run whose config predates the field."""
  return bool(config.get('eval', {}).get('flip_tta', False))
