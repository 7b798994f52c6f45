"""vaflax.load: a converted or trained run scores uint8 face crops through its own preprocessing."""

import numpy as np
from convert_test import fixture, rel_diff

import vaflax


def test_load_a_converted_resnet_embed_and_predict(tmp_path):
  from vaflax.convert import __main__ as cli  # noqa: PLC0415

  out = tmp_path / 'run'
  assert cli.main(['--format=torchvision_resnet', f'--input={fixture("resnet50_w4.pth")}',
                   f'--workdir={out}']) == 0
  ref = np.load(fixture('resnet50_w4_outputs.npz'))
  # The reference saw the whole 64 px crop: keep the run's normalisation, drop its centre crop.
  from vaflax.convert import layers  # noqa: PLC0415

  pp = f'standardize|resize(64)|{layers.IMAGENET_PP}'
  run = vaflax.load(str(out), batch_size=4, overrides=[f'input.pp_eval={pp}'])
  # embed = torchvision's fc input, from uint8 crops through the run's ImageNet normalisation;
  # 3 batches of 4 with padding in the last one.
  faces = np.concatenate([ref['faces']] * 5)
  feats = run.embed(faces)
  assert feats.shape == (10, ref['features'].shape[1])
  assert rel_diff(feats[:2], ref['features']) < 1e-4
  assert rel_diff(feats[8:], ref['features']) < 1e-4
  out_ = run.predict(faces)
  assert set(out_) == {'valence', 'arousal'}
  assert out_['valence'].shape == (10,) and out_['valence'].dtype == np.float32
  np.testing.assert_array_equal(out_['valence'][:2], out_['valence'][8:])
  try:
    run.predict(faces.astype(np.float32))
  except ValueError as e:
    assert 'uint8 array (N, H, W, 3)' in str(e)
  else:
    raise AssertionError('float faces were accepted')
