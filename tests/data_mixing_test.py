"""Real builders through the training pipeline: AFEW-VA and Aff-Wild2 (112 px) + AFEW-VA (256 px)
mixtures train, mix in the configured proportions, balance, and a two-corpus MAE pretraining
mixture trains (all from the builders' dummy_data)."""

import json
import os

import numpy as np
import pytest
from conftest import set_fields

import tfds_builders
from configs import mae_pretrain, resnet_va
from vaflax import train
from vaflax.data import build, pipeline

BUILDERS = os.path.dirname(tfds_builders.__file__)
DUMMY = {  # name -> the dummy_data variant it is built from
    'afew_va': 'afew_va/dummy_data/parts',
    'affwild2_va': 'affwild2_va/dummy_data/abaw6',
    'celeba_faces': 'celeba_faces/dummy_data',
    'casia_webface': 'casia_webface/dummy_data',
}
AFFWILD2_UNLABELLED = (0, 2, 4, 5)  # train records with va_mask [0, 0] (-5, no face, bad image)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp('mix'))
  for name, rel in DUMMY.items():
    build.build(name, d, manual_dir=os.path.join(BUILDERS, rel), verbose=False)
  return d


def _tiny(c, data_dir, **overrides):
  """Shrinks a full config to seconds (as conftest.tiny_config does for :runlocal)."""
  c.input.data_dir = data_dir
  c.image_size = 32
  c.batch_size = 4  # the dummy splits hold 2-17 records
  c.total_steps = 2
  c.total_epochs = 0.0
  c.log_every_steps = 1
  c.eval_every_steps = 2
  c.checkpoint_every_steps = 2
  c.schedule.name = 'constant'
  c.schedule.warmup_steps = 0
  c.mesh.num_devices = 1
  c.tensorboard = False
  return set_fields(c, **overrides)


def _resnet(arg, data_dir, **overrides):
  c = resnet_va.get_config(arg)
  return _tiny(c, data_dir, **{'model.width': 8, 'model.head_hidden': 16, **overrides})


def _records(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]


def _spec(batch):
  return {k: (v.shape, v.dtype) for k, v in batch.items()}


@pytest.mark.slow
def test_resnet_trains_on_afew_va(data_dir, tmp_path):
  c = _resnet('variant=10,dataset=afew_va', data_dir)
  train.train_and_evaluate(c, str(tmp_path))
  recs = _records(str(tmp_path))
  losses = [r['train/loss'] for r in recs if 'train/loss' in r]
  assert len(losses) == 2 and np.all(np.isfinite(losses))
  assert any('val/ccc_valence' in r for r in recs)


def test_mixture_has_one_structure_and_the_configured_proportions(data_dir):
  c = _resnet('variant=10', data_dir)
  assert c.input.dataset == 'affwild2_va:0.2,afew_va:1'  # Deng et al.: Aff-Wild2 "downsampled by 5"
  one = {n: next(iter(pipeline.make_train_dataset(_resnet(f'variant=10,dataset={n}', data_dir))[0]))
         for n in ('affwild2_va', 'afew_va')}
  mixed = next(iter(pipeline.make_train_dataset(c)[0]))
  # 112 px Aff-Wild2 crops and 256 px AFEW-VA crops both come out at image_size; the extra
  # Aff-Wild2 features (audio, face_mask, ...) are dropped by `standardize`.
  assert _spec(one['affwild2_va']) == _spec(one['afew_va']) == _spec(mixed)
  assert mixed['image'].shape == (4, 32, 32, 3) and mixed['image'].dtype == np.float32
  assert 'audio' not in mixed and 'face_mask' not in mixed
  # Without the resize the sources differ: a clear error instead of a failed stack.
  bad = _resnet('variant=10', data_dir, **{'input.pp_train': 'standardize|value_range(-1, 1)'})
  with pytest.raises(ValueError, match=r'afew_va gives examples unlike affwild2_va.*image'):
    pipeline.make_train_dataset(bad)
  # Proportions over many draws: weights are rates, so Aff-Wild2's 17 train frames at 0.2 and
  # AFEW-VA's 4 at 1 give 3.4 : 4 (46%), and an epoch of the mixture is 7.4 -> 7 examples.
  assert pipeline.make_train_dataset(c)[1] == 7
  light = {'input.pp_train': "standardize|keep('index')"}
  for balance in ('', 'va_grid'):
    cb = _resnet('variant=10', data_dir, batch_size=16, **light, **{'input.balance': balance})
    it = iter(pipeline.make_train_dataset(cb)[0])
    batches = [next(it) for _ in range(24)]
    src = np.concatenate([b['source'] for b in batches])
    idx = np.concatenate([b['index'] for b in batches])
    assert abs(np.sum(src == 0) - 384 * 3.4 / 7.4) <= 1, np.bincount(src)
    aff = idx[src == 0]
    if balance:  # frames without a usable VA label are never drawn
      it2 = iter(pipeline.make_train_dataset(cb)[0])  # the balanced mixture resumes exactly
      next(it2)
      it3 = iter(pipeline.make_train_dataset(cb)[0])
      it3.set_state(it2.get_state())
      np.testing.assert_array_equal(next(it3)['index'], batches[1]['index'])
      assert not set(aff.tolist()) & set(AFFWILD2_UNLABELLED)
      assert set(aff.tolist()) == set(range(17)) - set(AFFWILD2_UNLABELLED)  # 176 draws
    else:  # shuffled epochs: every record, each about equally often
      counts = np.bincount(aff, minlength=17)  # 176 draws = 10 epochs of 17 + 6
      assert counts.min() >= 10 and counts.max() <= 11
    assert set(idx[src == 1].tolist()) == {0, 1, 2, 3}  # the 4 AFEW-VA train frames


@pytest.mark.slow
def test_balanced_mixture_trains(data_dir, tmp_path):
  c = _resnet('variant=10', data_dir, **{'input.balance': 'va_grid', 'input.eval_split': ''})
  train.train_and_evaluate(c, str(tmp_path))
  losses = [r['train/loss'] for r in _records(str(tmp_path)) if 'train/loss' in r]
  assert len(losses) == 2 and np.all(np.isfinite(losses))
  for name in ('affwild2_va', 'afew_va'):  # the label pass was cached next to each dataset
    assert os.path.exists(os.path.join(data_dir, name, '1.0.0', 'va_labels-train.npz'))


@pytest.mark.slow
def test_mae_pretraining_on_two_face_corpora(data_dir, tmp_path):
  c = mae_pretrain.get_config('runlocal')
  c = _tiny(c, data_dir, **{'input.dataset': 'celeba_faces:1,casia_webface:1',
                            'image_size': 16, 'model.patch_size': 8, 'model.decoder_width': 32,
                            'model.width': 32,
                            'model.depth': 1, 'model.mlp_dim': 64, 'model.num_heads': 2,
                            'model.decoder_depth': 1, 'model.decoder_num_heads': 2,
                            'input.eval_split': ''})
  it = iter(pipeline.make_train_dataset(c)[0])
  b = next(it)
  assert set(b) == {'image', 'index', 'source'} and b['image'].shape == (4, 16, 16, 3)
  src = np.concatenate([b['source']] + [next(it)['source'] for _ in range(9)])
  assert abs(np.sum(src == 0) - 40 * 3 / 8) <= 1  # the union: 3 CelebA and 5 CASIA images
  train.train_and_evaluate(c, str(tmp_path))
  losses = [r['train/loss'] for r in _records(str(tmp_path)) if 'train/loss' in r]
  assert len(losses) == 2 and np.all(np.isfinite(losses))
