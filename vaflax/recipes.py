"""The multi-stage recipes of vaflax, and their list (`RECIPES`; `config.recipe` names one).

Each recipe says which stages to train, with which configs, and where each stage's first
weights come from (typed: `stages.FromStage` for an earlier stage, `runs.WeightSource` for any
run, each with a path mapping), and how to summarise the stages' final metrics; vaflax/stages.py
runs it. A user's `config.init_from` is parsed once (runs.parse_init_from) and passed on with
its mapping: a source given without a mapping takes the recipe's default one.

  mae_va   Zhang et al. 2023 (ABAW5): MAE -> VA fine-tuning -> fusion (configs/mae_va.py)
  cnn_rnn  Deng, Chen, Shi 2020: a frame CNN, then a bi-GRU on its frozen features
           (configs/resnet_gru_va.py)
  distill  Deng, Chen, Shi 2020: a teacher, then N students distilled from it
           (configs/distill_va.py; the task is vaflax/tasks/distill.py)
  emofan   Toisoul et al. 2021: the FAN on landmarks, then the emotion head on the frozen FAN
           (configs/emofan_va.py:stage=two_stage)
"""

from __future__ import annotations

import os

import numpy as np

from vaflax import runs, scoring, stages, writers
from vaflax.stages import FromStage, Stage


def _user_sources(config, default_mapping=None) -> tuple[runs.WeightSource, ...]:
  """config.init_from's sources; one given without a mapping takes `default_mapping`."""
  return tuple(runs.WeightSource(s.workdir, default_mapping) if s.mapping is None else s
               for s in runs.parse_init_from(config.init_from))


def _own_init_unset(config, where: str) -> None:
  """A stage config whose init_from the recipe decides: an error if the user set it there."""
  if config.get('init_from'):
    raise ValueError(f'config.{where}.init_from={config.init_from!r}: the recipe sets where this '
                     'stage starts from; set config.init_from (the recipe\'s entry) instead')


# --- mae_va: MAE -> VA fine-tuning -> fusion (Zhang et al. 2023) -----------------------------------
#
#   pretrain           MAE on face images                 (skipped when config.init_from is set)
#   finetune           vit.Model, `encoder` from the MAE's (or config.init_from's) `encoder`
#   fusion_video_only  fusion.Model, use_audio=False      (`visual` = the fine-tuned `encoder`)
#   fusion             fusion.Model with the audio branch (`visual` = the fine-tuned `encoder`)
# then the fusion and video-only checkpoints are scored on `config.test_split` when set, and one
# record holds the final numbers of every stage (workdir/final_metrics.json).

MAE_VA_STAGES = ('pretrain', 'finetune', 'fusion_video_only', 'fusion')
ENCODER = (('encoder', 'encoder'),)
ENCODER_TO_VISUAL = (('encoder', 'visual'),)


def mae_va_stages(config, workdir: str) -> list[Stage]:
  del workdir
  for name in MAE_VA_STAGES[1:]:
    _own_init_unset(config[name], name)
  # The user's runs replace pretraining as the encoder's source (their mapping kept).
  encoder = _user_sources(config, ENCODER) or (FromStage('pretrain', ENCODER),)
  init = {'pretrain': runs.parse_init_from(config.pretrain.init_from), 'finetune': encoder,
          'fusion_video_only': (FromStage('finetune', ENCODER_TO_VISUAL),),
          'fusion': (FromStage('finetune', ENCODER_TO_VISUAL),)}
  return [Stage(name, stages.stage_config(config[name]), init[name])
          for name in MAE_VA_STAGES if not (name == 'pretrain' and config.init_from)]


def _curve_ends(stage_workdir: str, key: str) -> tuple[float | None, float | None]:
  vals = [r[key] for r in writers.read_metrics(stage_workdir) if r.get(key) is not None]
  return (vals[0], vals[-1]) if vals else (None, None)


