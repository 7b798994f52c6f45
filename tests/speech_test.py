"""wav2vec 2.0 / HuBERT / WavLM in Flax against transformers (tests/fixtures/speech/, written by
tests/fixtures/make_speech_fixtures.py): every hidden state within 1e-4 of the reference's
largest value, on speech and on a chirp, alone and as a padded batch."""

from __future__ import annotations

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from vaflax import checkpoint as ckpt_lib
from vaflax import convert
from vaflax.convert import speech as convert_speech
from vaflax.models import speech, speech_layers

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'speech')
FAMILIES = ('wav2vec2', 'wav2vec2_large', 'hubert', 'wavlm')
# The heads each fixture's file carries (make_speech_fixtures.py), reported as ignored.
HEADS = {'wav2vec2': {'quantizer.codevectors', 'project_q.weight', 'project_hid.weight',
                      'masked_spec_embed'},
         'wav2vec2_large': {'lm_head.weight', 'lm_head.bias'},
         'hubert': {'masked_spec_embed'}, 'wavlm': set()}
TOL = 1e-4


def rel_err(got, ref) -> float:
  return float(np.max(np.abs(np.asarray(got, np.float64) - ref)) / np.max(np.abs(ref)))


@pytest.fixture(scope='module', params=FAMILIES)
def converted(request):
  folder = os.path.join(FIXTURES, request.param)
  return request.param, convert.convert('speech', folder), np.load(f'{folder}/outputs.npz')


def padded(ref):
  n, m = len(ref['speech']), len(ref['tone'])
  wave = np.zeros((2, n), np.float32)
  wave[0], wave[1, :m] = ref['speech'], ref['tone']
  mask = np.zeros((2, n), np.float32)
  mask[0], mask[1, :m] = 1, 1
  return wave, mask


@pytest.mark.slow
def test_hidden_states_match_transformers(converted):
  name, c, ref = converted
  for clip in ('speech', 'tone'):
    got = speech.hidden_states(c.model, ref[clip][None])[:, 0]
    want = ref[f'hidden_{clip}']
    assert got.shape == want.shape
    errs = [rel_err(g, w) for g, w in zip(got, want, strict=True)]
    assert max(errs) < TOL, (name, clip, errs)
  wave, mask = padded(ref)
  got = speech.hidden_states(c.model, wave, mask)
  errs = [rel_err(g, w) for g, w in zip(got, ref['hidden_batch'], strict=True)]
  assert max(errs) < TOL, (name, 'padded batch', errs)
  assert HEADS[name] <= set(c.ignored), c.ignored
  assert not c.new


def test_layer_norm_models_pad_without_changing_the_short_clip(converted):
  """The layer-norm feature encoder normalises per frame, so a clip padded in a batch gets the
  frames it gets alone (the group-norm one does not: speech.py's docstring)."""
  name, c, ref = converted
  if c.config.model.feat_extract_norm != 'layer':
    pytest.skip('group-norm feature encoder: padding changes the statistics, by design')
  wave, mask = padded(ref)
  batch = np.asarray(speech.hidden_states(c.model, wave, mask))
  alone = np.asarray(speech.hidden_states(c.model, ref['tone'][None]))[:, 0]
  t = alone.shape[1]
  assert np.asarray(c.model.frame_mask(mask, batch.shape[2]))[1].sum() == t
  assert rel_err(batch[:, 1, :t], alone) < 1e-5


@pytest.mark.slow
def test_bfloat16_compute_stays_close():
  c = convert.convert('speech', os.path.join(FIXTURES, 'wavlm'))
  ref = np.load(os.path.join(FIXTURES, 'wavlm', 'outputs.npz'))
  c.config.model.dtype = 'bfloat16'
  from flax import nnx  # noqa: PLC0415

  bf16 = speech.Model(**c.config.model.to_dict(), rngs=nnx.Rngs(0))
  ckpt_lib.transfer_weights(ckpt_lib.flat_weights(c.model), bf16)
  got = speech.hidden_states(bf16, ref['speech'][None])
  assert got.dtype == jnp.bfloat16
  assert rel_err(got[:, 0].astype(jnp.float32), ref['hidden_speech']) < 0.05


