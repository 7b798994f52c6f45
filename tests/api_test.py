"""vaflax.load: a converted or trained run scores uint8 face crops through its own preprocessing."""

import numpy as np
import pytest
from conftest import fixture, rel_diff

import vaflax


@pytest.mark.slow
def test_load_a_converted_resnet_embed_and_predict(tmp_path):
  from vaflax.convert import __main__ as cli  # noqa: PLC0415

  out = tmp_path / 'run'
  assert cli.main(['--format=torchvision_resnet', f'--input={fixture("resnet50_w4.pth")}',
                   f'--workdir={out}']) == 0
  ref = np.load(fixture('resnet50_w4_outputs.npz'))
  # No overrides: a converted run preprocesses as torchvision did (224 px, ImageNet mean/std).
  run = vaflax.load(str(out), batch_size=4)
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


@pytest.mark.slow
def test_predict_cropped_one_row_per_image(tmp_path):
  import csv  # noqa: PLC0415

  from PIL import Image  # noqa: PLC0415

  from vaflax.convert import __main__ as convert_cli  # noqa: PLC0415
  from vaflax.predict import cli  # noqa: PLC0415

  run_dir = tmp_path / 'run'
  assert convert_cli.main(['--format=torchvision_resnet', f'--input={fixture("resnet18_w4.pth")}',
                           f'--workdir={run_dir}']) == 0
  faces = np.load(fixture('resnet18_w4_outputs.npz'))['faces']
  crops = tmp_path / 'crops'
  crops.mkdir()
  Image.fromarray(faces[0]).save(crops / 'a.png')
  Image.fromarray(np.asarray(Image.fromarray(faces[1]).resize((80, 96)))).save(crops / 'b.png')
  (crops / 'c.png').write_text('not an image')
  assert cli.main([f'--workdir={run_dir}', f'--input={crops}', f'--output={tmp_path / "out"}',
                   '--cropped']) == 0
  rows = list(csv.DictReader(open(tmp_path / 'out' / 'cropped.csv')))
  assert [r['path'] for r in rows] == ['a.png', 'b.png', 'c.png']
  assert [r['status'] for r in rows] == ['ok', 'ok', 'error'] and 'cannot read' in rows[2]['error']
  want = vaflax.load(str(run_dir)).predict([faces[0], np.asarray(Image.open(crops / 'b.png'))])
  for r, v, a in zip(rows, want['valence'], want['arousal'], strict=False):
    assert r['valence'] == f'{v:.6f}' and r['arousal'] == f'{a:.6f}' and r['quadrant']
