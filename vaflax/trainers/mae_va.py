"""The multi-stage recipe of Zhang et al. 2023 (ABAW5): MAE -> VA fine-tuning -> fusion.

`run(config, workdir)` trains the stages of configs/mae_va.py in order, each with the generic
loop (`train.train_and_evaluate`) on its own sub-workdir, each initialised from the previous:

  pretrain           MAE on face images                 (skipped when config.init_from is set)
  finetune           vit.Model from the MAE encoder     (decoder dropped, new head)
  fusion_video_only  fusion.Model, use_audio=False      (visual encoder = the fine-tuned ViT)
  fusion             fusion.Model with the audio branch (visual encoder = the fine-tuned ViT)

Between stages the ViT encoder of the finished stage is exported as a model-only checkpoint
under the name the next model uses (`encoder` for vit.Model, `visual` for fusion.Model):
workdir/finetune_init and workdir/fusion_init; the next stage's `init_from` points there.

then evaluates (the fusion and video-only checkpoints on `config.test_split` when set) and
writes one record with the final numbers of every stage to workdir/metrics.jsonl and
workdir/final_metrics.json.

Resuming: a stage whose final_metrics.json records its last step is finished and skipped;
otherwise the loop resumes it from its own checkpoints (or starts it). So re-running the same
command after a crash or preemption (exit code 75) continues the current stage.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
from flax import nnx

from vaflax import checkpoint as ckpt_lib
from vaflax import train, writers
from vaflax.data import pipeline

STAGES = ('pretrain', 'finetune', 'fusion_video_only', 'fusion')
FINAL = 'final_metrics.json'  # written by train_and_evaluate when a stage reaches its last step


def stage_configs(config, workdir: str) -> dict[str, ml_collections.ConfigDict]:
  """Stage name -> a standalone copy of its sub-config with `init_from` wired to the export of
  the stage before. Copies: to_dict resolves the references that tie the stages to config.vit
  and config.image_size, so each stage's config.json records plain values."""
  out = {}
  for name in STAGES:
    if name == 'pretrain' and config.get('init_from'):
      continue
    sc = ml_collections.ConfigDict(config[name].to_dict())
    sc.init_from = {'pretrain': '', 'finetune': os.path.join(workdir, 'finetune_init')}.get(
        name, os.path.join(workdir, 'fusion_init'))
    out[name] = sc
  return out


def export_encoder(src_workdir: str, dst: str, name: str, src_config=None) -> None:
  """Writes the ViT encoder of the run in `src_workdir` (a vit.Model, mae.Model or any model
  with `.encoder`) as a model-only checkpoint in `dst`, its parameters under `name`
  ('encoder' for vit.Model, 'visual' for fusion.Model), for the next stage's `init_from`.
  The source's config is `src_config` or its workdir/config.json. Done once (kept on re-runs)."""
  mngr = ckpt_lib.manager(os.path.join(dst, 'checkpoints'), async_save=False)
  try:
    if mngr.latest_step() is not None:
      return
    if src_config is None:
      path = os.path.join(src_workdir, 'config.json')
      if not os.path.exists(path):
        raise FileNotFoundError(f'init_from={src_workdir}: no config.json (not a vaflax workdir)')
      with open(path) as f:
        src_config = ml_collections.ConfigDict(json.load(f))
    setup, state = train.restore_workdir(src_config, src_workdir)
    model, _ = nnx.merge(setup.graphdef, state)
    if not hasattr(model, 'encoder'):
      raise ValueError(f'{src_workdir}: its {type(model).__name__} has no ViT `encoder` to export')
    params = nnx.to_pure_dict(nnx.state(model.encoder, nnx.Param))
    # A pure dict (no Variable wrappers) in the layout of a training state: {'0': model}.
    ckpt_lib.save(mngr, 0, {'0': {name: params}}, None,
                  {'exported_from': src_workdir, 'model_name': 'vit_encoder'}, force=True)
    mngr.wait_until_finished()
  finally:
    mngr.close()


def finished_metrics(stage_config, stage_workdir: str) -> dict | None:
  """The stage's final metrics if it finished (its last step is recorded), else None."""
  path = os.path.join(stage_workdir, FINAL)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    rec = json.load(f)
  want = int(stage_config.total_steps)
  if want and int(rec.get('step', 0)) < want:  # total_steps was raised since: train on
    return None
  return rec


def evaluate_checkpoint(stage_config, stage_workdir: str, split: str, prefix: str) -> dict:
  """Metrics of a stage's final checkpoint on `split` (e.g. the test split after training)."""
  data = pipeline.EvalData(stage_config, split, process_index=jax.process_index(),
                           process_count=jax.process_count())
  setup, state = train.restore_workdir(stage_config, stage_workdir)
  metrics, _ = train.evaluate(setup, state, data, prefix=prefix)
  return metrics


def _curve_ends(stage_workdir: str, key: str) -> tuple[float | None, float | None]:
  vals = [r[key] for r in writers.read_metrics(stage_workdir) if r.get(key) is not None]
  return (vals[0], vals[-1]) if vals else (None, None)


def summarize(results: dict[str, dict], workdir: str) -> dict:
  """One flat record: the fusion stage's val/* unprefixed, the other stages prefixed."""
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
  return rec


def run(config, workdir: str) -> dict:
  workdir = os.path.abspath(os.path.expanduser(workdir))
  train.prepare_workdir(workdir, config)
  stages = stage_configs(config, workdir)
  results, trained = {}, False
  for name, sc in stages.items():
    swd = os.path.join(workdir, name)
    if name == 'finetune':  # the MAE encoder (this run's or config.init_from's) -> vit.Model
      src = config.init_from or os.path.join(workdir, 'pretrain')
      export_encoder(src, sc.init_from, 'encoder',
                     None if config.init_from else stages['pretrain'])
    elif name.startswith('fusion'):  # the fine-tuned ViT encoder -> fusion.Model.visual
      export_encoder(os.path.join(workdir, 'finetune'), sc.init_from, 'visual',
                     stages['finetune'])
    done = finished_metrics(sc, swd)
    if done is not None:
      print(f'[mae_va] stage {name}: finished earlier, skipped ({swd})', flush=True)
      results[name] = done
      continue
    print(f'[mae_va] stage {name}: training in {swd}'
          + (f' (init from {sc.init_from})' if sc.init_from else ''), flush=True)
    train.train_and_evaluate(sc, swd)
    trained = True
    results[name] = finished_metrics(sc, swd) or {}

  final_path = os.path.join(workdir, FINAL)
  if not trained and os.path.exists(final_path):
    with open(final_path) as f:
      rec = json.load(f)
    print(f'[mae_va] all stages finished earlier; final metrics in {final_path}', flush=True)
    return rec

  split = config.get('test_split', '')
  if split:
    for name in ('fusion_video_only', 'fusion'):
      print(f'[mae_va] evaluating {name} on the {split!r} split', flush=True)
      results[name] = dict(results[name], **evaluate_checkpoint(
          stages[name], os.path.join(workdir, name), split, prefix=f'{split}/'))
  rec = summarize(results, workdir)
  step = int(results['fusion'].get('step', 0))
  writer = writers.MetricWriter(workdir, tensorboard=False)
  writer.write(step, rec)
  writer.close()
  if jax.process_index() == 0:
    with open(final_path, 'w') as f:
      json.dump({'step': step, **rec}, f, indent=2)
  print('[mae_va] final: ' + ', '.join(
      f'{k}={v:.4f}' for k, v in rec.items()
      if v is not None and 'per_video' not in k
      and k.endswith(('ccc_valence', 'ccc_arousal', '/loss'))), flush=True)
  return rec