def test_weight_norm_spellings_fold_to_the_same_kernel():
  src = convert_speech.read(os.path.join(FIXTURES, 'wav2vec2'))
  pos = 'encoder.pos_conv_embed.conv'
  g, v = src[f'{pos}.parametrizations.weight.original0'], src[f'{pos}.parametrizations.weight.original1']
  w = convert_speech.fold_weight_norm(g, v)
  # by hand: per tap k, w[:, :, k] = g[k] * v[:, :, k] / |v[:, :, k]|
  k = 3
  np.testing.assert_allclose(w[:, :, k], g[0, 0, k] * v[:, :, k] / np.linalg.norm(v[:, :, k]),
                             rtol=1e-6)
  old = {k.replace('parametrizations.weight.original0', 'weight_g')
         .replace('parametrizations.weight.original1', 'weight_v'): a for k, a in src.items()}
  config = convert_speech.make_config(src)
  a = convert_speech.map_weights(src, config).out['pos_conv_embed/conv/kernel']
  b = convert_speech.map_weights(old, config).out['pos_conv_embed/conv/kernel']
  np.testing.assert_array_equal(a, b)


def test_relative_buckets_by_hand():
  """T5 buckets with 16 buckets, distance 40: |d| < 4 exact, then log-spaced up to bucket 7;
  positive offsets in the upper half."""
  b = speech_layers.relative_buckets(50, 16, 40)
  assert b[0, 0] == 0 and b[0, 3] == 8 + 3 and b[3, 0] == 3
  # |d| = 10: 4 + floor(log(10 / 4) / log(40 / 4) * 4) = 4 + 1 = 5
  assert b[0, 10] == 8 + 5 and b[10, 0] == 5
  assert b[0, 49] == 8 + 7 and b[49, 0] == 7  # beyond the distance: the last bucket


def test_converter_errors_name_the_problem(tmp_path):
  folder = tmp_path / 'm'
  shutil.copytree(os.path.join(FIXTURES, 'hubert'), folder)
  with pytest.raises(NotADirectoryError, match='model-hub folder'):
    convert.convert('speech', str(folder / 'pytorch_model.bin'))
  cfg = json.loads((folder / 'config.json').read_text())
  (folder / 'config.json').write_text(json.dumps(dict(cfg, model_type='bert')))
  with pytest.raises(ValueError, match="model_type 'bert'"):
    convert.convert('speech', str(folder))
  (folder / 'config.json').write_text(json.dumps(dict(cfg, hidden_act='relu')))
  with pytest.raises(ValueError, match='hidden_act'):
    convert.convert('speech', str(folder))
  (folder / 'config.json').write_text(json.dumps(cfg))
  src = convert_speech.read(str(folder))
  src['encoder.extra.weight'] = np.zeros(3, np.float32)
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match='encoder.extra.weight'):
    convert.convert('speech', str(folder), src=src)
  (folder / 'pytorch_model.bin').unlink()
  with pytest.raises(FileNotFoundError, match='pytorch_model.bin'):
    convert.convert('speech', str(folder))


@pytest.mark.slow
def test_converted_run_embeds_audio(tmp_path):
  import vaflax  # noqa: PLC0415

  folder = os.path.join(FIXTURES, 'wavlm')
  ref = np.load(os.path.join(folder, 'outputs.npz'))
  out = convert.write_run(convert.convert('speech', folder), str(tmp_path / 'run'))
  prov = json.loads(open(os.path.join(out, 'provenance.json')).read())
  assert prov['format'] == 'speech' and prov['source'].endswith('model.safetensors')
  assert 'unit variance' in prov['preprocessing']
  run = vaflax.load(out)
  h = run.embed_audio(ref['speech'])
  assert isinstance(h, np.ndarray) and h.shape == ref['hidden_speech'].shape
  assert rel_err(h, ref['hidden_speech']) < TOL
  # Without normalisation the caller's waveform goes in as it is.
  raw = run.embed_audio(speech.normalize_wave(ref['speech'][None])[0], normalize=False)
  assert rel_err(raw, ref['hidden_speech']) < TOL
  with pytest.raises(ValueError, match='1-D'):
    run.embed_audio(np.zeros((2, 16000), np.float32))


FULL = os.environ.get('VAFLAX_SPEECH_FULL', '')  # make_speech_fixtures.py --full --out=DIR


