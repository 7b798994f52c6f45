"""PyTorch checkpoints in: the torch-free reader, the mappers and the CLI, against fixtures written
by real PyTorch (tests/fixtures/make_torch_fixtures.py; README.md beside them)."""

import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from vaflax.convert import reader

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'torch')


def fixture(name):
  return os.path.join(FIXTURES, name)


# --- Reader --------------------------------------------------------------------------------------


@pytest.mark.parametrize('name', ['reader_zip.pth', 'reader_legacy.pth', 'reader_nested.pt',
                                  'reader.safetensors'])
def test_reader_round_trips_what_torch_wrote(name):
  expected = dict(np.load(fixture('reader_expected.npz')))
  got = reader.read_checkpoint(fixture(name))
  if name.endswith('.safetensors'):
    expected.pop('param')  # the fixture's safetensors file leaves it out
  assert sorted(got) == sorted(expected)  # 'module.' prefixes and the nesting are gone
  for k, want in expected.items():
    assert got[k].shape == want.shape, k
    np.testing.assert_array_equal(got[k].astype(want.dtype), want, err_msg=k)
  assert got['bf16'].dtype.name == 'bfloat16'
  assert got['f16'].dtype == np.float16 and got['i64'].dtype == np.int64
  assert got['u8'].dtype == np.uint8 and got['bool'].dtype == np.bool_
  assert got['i32'].dtype == np.int32


class _RunsACommand:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f'touch {self.marker}',)


def _malicious_zip(path, payload):
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', pickle.dumps({'w': payload}, protocol=2))
    z.writestr('archive/byteorder', 'little')


def _malicious_legacy(path, payload):
  buf = io.BytesIO()
  for obj in (0x1950A86A20F9469CFC6C, 1001, {'little_endian': True}, {'w': payload}, []):
    pickle.dump(obj, buf, protocol=2)
  with open(path, 'wb') as f:
    f.write(buf.getvalue())


@pytest.mark.parametrize('write', [_malicious_zip, _malicious_legacy])
def test_reader_refuses_a_pickle_that_runs_a_command(tmp_path, write):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.pth'
  write(path, _RunsACommand(marker))
  # The pickle really would run it (a plain unpickler on the same bytes).
  assert b'system' in (zipfile.ZipFile(path).read('archive/data.pkl')
                       if zipfile.is_zipfile(path) else path.read_bytes())
  with pytest.raises(reader.UnsafeCheckpointError, match=r'(posix|os)\.system') as e:
    reader.read_checkpoint(str(path))
  assert str(path) in str(e.value)
  assert not marker.exists()


def test_reader_names_what_it_cannot_read(tmp_path):
  p = tmp_path / 'x.pth'
  p.write_bytes(b'not a checkpoint')
  with pytest.raises(ValueError, match='not a PyTorch checkpoint'):
    reader.read_checkpoint(str(p))


# --- Mappers: parity with the PyTorch outputs ----------------------------------------------------


