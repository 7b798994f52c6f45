"""The one stage runner: a recipe of several training stages run in order, each resumable alone.

A recipe (`config.recipe`, registered by its module in vaflax/trainers/) lists its stages: a
name and a standalone config each, whose `init_from` names earlier stages' workdirs (with a
path mapping, vaflax/train.py's `init_from`). Stage k trains in workdir/<name> with the generic
loop. One rule says a stage is finished: its final_metrics.json records at least its
config.total_steps (or exists, for an epoch-based stage). A re-run skips finished stages and
resumes the current one from its own checkpoints. At the end the recipe's `summarize` turns the
stages' final metrics into one record: workdir/final_metrics.json and a metrics.jsonl line.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import ml_collections

from vaflax import tasks, train, writers


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  config: ml_collections.ConfigDict


@dataclasses.dataclass(frozen=True)
class Recipe:
  name: str
  # (config, workdir) -> the stages in order
  stages: Callable[[ml_collections.ConfigDict, str], list[Stage]]
  # (config, workdir, {stage name: final metrics}) -> the recipe's record (flat, numbers)
  summarize: Callable[[ml_collections.ConfigDict, str, dict], dict]


RECIPES = tasks.Registry('config.recipe')


def register(recipe: Recipe) -> Recipe:
  return RECIPES.register(recipe.name, recipe)


def get(name: str) -> Recipe:
  return RECIPES.get(name)


def stage_config(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """A standalone copy of `config` (references resolved, so its config.json has plain values)
  with `fields` set."""
  c = ml_collections.ConfigDict(config.to_dict())
  for k, v in fields.items():
    c[k] = v
  return c


def finished(stage_workdir: str, config) -> dict | None:
  """The stage's final metrics if it finished (for its current total_steps), else None."""
  rec = writers.read_final_metrics(stage_workdir)
  if rec is None:
    return None
  if config.total_steps and int(rec.get('step', 0)) < int(config.total_steps):
    return None  # total_steps was raised since: train on
  return rec


def run(config, workdir: str) -> dict:
  """Runs `config.recipe`'s stages in workdir/<stage>; returns the recipe's summary."""
  recipe = get(config.recipe)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  train.prepare_workdir(workdir, config)
  stages = recipe.stages(config, workdir)
  results, trained = {}, False
  for k, stage in enumerate(stages, 1):
    swd = os.path.join(workdir, stage.name)
    done = finished(swd, stage.config)
    if done is not None:
      print(f'[{recipe.name}] stage {k}/{len(stages)} {stage.name}: finished earlier ({swd})',
            flush=True)
      results[stage.name] = done
      continue
    print(f'[{recipe.name}] stage {k}/{len(stages)} {stage.name}: training in {swd}'
          + (f' (init_from {stage.config.init_from})' if stage.config.init_from else ''), flush=True)
    train.train_and_evaluate(stage.config, swd)
    trained = True
    results[stage.name] = finished(swd, stage.config) or {}
  summary = writers.read_final_metrics(workdir)
  if trained or summary is None:
    rec = recipe.summarize(config, workdir, results)
    step = max(int(r.get('step', 0)) for r in results.values())
    writer = writers.MetricWriter(workdir, tensorboard=False)
    writer.write(step, rec)
    writer.close()
    summary = writers.write_final_metrics(workdir, step, rec)
  else:
    print(f'[{recipe.name}] all stages finished earlier; final metrics in {workdir}', flush=True)
  return summary