@pytest.mark.slow
@pytest.mark.skipif(not FULL, reason='set VAFLAX_SPEECH_FULL to the --full fixtures (not committed)')
@pytest.mark.parametrize('name', ('wav2vec2_base', 'hubert_base', 'wavlm_base'))
def test_full_size_base_models(name):
  """The developer's full-size check (docs/pretrained.md's table): random-init base models."""
  c = convert.convert('speech', os.path.join(FULL, name))
  ref = np.load(os.path.join(FULL, name, 'outputs.npz'))
  worst = {}
  for clip in ('speech', 'tone'):
    got = speech.hidden_states(c.model, ref[clip][None])[:, 0]
    worst[clip] = max(rel_err(g, w) for g, w in zip(got, ref[f'hidden_{clip}'], strict=True))
  wave, mask = padded(ref)
  got = speech.hidden_states(c.model, wave, mask)
  worst['padded'] = max(rel_err(g, w) for g, w in zip(got, ref['hidden_batch'], strict=True))
  print(name, {k: f'{v:.2e}' for k, v in worst.items()})
  assert max(worst.values()) < TOL, worst


# --- The fusion's speech features: pooling onto video frames, chunks, cache ---------------------


@pytest.fixture(scope='module')
def encoder_run(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('speech') / 'w2v')
  return convert.write_run(convert.convert('speech', os.path.join(FIXTURES, 'wav2vec2')), out)


