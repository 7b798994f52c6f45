"""The one stage runner: a recipe of several training stages run in order, each resumable alone.

A recipe (vaflax/recipes.py lists them; `config.recipe` names one) lists its stages: a name, a
standalone config, and where the stage's first weights come from, as typed values: an earlier
stage by name (`FromStage`) or any run's workdir (`runs.WeightSource`, e.g. the user's
config.init_from), each with its path mapping. The runner resolves them to workdirs, checks that
a named stage comes earlier, and writes them into the stage config's `init_from`, so its
config.json records them and the loop loads them (vaflax/train.py `init_from`). Stage k trains
in workdir/<name> with the generic loop. One rule says a stage is finished: its
final_metrics.json records at least its config.total_steps (or exists, for an epoch-based
stage). A re-run skips finished stages and resumes the current one from its own checkpoints. At
the end the recipe's `summarize` turns the stages' final metrics into one record:
workdir/final_metrics.json and a metrics.jsonl line.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import ml_collections

from vaflax import runs, train, writers


@dataclasses.dataclass(frozen=True)
class FromStage:
  """Weights from an earlier stage of the same recipe (its final checkpoint), mapped by
  (SOURCE prefix, TARGET prefix) pairs; None: every path to the same path."""

  stage: str
  mapping: tuple[tuple[str, str], ...] | None = None


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  config: ml_collections.ConfigDict
  # Where the stage's first weights come from, in order (a later source overwrites an earlier
  # one where both fill a weight); () starts from the model's initialisation.
  init: tuple[FromStage | runs.WeightSource, ...] = ()


@dataclasses.dataclass(frozen=True)
class Recipe:
  name: str
  # (config, workdir) -> the stages in order
  stages: Callable[[ml_collections.ConfigDict, str], list[Stage]]
  # (config, workdir, {stage name: final metrics}) -> the recipe's record (flat, numbers)
  summarize: Callable[[ml_collections.ConfigDict, str, dict], dict]


def stage_config(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """A standalone copy of `config` (references resolved, so its config.json has plain values)
  with `fields` set. Its init_from is emptied: the runner writes it from `Stage.init`, so a
  recipe states every source there (the user's `config.init_from` too, parsed with
  runs.parse_init_from) and none travels unseen."""
  if 'init_from' in fields:
    raise ValueError('stage_config: give a stage its weights with Stage(init=...), not init_from')
  c = ml_collections.ConfigDict(config.to_dict())
  for k, v in fields.items():
    c[k] = v
  c.init_from = ''
  return c


def resolve(stages: list[Stage], workdir: str) -> list[Stage]:
  """The stages with every `FromStage` turned into the workdir of that stage and written into
  the stage config's init_from (an error names a stage that is not an earlier one)."""
  out, seen = [], []
  for stage in stages:
    if stage.config.get('init_from'):
      raise ValueError(f'recipe stage {stage.name!r}: its config sets init_from '
                       f'({stage.config.init_from!r}); a recipe gives it as Stage(init=...)')
    sources = []
    for src in stage.init:
      if isinstance(src, FromStage):
        if src.stage not in seen:
          raise ValueError(f'recipe stage {stage.name!r} starts from stage {src.stage!r}, which is '
                           f'not an earlier stage (earlier: {", ".join(seen) or "none"})')
        src = runs.WeightSource(os.path.join(workdir, src.stage), src.mapping)
      sources.append(src)
    config = ml_collections.ConfigDict(stage.config.to_dict())
    config.init_from = runs.format_init_from(sources)
    out.append(Stage(stage.name, config, tuple(sources)))
    seen.append(stage.name)
  return out


def plan(recipe: Recipe, config, workdir: str) -> list[Stage]:
  """The stages `run` trains, in order, their sources resolved (nothing is trained or written)."""
  return resolve(recipe.stages(config, workdir), workdir)


def finished(stage_workdir: str, config) -> dict | None:
  """The stage's final metrics if it finished (for its current total_steps), else None."""
  rec = writers.read_final_metrics(stage_workdir)
  if rec is None:
    return None
  if config.total_steps and int(rec.get('step', 0)) < int(config.total_steps):
    return None  # total_steps was raised since: train on
  return rec


def run(recipe: Recipe, config, workdir: str) -> dict:
  """Runs `recipe`'s stages in workdir/<stage>; returns the recipe's summary."""
  workdir = runs.prepare_workdir(workdir, config)
  stages = plan(recipe, config, workdir)
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
