"""The multi-stage recipe of Zhang et al. 2023 (ABAW5): MAE -> VA fine-tuning -> fusion.

`config.recipe = 'mae_va'` (configs/mae_va.py); vaflax/stages.py trains the stages in order,
each with the generic loop on its own sub-workdir, each initialised from an earlier one through
init_from's path mapping:

  pretrain           MAE on face images                 (skipped when config.init_from is set)
  finetune           vit.Model, `encoder` from the MAE's (or config.init_from's) `encoder`
  fusion_video_only  fusion.Model, use_audio=False      (`visual` = the fine-tuned `encoder`)
  fusion             fusion.Model with the audio branch (`visual` = the fine-tuned `encoder`)

then evaluates the fusion and video-only checkpoints on `config.test_split` when set, and writes
one record with the final numbers of every stage (workdir/final_metrics.json).
"""

from __future__ import annotations

import os

import jax

from vaflax import runs, stages, train, writers
from vaflax.data import pipeline

STAGES = ('pretrain', 'finetune', 'fusion_video_only', 'fusion')


def recipe_stages(config, workdir: str) -> list[stages.Stage]:
  encoder_source = config.init_from.split(':')[0] or os.path.join(workdir, 'pretrain')
  finetuned = os.path.join(workdir, 'finetune')
  init = {'pretrain': '', 'finetune': f'{encoder_source}:encoder=encoder',
          'fusion_video_only': f'{finetuned}:encoder=visual', 'fusion': f'{finetuned}:encoder=visual'}
  return [stages.Stage(name, stages.stage_config(config[name], init_from=init[name]))
          for name in STAGES if not (name == 'pretrain' and config.init_from)]


def evaluate_checkpoint(stage_workdir: str, split: str, prefix: str) -> dict:
  """Metrics of a stage's final checkpoint on `split` (e.g. the test split after training)."""
  run = runs.load_run(stage_workdir)
  data = pipeline.EvalData(run.config, split, process_index=jax.process_index(),
                           process_count=jax.process_count())
  eval_step = train.make_eval_step(run.config, run.graphdef, run.state_sharding, run.mesh)
  metrics, _ = train.evaluate(eval_step, run.mesh, run.state, data, prefix=prefix)
  return metrics


def _curve_ends(stage_workdir: str, key: str) -> tuple[float | None, float | None]:
  vals = [r[key] for r in writers.read_metrics(stage_workdir) if r.get(key) is not None]
  return (vals[0], vals[-1]) if vals else (None, None)


def summarize(config, workdir: str, results: dict[str, dict]) -> dict:
  """One flat record: the fusion stage's val/* unprefixed, the other stages prefixed; with
  config.test_split, fusion and video-only scored on it too."""
  results = {k: dict(v) for k, v in results.items()}
  if config.test_split:
    for name in ('fusion_video_only', 'fusion'):
      print(f'[mae_va] evaluating {name} on the {config.test_split!r} split', flush=True)
      results[name].update(evaluate_checkpoint(os.path.join(workdir, name), config.test_split,
                                               prefix=f'{config.test_split}/'))
  rec = {}
  prefixes = {'pretrain': 'pretrain/', 'finetune': 'finetune/',
              'fusion_video_only': 'video_only/', 'fusion': ''}
  for name, metrics in results.items():
    for k, v in metrics.items():
      if k.startswith(('val/', 'test/')) and isinstance(v, int | float):
        rec[prefixes[name] + k] = v
    if 'train_seconds' in metrics:
      rec[f'time/{name}_seconds'] = metrics['train_seconds']
  if 'pretrain' in results:  # the reconstruction loss at the start and the end of pretraining
    first, last = _curve_ends(os.path.join(workdir, 'pretrain'), 'train/loss')
    rec['pretrain/train/loss_first'], rec['pretrain/train/loss_last'] = first, last
  for k in ('val/ccc_valence', 'val/ccc_arousal', 'val/ccc_mean', 'test/ccc_valence',
            'test/ccc_arousal', 'test/ccc_mean'):
    if k in rec and 'video_only/' + k in rec:  # what the audio branch adds
      rec['audio_gain/' + k] = rec[k] - rec['video_only/' + k]
  print('[mae_va] final: ' + ', '.join(
      f'{k}={v:.4f}' for k, v in rec.items()
      if v is not None and 'per_video' not in k
      and k.endswith(('ccc_valence', 'ccc_arousal', '/loss'))), flush=True)
  return rec


RECIPE = stages.register(stages.Recipe('mae_va', recipe_stages, summarize))
