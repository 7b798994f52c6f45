"""Tests for configs/mae_pretrain.py, configs/mae_va.py and the mae_va recipe (vaflax/recipes.py).

The recipe end to end is checked by `check_recipe_run` on the straight run that
tests/resume_all_trainers_test.py trains (and preempts) anyway; its pretrain stage is
configs/mae_pretrain.py:runlocal shrunk to a few steps, so it also covers that config's
reconstruction PNGs and val/loss."""

import json
import os
import re
import shutil

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from configs import mae_pretrain, mae_va
from vaflax import recipes, runs, train, writers
from vaflax import stages as stages_lib
from vaflax.data import sources
from vaflax.models import vit

RECIPE = recipes.get('mae_va')


def _check_reconstruction_png(path, config):
  """Rows of original | masked | reconstruction; originals = validation images spread over the
  first eval batch (every batch/8-th, vaflax/trainers/mae.py), 2 px apart."""
  png = np.asarray(Image.open(path))
  batch = next(iter(sources.EvalData(config, 'validation')))
  images = batch['image']
  side, stride = images.shape[1], max(1, images.shape[0] // 8)
  shown = images[::stride][:8][batch['eval_mask'][::stride][:8] > 0]  # padding rows left out
  expect = np.clip(np.round((shown + 1) * 127.5), 0, 255).astype(np.uint8)
  rows, cell = len(expect), side + 2
  assert png.shape == (rows * cell - 2, 3 * cell - 2, 3)
  for r in range(rows):
    np.testing.assert_array_equal(png[r * cell:r * cell + side, :side], expect[r])
  masked = png[:side, cell:cell + side].astype(int)
  assert np.sum(np.all(masked == 128, axis=-1)) >= 0.5 * side * side  # most patches masked grey


def _model_params(stage_workdir):
  return runs.load_run(stage_workdir).model()


def _flat(module):
  return {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


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


def check_recipe_run(wd, c, scratch):
  """The recipe end to end, on a workdir that `stages.run(c, wd)` finished (called by
  resume_all_trainers_test on its straight mae_va run, which was also preempted in its pretrain
  and fusion stages and resumed without redoing finished stages): the top-level record, the
  reconstruction curve and PNG, the weights flowing MAE encoder -> fine-tuning init -> both
  fusion stages (frozen), nothing redone on a finished run, and a stop between two stages (in a
  copy under `scratch`)."""
  top = writers.read_metrics(wd)
  assert len(top) == 1
  rec = top[0]
  assert rec == json.load(open(f'{wd}/final_metrics.json'))
  for key in ('val/ccc_valence', 'val/ccc_arousal', 'video_only/val/ccc_valence',
              'video_only/val/ccc_arousal', 'finetune/val/ccc_valence', 'test/ccc_arousal',
              'video_only/test/ccc_arousal', 'pretrain/val/loss'):
    assert np.isfinite(rec[key]), key  # a few steps per stage: learning is checked elsewhere
  fus = json.load(open(f'{wd}/fusion/final_metrics.json'))
  assert rec['val/ccc_arousal'] == fus['val/ccc_arousal']
  assert rec['audio_gain/val/ccc_arousal'] == pytest.approx(
      rec['val/ccc_arousal'] - rec['video_only/val/ccc_arousal'])
  pre = writers.read_metrics(f'{wd}/pretrain')
  steps = int(c.pretrain.total_steps)
  assert [r['step'] for r in pre if 'train/loss' in r] == list(
      range(int(c.pretrain.log_every_steps), steps + 1, int(c.pretrain.log_every_steps)))
  assert [r['val/loss'] for r in pre if 'val/loss' in r] == [rec['pretrain/val/loss']]
  assert rec['pretrain/train/loss_first'] == pre[0]['train/loss'] and rec['pretrain/val/loss'] > 0
  _check_reconstruction_png(f'{wd}/pretrain/reconstructions/step_{steps}.png', c.pretrain)

  stages = {s.name: s.config for s in stages_lib.plan(RECIPE, c, wd)}
  assert stages['finetune'].init_from == f'{wd}/pretrain:encoder=encoder'
  mae_enc = _flat(_model_params(f'{wd}/pretrain').encoder)
  init = vit.Model(**stages['finetune'].model.to_dict(), rngs=nnx.Rngs(123))
  head0 = np.asarray(init.head.out.kernel[...])
  train.init_from(stages['finetune'], init)  # what the finetune stage started from
  for k, v in _flat(init.encoder).items():
    np.testing.assert_array_equal(v, mae_enc[k])
  np.testing.assert_array_equal(init.head.out.kernel[...], head0)  # the new head: its own init
  ft_enc = _flat(_model_params(f'{wd}/finetune').encoder)
  assert any(not np.array_equal(v, mae_enc[k]) for k, v in ft_enc.items())  # it trained
  for name in ('fusion', 'fusion_video_only'):
    visual = _flat(_model_params(f'{wd}/{name}').visual)
    assert visual.keys() == ft_enc.keys()
    for k, v in visual.items():  # frozen: still exactly the fine-tuned encoder
      np.testing.assert_array_equal(v, ft_enc[k])

  got, calls = _run_recording(c, wd)
  assert got == rec and calls == [] and len(writers.read_metrics(wd)) == 1  # nothing redone

  # Stopped between two stages (fusion_video_only finished, fusion not begun): the re-run trains
  # the fusion stage alone, to the same numbers.
  cut = os.path.join(scratch, 'between_stages')
  shutil.copytree(wd, cut, ignore=lambda d, names: ['fusion'] if d == wd else [])
  for fn in ('metrics.jsonl', 'final_metrics.json'):
    os.remove(os.path.join(cut, fn))
  got, calls = _run_recording(c, cut)
  assert calls == ['fusion']
  untimed = lambda r: {k: v for k, v in r.items() if 'seconds' not in k and 'per_sec' not in k}  # noqa: E731
  assert untimed(got) == untimed(rec)


def _run_recording(c, wd):
  """stages.run(c, wd) -> (its final record, the stage workdirs it trained)."""
  calls = []
  real = train.train_and_evaluate
  train.train_and_evaluate = lambda sc, swd: (calls.append(os.path.basename(swd)), real(sc, swd))[1]
  try:
    return stages_lib.run(RECIPE, c, wd), calls
  finally:
    train.train_and_evaluate = real