def test_frame_pooling_by_hand():
  # 25 fps (640 samples per frame), 50 Hz frames (hop 320, field 400): centres at 200, 520,
  # 840, 1160 -> video frames 0, 0, 1, 1.
  pool = speech.frame_pooling(2, 640, 4, 320, 400)
  np.testing.assert_array_equal(pool, [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
  # 100 fps (160 samples): frames without a centre take the nearest encoder frame.
  pool = speech.frame_pooling(4, 160, 2, 320, 400)
  np.testing.assert_array_equal(pool.argmax(1), [0, 0, 1, 1])
  np.testing.assert_array_equal(pool.sum(1), 1)


@pytest.mark.slow
def test_clip_features_chunk_the_clip_and_pool(encoder_run):
  from vaflax import speech_features  # noqa: PLC0415

  enc = speech_features.Encoder(encoder_run)
  ref = np.load(os.path.join(FIXTURES, 'wav2vec2', 'outputs.npz'))
  audio_TxS = ref['speech'][:10 * 640].reshape(10, 640)
  feats = enc.clip_features(audio_TxS, chunk_frames=4)  # chunks at 0, 4 and (tail) 6
  assert feats.shape == (10, enc.num_states, enc.model.width)
  for start, rows in ((0, slice(0, 4)), (4, slice(4, 8)), (6, slice(8, 10))):
    hidden = enc.hidden_states(audio_TxS[start:start + 4].reshape(-1))  # (I, T, D)
    pooled = np.asarray(enc.model.pool_to_video(hidden[:, None], 4, 640))[:, 0]
    want = np.transpose(pooled, (1, 0, 2))[rows.start - start:rows.stop - start]
    np.testing.assert_allclose(feats[rows], want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_split_cache_is_keyed_by_encoder_and_dataset(encoder_run, tmp_path, monkeypatch):
  from vaflax import speech_features  # noqa: PLC0415

  enc = speech_features.Encoder(encoder_run)
  g = np.random.default_rng(0)
  records = [{'audio': g.standard_normal(640).astype(np.float32)} for _ in range(16)]
  videos = [('a', 0, 10), ('b', 10, 6)]
  args = (str(tmp_path), 'toy', 'train', '1.0.0', records, videos, 4)
  first = speech_features.split_cache(enc, *args)
  assert first.shape == (16, enc.num_states, enc.model.width) and first.dtype == np.float16
  np.testing.assert_allclose(first[10:], enc.clip_features(
      np.stack([r['audio'] for r in records[10:]]), 4), rtol=2e-3, atol=2e-3)
  calls = []
  monkeypatch.setattr(speech_features.Encoder, 'clip_features',
                      lambda self, a, c: calls.append(1) or np.zeros((len(a), 3, 32)))
  again = speech_features.split_cache(enc, *args)  # found: nothing recomputed
  assert not calls and np.array_equal(np.asarray(again), np.asarray(first))
  speech_features.split_cache(enc, str(tmp_path), 'toy', 'train', '1.0.1', records, videos, 4)
  assert len(calls) == 2  # a rebuilt dataset (another version): recomputed, video by video
  # Other weights: another folder (the checksum of the weights is the key).
  enc._checksum = 'f' * 64
  speech_features.split_cache(enc, *args)
  assert len(calls) == 4 and os.path.isdir(tmp_path / ('f' * 16))


@pytest.mark.slow
def test_uncached_fusion_path_reads_the_same_features(encoder_run):
  """The fusion's in-step encoder (audio (B, T, S)) gives the cache's features of a
  window-long chunk."""
  from flax import nnx  # noqa: PLC0415

  from vaflax import runs, speech_features  # noqa: PLC0415
  from vaflax.models import audio as audio_lib  # noqa: PLC0415

  enc = speech_features.Encoder(encoder_run)
  cfg = runs.load_config(encoder_run)
  branch = audio_lib.SpeechFeatures(enc.num_states, enc.model.width, width=16,
                                    encoder=cfg.model.to_dict(), rngs=nnx.Rngs(0))
  nnx.update(branch.encoder, nnx.state(enc.model))
  ref = np.load(os.path.join(FIXTURES, 'wav2vec2', 'outputs.npz'))
  audio_TxS = ref['speech'][:8 * 640].reshape(8, 640)
  got = np.asarray(branch.encode(jnp.asarray(audio_TxS[None])))[0]
  np.testing.assert_allclose(got, enc.clip_features(audio_TxS, 8), rtol=1e-5, atol=1e-5)
  out = branch(jnp.asarray(got[None]))
  assert out.shape == (1, 8, 16) and np.isfinite(np.asarray(out)).all()
  np.testing.assert_allclose(np.asarray(branch.layer_weights()), 1 / enc.num_states, rtol=1e-6)


def test_mae_va_config_speech_audio(encoder_run):
  from configs import mae_va  # noqa: PLC0415

  c = mae_va.get_config(f'runlocal,audio=speech,audio_init={encoder_run}')
  assert c.fusion.model.audio_kind == 'speech'
  assert (c.fusion.model.speech.num_states, c.fusion.model.speech.dim) == (3, 32)
  assert c.fusion.input.speech_encoder == encoder_run
  assert "'speech'" in c.fusion.input.pp_train and "'audio'" not in c.fusion.input.pp_train
  assert not c.fusion_video_only.input.speech_encoder
  assert "'speech'" not in c.fusion_video_only.input.pp_eval
  assert 'audio_kind' not in mae_va.get_config('runlocal').fusion.model  # log-mel by default
  with pytest.raises(ValueError, match='audio_init'):
    mae_va.get_config('runlocal,audio=speech')


@pytest.mark.slow
def test_fusion_stage_trains_on_cached_speech_states(encoder_run, synthetic_data_dir, tmp_path):
  """mae_va's fusion stage with audio=speech end to end on synthetic_va: the split's states are
  cached under the data dir, keyed by the encoder's checksum, and read into the training batches."""
  from configs import mae_va  # noqa: PLC0415
  from vaflax import speech_features, train  # noqa: PLC0415

  c = mae_va.get_config(f'runlocal,audio=speech,audio_init={encoder_run}').fusion
  c.input.dataset, c.input.data_dir = 'synthetic_va', synthetic_data_dir
  c.image_size = c.model.visual.image_size = 48
  c.model.visual.update(width=16, depth=1, num_heads=2, mlp_dim=32)  # the speech path is tested
  c.model.update(width=16, num_layers=1, num_heads=2)
  c.total_steps, c.eval_every_steps, c.checkpoint_every_steps, c.log_every_steps = 2, 2, 2, 1
  c.schedule.warmup_steps = 0
  c.mesh.num_devices = 1
  c.tensorboard = False
  metrics = train.train_and_evaluate(c, str(tmp_path / 'fusion'))
  assert np.isfinite(metrics['val/ccc_mean'])
  checksum = speech_features.Encoder(encoder_run).checksum
  folder = os.path.join(synthetic_data_dir, 'speech_features', checksum[:16], 'synthetic_va')
  assert sorted(os.listdir(folder)) == ['train-c8-s640.json', 'train-c8-s640.npy',
                                        'validation-c8-s640.json', 'validation-c8-s640.npy']
