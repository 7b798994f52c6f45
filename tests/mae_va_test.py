"""Tests for configs/mae_pretrain.py, configs/mae_va.py and the mae_va recipe (vaflax/recipes.py).

The recipe end to end (records, reconstruction PNG, weights flowing between stages, nothing
redone) is checked by `_check_mae_va_run` in tests/resume_all_trainers_test.py, on the straight
run it trains (and preempts) anyway; its pretrain stage is configs/mae_pretrain.py:runlocal
shrunk to a few steps, so it also covers that config's reconstruction PNGs and val/loss."""

import re

import pytest

from configs import mae_pretrain, mae_va
from vaflax import recipes, runs
from vaflax import stages as stages_lib

RECIPE = recipes.get('mae_va')


def test_configs_link_the_stages():
  c = mae_va.get_config('runlocal')
  c.lock()
  assert {c[s].input.dataset for s in ('pretrain', 'finetune', 'fusion', 'fusion_video_only')} == {
      mae_va.RUNLOCAL_DATASET}  # one synthetic set for every stage
  c.vit.width = 64  # one ViT for every stage
  c.image_size = 32
  assert c.pretrain.model.width == c.finetune.model.width == c.fusion.model.visual.width == 64
  assert c.fusion_video_only.model.visual.width == 64
  assert c.pretrain.image_size == c.finetune.model.image_size == 32
  assert c.fusion_video_only.model.visual.image_size == 32
  c.vit.pool_type = 'gap'  # the head and the fusion read the same pooled feature
  assert c.finetune.model.pool_type == c.fusion_video_only.model.visual.pool_type == 'gap'
  c.fusion.total_steps = 7  # the baseline trains exactly like the fusion stage ...
  assert c.fusion_video_only.total_steps == 7
  assert c.fusion.model.use_audio and not c.fusion_video_only.model.use_audio  # ... without audio
  assert 'audio' not in c.fusion_video_only.input.pp_train
  assert 'standardize(audio=True)' in c.fusion.input.pp_train
  # The fine-tuned ViT sees faces at one scale: fine-tuning crops a random side U(lo, 1), its
  # evaluation and both fusion stages (its frozen features) the centre square of the mean side.
  lo = float(re.search(r'random_crop\(([\d.]+)\)', c.finetune.input.pp_train).group(1))
  for stage in ('fusion', 'fusion_video_only'):
    for split in ('pp_train', 'pp_eval'):
      assert f'center_crop({(1 + lo) / 2:g})|resize' in c[stage].input[split], (stage, split)
  assert f'center_crop({(1 + lo) / 2:g})|resize' in c.finetune.input.pp_eval
  stages = {s.name: s.config for s in stages_lib.plan(RECIPE, c, '/w')}
  assert list(stages) == list(recipes.MAE_VA_STAGES)
  assert stages['finetune'].init_from == '/w/pretrain:encoder=encoder'
  assert stages['fusion'].init_from == stages['fusion_video_only'].init_from == (
      '/w/finetune:encoder=visual')
  assert stages['fusion'].frozen == 'visual(/|$)'
  assert stages['fusion'].model.visual.width == 64  # plain values in the stage copies
  c.init_from = '/mae'
  stages = {s.name: s.config for s in stages_lib.plan(RECIPE, c, '/w')}
  assert 'pretrain' not in stages and stages['finetune'].init_from == '/mae:encoder=encoder'

  p = mae_va.get_config()  # the paper's sizes
  assert (p.vit.variant, p.image_size) == ('B/16', 224)
  assert (p.pretrain.model.decoder_depth, p.pretrain.model.decoder_width) == (8, 512)
  assert p.pretrain.model.mask_ratio == 0.75 and p.pretrain.model.norm_pix_loss
  assert p.pretrain.optimizer.lr == pytest.approx(1.5e-4 * p.pretrain.batch_size / 256)
  assert (p.pretrain.optimizer.b2, p.pretrain.optimizer.weight_decay) == (0.95, 0.05)
  assert p.finetune.input.dataset == p.fusion.input.dataset == 'affwild2_va'
  assert p.fusion.input.window == 100 and p.finetune.optimizer.layer_decay > 0
  assert mae_pretrain.get_config('dataset=a:1+b:2').input.dataset == 'a:1,b:2'


def test_the_users_init_from_keeps_its_mapping():
  """config.init_from replaces pretraining as the encoder's source: every source of a ';' list is
  kept, with its own SRC=DST mapping; one given without a mapping takes the encoder."""
  c = mae_va.get_config('runlocal')
  c.init_from = '/runs/resnet:backbone=encoder/stem;/runs/mae'
  stages = {s.name: s for s in stages_lib.plan(RECIPE, c, '/w')}
  assert list(stages) == ['finetune', 'fusion_video_only', 'fusion']
  assert stages['finetune'].config.init_from == (
      '/runs/resnet:backbone=encoder/stem;/runs/mae:encoder=encoder')
  assert stages['finetune'].init == (
      runs.WeightSource('/runs/resnet', (('backbone', 'encoder/stem'),)),
      runs.WeightSource('/runs/mae', (('encoder', 'encoder'),)))
  assert runs.parse_init_from(stages['finetune'].config.init_from) == stages['finetune'].init
  assert stages['fusion'].init == (runs.WeightSource('/w/finetune', (('encoder', 'visual'),)),)
  # A stage's own init_from is the recipe's to set: an error, not a silent drop.
  c.finetune.init_from = '/elsewhere'
  with pytest.raises(ValueError, match='config.finetune.init_from'):
    stages_lib.plan(RECIPE, c, '/w')


def test_missing_data_error_mentions_runlocal(tmp_path):
  c = mae_va.get_config()
  c.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match='runlocal'):
    stages_lib.run(RECIPE, c, str(tmp_path / 'w'))
