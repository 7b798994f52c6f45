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


_TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
  if task.name in _TASKS and _TASKS[task.name] is not task:
    raise ValueError(f'task {task.name!r} registered twice')
  _TASKS[task.name] = task
  return task


def get(name: str) -> Task:
  import vaflax.trainers  # noqa: F401, PLC0415 -- registers every task on first use

  if name not in _TASKS:
    raise ValueError(f'config.task={name!r}: no such task; known: {", ".join(sorted(_TASKS))}')
  return _TASKS[name]