def rel_diff(got, want) -> float:
  """max |got - want| / max |want|: the fixtures' tolerance is 1e-4."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def imagenet_input(faces_u8, config):
  from vaflax.convert import layers  # noqa: PLC0415
  from vaflax.data import ops  # noqa: PLC0415

  pp = layers.IMAGENET_PP
  assert pp in config.input.pp_eval  # the run records the preprocessing it needs
  return ops.build(pp)({'image': faces_u8}, None)['image']


@pytest.mark.parametrize('name,depth', [('resnet18_w4', 18), ('resnet50_w4', 50)])
def test_torchvision_resnet_matches_torch(name, depth):
  from vaflax import convert  # noqa: PLC0415

  ref = np.load(fixture(f'{name}_outputs.npz'))
  c = convert.convert('torchvision_resnet', fixture(f'{name}.pth'))
  assert (c.config.model.depth, c.config.model.width) == (depth, 4)
  assert sorted(c.ignored) == ['fc.bias', 'fc.weight']
  assert c.new and all(k.startswith('head/') for k in c.new)
  c.model.eval()
  feats = c.model.backbone(imagenet_input(ref['faces'], c.config))
  assert rel_diff(feats, ref['features']) < 1e-4


@pytest.mark.parametrize('name', ['mae_vit_d32_p8.pth', 'timm_vit_d32_p8.safetensors'])
def test_mae_vit_matches_torch(name):
  from vaflax import convert  # noqa: PLC0415

  ref = np.load(fixture(name.split('.')[0] + '_outputs.npz'))
  c = convert.convert('mae', fixture(name))
  m = c.config.model
  assert (m.variant, m.depth, m.image_size, m.posemb, m.pool_type) == ('mu/8', 2, 32, 'learn', 'cls')
  if name.startswith('mae'):
    assert 'mask_token' in c.ignored and any(k.startswith('decoder_') for k in c.ignored)
  else:
    assert sorted(c.ignored) == ['head.bias', 'head.weight']
  c.model.eval()
  tokens, pooled = c.model.encoder(imagenet_input(ref['faces'], c.config))
  assert rel_diff(tokens, ref['tokens']) < 1e-4
  assert rel_diff(pooled, ref['tokens'][:, 0]) < 1e-4  # the CLS token after the final norm


def test_a_missing_or_misshaped_tensor_is_named(tmp_path):
  from vaflax import checkpoint, convert  # noqa: PLC0415

  src = reader.read_checkpoint(fixture('resnet18_w4.pth'))
  del src['layer2.1.bn1.running_var']
  with pytest.raises(checkpoint.CheckpointMismatchError, match=r'layer2\.1\.bn1\.running_var'):
    convert.convert('torchvision_resnet', 'resnet18_w4.pth', src=src)
  src = reader.read_checkpoint(fixture('mae_vit_d32_p8.pth'))
  src['blocks.1.mlp.fc2.bias'] = src['blocks.1.mlp.fc2.bias'][:-1]
  with pytest.raises(checkpoint.CheckpointMismatchError, match=r'blocks\.1\.mlp\.fc2\.bias'):
    convert.convert('mae', 'mae.pth', src=src)
  src = reader.read_checkpoint(fixture('mae_vit_d32_p8.pth'))
  with pytest.raises(checkpoint.CheckpointMismatchError, match='right --format'):
    convert.convert('torchvision_resnet', 'mae.pth', src=dict(
        src, **reader.read_checkpoint(fixture('resnet18_w4.pth'))))


# --- CLI: a run directory that load_run reads ----------------------------------------------------


@pytest.mark.parametrize('fmt,name', [('torchvision_resnet', 'resnet50_w4.pth'),
                                      ('mae', 'mae_vit_d32_p8.pth')])
def test_cli_writes_a_run_that_load_run_reads(tmp_path, capsys, fmt, name):
  import json  # noqa: PLC0415

  from vaflax import runs  # noqa: PLC0415
  from vaflax.convert import __main__ as cli  # noqa: PLC0415

  out = tmp_path / 'run'
  assert cli.main([f'--format={fmt}', f'--input={fixture(name)}', f'--workdir={out}']) == 0
  printed = capsys.readouterr().out
  assert 'loaded' in printed and 'ignored on purpose' in printed and 'licence' in printed
  prov = json.loads((out / 'provenance.json').read_text())
  assert prov['format'] == fmt and len(prov['sha256']) == 64 and prov['licence']
  run = runs.load_run(str(out))
  assert run.step == 0
  model = run.model()
  ref = np.load(fixture(name.split('.')[0] + '_outputs.npz'))
  x = imagenet_input(ref['faces'], run.config)
  if fmt == 'mae':
    assert rel_diff(model.encoder(x)[0], ref['tokens']) < 1e-4
  else:
    out_ = model({'image': x})
    assert rel_diff(out_['features'], ref['features']) < 1e-4 and out_['va'].shape == (2, 2)


def test_resnet_recipe_starts_from_converted_weights(tmp_path):
  """configs/resnet_va.py:pretrained=OUT: the backbone comes from the converted file (the head is
  new) and the inputs get the ImageNet normalisation the weights need."""
  from flax import nnx  # noqa: PLC0415

  from configs import resnet_va  # noqa: PLC0415
  from vaflax import runs, train  # noqa: PLC0415
  from vaflax.convert import __main__ as cli  # noqa: PLC0415

  out = tmp_path / 'tv'
  assert cli.main(['--format=torchvision_resnet', f'--input={fixture("resnet50_w4.pth")}',
                   f'--workdir={out}']) == 0
  c = resnet_va.get_config(f'variant=50,bins=20,pretrained={out}')
  c.model.width = 4  # the reduced-width fixture; torchvision's own weights have the default 64
  assert 'normalize((0.485, 0.456, 0.406)' in c.input.pp_train
  model = runs.make_model(c, nnx.Rngs(7))
  train.init_from(c, model)
  ref = np.load(fixture('resnet50_w4_outputs.npz'))
  model.eval()
  feats = model.features({'image': imagenet_input(ref['faces'], c)})
  assert rel_diff(feats, ref['features']) < 1e-4