def mae_va_summary(config, workdir: str, results: dict[str, dict]) -> dict:
  """One flat record: the fusion stage's val/* unprefixed, the other stages prefixed; with
  config.test_split, fusion and video-only scored on it too."""
  results = {k: dict(v) for k, v in results.items()}
  if config.test_split:
    for name in ('fusion_video_only', 'fusion'):
      print(f'[mae_va] evaluating {name} on the {config.test_split!r} split', flush=True)
      run = runs.load_run(os.path.join(workdir, name))
      results[name].update(scoring.score_split(run, config.test_split,
                                               prefix=f'{config.test_split}/')[0])
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


# --- cnn_rnn: a frame CNN, then a bi-GRU on its frozen features (Deng et al. 2020) --------------
#
#   cnn      the per-frame CNN (`config.cnn`: configs/resnet_va.py, single frames); skipped when
#            `config.init_from` names a trained CNN already
#   cnn_rnn  temporal.Model over windows of frames (the rest of `config`), its `backbone` and
#            `head/hidden` loaded from the CNN (parameter paths equal, models/temporal.py) and
#            frozen by `config.frozen`, as the paper's CNN-RNN
# Why two stages and not one joint training (measured, docs/deng2020.md): trained jointly from
# scratch on windows, the ResNet sees few clips per step (8 windows of one clip each instead of
# 32 independent frames) and the CNN-RNN ended below the frame CNN, pooled and within clips.
# The summary holds the CNN-RNN's val/* unprefixed and the CNN stage's as cnn/val/*: one run
# shows whether the temporal model beats the CNN it reads.


def cnn_rnn_stages(config, workdir: str) -> list[Stage]:
  del workdir
  gru = stages.stage_config(config, recipe='')
  del gru['cnn']
  if config.init_from:
    return [Stage('cnn_rnn', gru, _user_sources(config))]
  cnn = Stage('cnn', stages.stage_config(config.cnn), runs.parse_init_from(config.cnn.init_from))
  return [cnn, Stage('cnn_rnn', gru, (FromStage('cnn'),))]


def cnn_rnn_summary(config, workdir: str, results: dict) -> dict:
  del config, workdir
  rec = {}
  for name, prefix in (('cnn', 'cnn/'), ('cnn_rnn', '')):
    for k, v in results.get(name, {}).items():
      if k.startswith('val/') and isinstance(v, int | float):
        rec[prefix + k] = v
  for prefix in ('cnn/', ''):
    if f'{prefix}val/ccc_valence' in rec:
      print(f'[cnn_rnn] {prefix or "cnn_rnn/"}val: ' + ', '.join(
          f'{m}={rec[prefix + "val/" + m]:.4f}' for m in (
              'ccc_valence', 'ccc_arousal', 'per_video_ccc_valence', 'per_video_ccc_arousal')
          if prefix + 'val/' + m in rec), flush=True)
  return rec


# --- distill: a teacher, then N students distilled from it (Deng et al. 2020) --------------------
#
#   cnn       with `config.cnn` (arch=cnn_rnn) and no config.init_from: the binned frame CNN
#             whose backbone and head/hidden teacher and students read, frozen (config.frozen)
#   teacher   the supervised task on the model (binned), from config.init_from (or `cnn`)
#   students  the distill task: the teacher from stage 1 (frozen), the students from
#             config.init_from (or `cnn`) too (each student gets the same sources, under
#             students/k)


def distill_stages(config, workdir: str) -> list[Stage]:
  del workdir
  dc = config.distill
  user = _user_sources(config)
  first = []
  if 'cnn' in config and not user:
    first = [Stage('cnn', stages.stage_config(config.cnn),
                   runs.parse_init_from(config.cnn.init_from))]
    user = (FromStage('cnn'),)
  single = stages.stage_config(config, recipe='')
  if 'cnn' in single:
    del single['cnn']
  teacher = stages.stage_config(single, task='supervised',
                                total_steps=int(dc.teacher_total_steps),
                                total_epochs=float(dc.teacher_total_epochs))
  # The teacher stage's model sits under teacher/; each user source under every student.
  # (One source per run, its mapping repeated per student: each run is read once.)
  students_k = [f'students/{k}' for k in range(int(dc.num_students))]
  sources = (FromStage('teacher', (('', 'teacher'),)),) + tuple(
      _under_each(s, students_k) for s in user)
  # The teacher is fixed; a frozen part of the single model (config.frozen) stays frozen in
  # every student.
  frozen = 'teacher(/|$)' + (f'|students/\\d+/({config.frozen})' if config.frozen else '')
  students = stages.stage_config(single, task='distill', frozen=frozen)
  return first + [Stage('teacher', teacher, user), Stage('students', students, sources)]


