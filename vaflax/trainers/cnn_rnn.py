"""The CNN-RNN recipe of Deng, Chen, Shi 2020: a per-frame CNN, then a bi-GRU on its frozen features.

`config.recipe = 'cnn_rnn'` (configs/resnet_gru_va.py); vaflax/stages.py runs, each in its own
sub-workdir and resumable:

  cnn      the per-frame CNN (`config.cnn`: configs/resnet_va.py, single frames); skipped when
           `config.init_from` names a trained CNN already
  cnn_rnn  temporal.Model over windows of frames (the rest of `config`), its `backbone` and
           `head/hidden` loaded from the CNN (parameter paths equal, models/temporal.py) and
           frozen by `config.frozen`, as the paper's CNN-RNN

Why two stages and not one joint training (measured, docs/deng2020.md): trained jointly from
scratch on windows, the ResNet sees few clips per step (8 windows of one clip each instead of
32 independent frames) and the CNN-RNN ended below the frame CNN, pooled and within clips.

The summary holds the CNN-RNN's val/* unprefixed and the CNN stage's as cnn/val/*: one run
shows whether the temporal model beats the CNN it reads.
"""

from __future__ import annotations

import os

from vaflax import stages


def recipe_stages(config, workdir: str) -> list[stages.Stage]:
  gru = stages.stage_config(config, recipe='')
  del gru['cnn']
  if config.init_from:
    return [stages.Stage('cnn_rnn', gru)]
  gru.init_from = os.path.join(workdir, 'cnn')
  return [stages.Stage('cnn', stages.stage_config(config.cnn)), stages.Stage('cnn_rnn', gru)]


def summarize(config, workdir: str, results: dict) -> dict:
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


RECIPE = stages.register(stages.Recipe('cnn_rnn', recipe_stages, summarize))
