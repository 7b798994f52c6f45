"""Tests for configs/mae_pretrain.py, configs/mae_va.py and vaflax/trainers/mae_va.py.

The pretrain stage of the recipe test is configs/mae_pretrain.py:runlocal shrunk to 2 steps: it
also covers that config's reconstruction PNGs and val/loss."""

import json
import os

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from configs import mae_pretrain, mae_va
from vaflax import runs, train, writers
from vaflax import stages as stages_lib
from vaflax.data import pipeline
from vaflax.models import vit
from vaflax.trainers import mae_va as runner

TINY_VIT = dict(width=16, depth=1, num_heads=2, mlp_dim=32, patch_size=8)


def _shrink(c, steps, batch=8):
  c.batch_size = batch
  c.total_steps = steps
  c.log_every_steps = 1
  c.eval_every_steps = steps
  c.checkpoint_every_steps = steps
  c.schedule.warmup_steps = 0
  c.mesh.num_devices = 1


def _tiny_recipe(data_dir):
  c = mae_va.get_config('runlocal')
  c.data_dir = data_dir
  c.image_size = 16
  c.vit.update(TINY_VIT)
  c.tensorboard = False
  c.test_split = 'test'
  _shrink(c.pretrain, 2, batch=32)  # the runlocal MAE config, a few steps
  c.pretrain.model.update(decoder_width=16, decoder_depth=1, decoder_num_heads=2)
  _shrink(c.finetune, 2, batch=32)
  _shrink(c.fusion, 2)
  c.fusion.model.update(width=16, num_layers=1, num_heads=2, max_len=4)
  c.fusion.model.audio.update(n_mels=8, width=8, num_layers=1)
  c.fusion.input.window = 4
  c.fusion.input.window_stride = 4
  c.lock()
  return c


def _check_reconstruction_png(path, config):
  """8 rows of original | masked | reconstruction; originals = every 4th image of the first
  validation batch of 32 (rows spread over the batch)."""
  png = np.asarray(Image.open(path))
  assert png.shape == (8 * 18 - 2, 3 * 18 - 2, 3)
  images = next(iter(pipeline.EvalData(config, 'validation')))['image']
  expect = np.clip(np.round((images[::4][:8] + 1) * 127.5), 0, 255).astype(np.uint8)
  for r in range(8):
    np.testing.assert_array_equal(png[r * 18:r * 18 + 16, :16], expect[r])
  masked = png[:16, 18:34].astype(int)
  assert np.sum(np.all(masked == 128, axis=-1)) >= 0.5 * 16 * 16  # most patches masked grey


def _model_params(stage_workdir):
  return runs.load_run(stage_workdir).model()


def _flat(module):
  return {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def test_configs_link_the_stages():
  c = mae_va.get_config('runlocal')
  c.lock()
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
  stages = {s.name: s.config for s in runner.recipe_stages(c, '/w')}
  assert list(stages) == list(runner.STAGES)
  assert stages['finetune'].init_from == '/w/pretrain:encoder=encoder'
  assert stages['fusion'].init_from == stages['fusion_video_only'].init_from == (
      '/w/finetune:encoder=visual')
  assert stages['fusion'].frozen == 'visual(/|$)'
  assert stages['fusion'].model.visual.width == 64  # plain values in the stage copies
  c.init_from = '/mae'
  stages = {s.name: s.config for s in runner.recipe_stages(c, '/w')}
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


def test_missing_data_error_mentions_runlocal(tmp_path):
  c = mae_va.get_config()
  c.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match='runlocal'):
    stages_lib.run(c, str(tmp_path / 'w'))


def test_recipe_end_to_end_resumes_without_redoing_stages(tmp_path, synthetic_data_dir,
                                                         monkeypatch):
  c = _tiny_recipe(synthetic_data_dir)
  wd = str(tmp_path / 'w')
  calls = []
  real = train.train_and_evaluate

  def fake_preemption_in_fusion(sc, swd):
    calls.append(os.path.basename(swd))
    if calls[-1] == 'fusion':
      raise train.Preempted(1)  # killed while the last stage runs
    return real(sc, swd)

  monkeypatch.setattr(train, 'train_and_evaluate', fake_preemption_in_fusion)
  with pytest.raises(train.Preempted):
    stages_lib.run(c, wd)
  assert calls == ['pretrain', 'finetune', 'fusion_video_only', 'fusion']
  for name in ('pretrain', 'finetune', 'fusion_video_only'):
    assert json.load(open(f'{wd}/{name}/final_metrics.json'))['step'] == 2
  assert not os.path.exists(f'{wd}/fusion') and not os.path.exists(f'{wd}/metrics.jsonl')

  calls.clear()
  monkeypatch.setattr(train, 'train_and_evaluate', lambda sc, swd: (
      calls.append(os.path.basename(swd)), real(sc, swd))[1])
  rec = stages_lib.run(c, wd)
  assert calls == ['fusion']  # finished stages are not redone

  top = writers.read_metrics(wd)
  assert len(top) == 1 and dict(top[0], step=2) == dict(rec, step=2)
  for key in ('val/ccc_valence', 'val/ccc_arousal', 'video_only/val/ccc_valence',
              'video_only/val/ccc_arousal', 'finetune/val/ccc_valence', 'test/ccc_arousal',
              'video_only/test/ccc_arousal', 'pretrain/val/loss'):
    assert np.isfinite(rec[key]), key  # 2 steps per stage: learning is checked per stage elsewhere
  fus = json.load(open(f'{wd}/fusion/final_metrics.json'))
  assert rec['val/ccc_arousal'] == fus['val/ccc_arousal']
  assert rec['audio_gain/val/ccc_arousal'] == pytest.approx(
      rec['val/ccc_arousal'] - rec['video_only/val/ccc_arousal'])
  pre = writers.read_metrics(f'{wd}/pretrain')
  assert [r['step'] for r in pre if 'train/loss' in r] == [1, 2]  # the reconstruction curve
  assert [r['val/loss'] for r in pre if 'val/loss' in r] == [rec['pretrain/val/loss']]
  assert rec['pretrain/train/loss_first'] == pre[0]['train/loss'] and rec['pretrain/val/loss'] > 0
  _check_reconstruction_png(f'{wd}/pretrain/reconstructions/step_2.png', c.pretrain)

  # The weights flow: MAE encoder -> fine-tuning init; fine-tuned ViT -> both fusion stages.
  stages = {s.name: s.config for s in runner.recipe_stages(c, wd)}
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

  calls.clear()
  assert stages_lib.run(c, wd) == json.load(open(f'{wd}/final_metrics.json'))
  assert calls == [] and len(writers.read_metrics(wd)) == 1  # nothing redone or re-logged

