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