def _under_each(source, prefixes):
  """`source` with its targets placed under each prefix (one source: its run is read once)."""
  pairs = [('', '')] if source.mapping is None else list(source.mapping)
  mapping = tuple((src, '/'.join(x for x in (p, dst) if x)) for p in prefixes for src, dst in pairs)
  if isinstance(source, FromStage):
    return FromStage(source.stage, mapping)
  return runs.WeightSource(source.workdir, mapping)


def distill_summary(config, workdir: str, results: dict) -> dict:
  """The students stage's val/* (ensemble, teacher, each student), plus the students' mean."""
  del workdir
  final = results['students']
  rec = {k: v for k, v in final.items() if k.startswith('val/')}
  n = int(config.distill.num_students)
  for m in ('ccc_valence', 'ccc_arousal', 'ccc_mean'):
    vals = [final.get(f'val/student{k}/{m}') for k in range(n)]
    if all(v is not None for v in vals):
      rec[f'val/student_mean/{m}'] = float(np.mean(vals))
  for name in ['teacher', 'student_mean'] + [f'student{k}' for k in range(n)]:
    if f'val/{name}/ccc_valence' in rec:
      print(f'{name:>12}: ccc_valence={rec[f"val/{name}/ccc_valence"]:.4f} '
            f'ccc_arousal={rec[f"val/{name}/ccc_arousal"]:.4f}', flush=True)
  if 'val/ccc_valence' in rec:
    print(f'{"ensemble":>12}: ccc_valence={rec["val/ccc_valence"]:.4f} '
          f'ccc_arousal={rec["val/ccc_arousal"]:.4f}', flush=True)
  return rec


# --- emofan: the FAN on landmarks, then the head on the frozen FAN (Toisoul et al. 2021) --------
#
#   landmarks  the FAN alone: heatmap loss only (VA and emotion weights 0; VA still scored)
#   head       the paper's second stage: the FAN from `landmarks`, frozen (no update, running BN
#              statistics); VA + emotions train the emotion head, which starts anew
# Both stages train for the config's steps with its other fields (configs/emofan_va.py).

FAN = (('fan', 'fan'),)


def emofan_stages(config, workdir: str) -> list[Stage]:
  del workdir
  if not config.loss.landmark_weight:
    raise ValueError('recipe emofan: config.loss.landmark_weight is 0, so its landmarks stage '
                     'would train nothing')
  landmarks = stages.stage_config(config, recipe='', frozen='')
  landmarks.loss.va_weight = landmarks.loss.emotion_weight = 0.0
  head = stages.stage_config(config, recipe='', frozen='fan(/|$)')
  head.loss.landmark_weight = 0.0  # reported only: the FAN is frozen
  return [Stage('landmarks', landmarks, _user_sources(config)),
          Stage('head', head, (FromStage('landmarks', FAN),))]


def emofan_summary(config, workdir: str, results: dict) -> dict:
  """The head stage's val/* unprefixed, the landmarks stage's as landmarks/val/*."""
  del config, workdir
  rec = {}
  for name, prefix in (('landmarks', 'landmarks/'), ('head', '')):
    rec.update({prefix + k: v for k, v in results.get(name, {}).items()
                if k.startswith('val/') and isinstance(v, int | float)})
  return rec


RECIPES: dict[str, stages.Recipe] = {r.name: r for r in (
    stages.Recipe('mae_va', mae_va_stages, mae_va_summary),
    stages.Recipe('cnn_rnn', cnn_rnn_stages, cnn_rnn_summary),
    stages.Recipe('distill', distill_stages, distill_summary),
    stages.Recipe('emofan', emofan_stages, emofan_summary),
)}


def get(name: str) -> stages.Recipe:
  if name not in RECIPES:
    raise ValueError(f'config.recipe={name!r}: no such recipe; known: {", ".join(sorted(RECIPES))}')
  return RECIPES[name]
