"""Tasks: what a method trains (loss) and reports (predictions), listed by name in one place.

Each module of this package defines one method's plain functions (`loss_fn`, `predict_fn`,
...); this one lists every task (`TASKS`, explicit imports: no registration on import, no
import inside a function), and `config.task` names one. The generic loop (vaflax/train.py)
calls only these fields, so a new method is a new Task, not a new loop. Inference
(vaflax/runs.py, predict, evaluate) reads the same entries for a run's model and predictions;
nothing here imports the training layer. Multi-stage recipes are in vaflax/recipes.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from vaflax import tta
from vaflax.tasks import distill, emofan, fusion, mae, supervised


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  # (model, batch, rng, config) -> (scalar loss, {name: scalar metric})
  loss_fn: Callable
  # (model, batch, config) -> {'va': ..., optional 'quadrant_logits', 'va_members', 'eval_<x>'}
  predict_fn: Callable
  # (config, model_class, rngs) -> the model, when the task wraps config.model (distillation)
  make_model: Callable | None = None
  # (setup) -> on_eval(state, eval_data, workdir, step) -> extra metrics after each evaluation
  # (MAE's reconstruction PNGs); built once per run by the loop, so whatever it compiles is
  # compiled once and lives as long as the run.
  make_on_eval: Callable | None = None
  # True when predict_fn applies config.eval.flip_tta itself (EmoFAN averages the heatmaps of the
  # image and its mirror before decoding landmarks); otherwise `predict_fn` below wraps it.
  mirrors_itself: bool = False


TASKS: dict[str, Task] = {t.name: t for t in (
    Task('supervised', supervised.loss_fn, supervised.predict_fn),
    Task('fusion', fusion.loss_fn, fusion.predict_fn),
    # a converted speech encoder (vaflax/convert/speech.py): a frozen feature extractor
    Task('speech', fusion.speech_loss_fn, fusion.speech_predict_fn),
    Task('mae', mae.loss_fn, mae.predict_fn, make_on_eval=mae.make_on_eval),
    Task('emofan', emofan.loss_fn, emofan.predict_fn, mirrors_itself=True),
    Task('distill', distill.loss_fn, distill.predict_fn, make_model=distill.make_model),
)}


def get(name: str) -> Task:
  if name not in TASKS:
    raise ValueError(f'config.task={name!r}: no such task; known: {", ".join(sorted(TASKS))}')
  return TASKS[name]


def predict_fn(config) -> Callable:
  """The task's predict_fn under the run's evaluation rules, the one place they are applied:
  with `config.eval.flip_tta` each output is the mean over the input and its mirror
  (vaflax/tta.py). Training's evaluation, vaflax.evaluate and vaflax.predict all call this; their
  `--flip_tta` flags set `config.eval.flip_tta`."""
  task = get(config.task)
  if tta.enabled(config) and not task.mirrors_itself:
    return tta.flip_tta(task.predict_fn)
  return task.predict_fn
