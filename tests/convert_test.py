"""PyTorch checkpoints in: the torch-free reader, the mappers and the CLI, against fixtures written
by real PyTorch (tests/fixtures/make_torch_fixtures.py; README.md beside them)."""

import io
import os
import pickle
import zipfile

import numpy as np
import pytest
from conftest import fixture, rel_diff

from vaflax.convert import reader

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


def imagenet_input(faces_u8, config):
  from vaflax import presets  # noqa: PLC0415
  from vaflax.data import ops  # noqa: PLC0415

  pp = presets.IMAGENET_PP
  assert pp in config.input.pp_eval  # the run records the preprocessing it needs
  return ops.build(pp)({'image': faces_u8}, None)['image']


@pytest.mark.slow
@pytest.mark.parametrize('name,depth', [('resnet18_w4', 18), ('resnet50_w4', 50)])
def test_torchvision_resnet_matches_torch(name, depth):
  from vaflax import convert  # noqa: PLC0415

  ref = np.load(fixture(f'{name}_outputs.npz'))
  c = convert.convert('torchvision_resnet', fixture(f'{name}.pth'))
  assert (c.config.model.depth, c.config.model.width) == (depth, 4)
  assert sorted(c.ignored) == ['fc.bias', 'fc.weight']
  assert c.new and all(k.startswith('head/') for k in c.new)
  c.model.eval()
  feats = _jit(lambda m, x: m.backbone(x), c.model, imagenet_input(ref['faces'], c.config))
  assert rel_diff(feats, ref['features']) < 1e-4


@pytest.mark.slow
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
  tokens, pooled = _jit(lambda m, x: m.encoder(x), c.model, imagenet_input(ref['faces'], c.config))
  assert rel_diff(tokens, ref['tokens']) < 1e-4
  assert rel_diff(pooled, ref['tokens'][:, 0]) < 1e-4  # the CLS token after the final norm


def _jit(fn, model, x):
  """fn(model, x) compiled as one program (an eager forward dispatches, and compiles, one small
  program per op)."""
  from flax import nnx  # noqa: PLC0415

  return nnx.jit(fn)(model, x)


def unit_input(faces_u8, config):
  """EmoNet's / face-alignment's input, through the run's own eval preprocessing."""
  from vaflax.data import ops  # noqa: PLC0415

  assert 'value_range(0, 1)' in config.input.pp_eval  # [0, 1], no mean/std (emonet issue 16)
  pp = config.input.pp_eval.format(image_size=config.image_size).split('|')
  pp = '|'.join(op for op in pp if not op.startswith(('standardize', 'keep(')))  # image ops only
  return ops.build(pp)({'image': faces_u8}, None)['image']


@pytest.mark.slow
def test_emonet_matches_torch():
  """EmoNet-8 (reduced width, 2 head blocks at 64 px): VA, expression logits and heatmaps."""
  from vaflax import convert  # noqa: PLC0415

  ref = np.load(fixture('emonet8_w16_outputs.npz'))
  c = convert.convert('emonet', fixture('emonet8_w16.pth'))
  m = c.config.model
  assert (m.head, m.pool, m.num_stacks, m.num_emotions, m.head_blocks) == ('emonet', 'max', 2, 8, 2)
  assert c.new == [] and c.ignored == [] and c.config.image_size == 64
  c.model.eval()
  out = _jit(lambda m, x: m({'image': x}), c.model, unit_input(ref['faces'], c.config))
  assert rel_diff(out['va'][:, 0], ref['valence']) < 1e-4
  assert rel_diff(out['va'][:, 1], ref['arousal']) < 1e-4
  assert rel_diff(out['emotion_logits'], ref['expression']) < 1e-4
  assert rel_diff(out['heatmaps'], ref['heatmap'].transpose(0, 2, 3, 1)) < 1e-4


@pytest.mark.parametrize('name,kind,pool,stacks', [('fan3_max_w16.pth.tar', 'legacy', 'max', 3),
                                                   ('fan2_avg_w16.zip', 'torchscript', 'avg', 2)])
@pytest.mark.slow
def test_face_alignment_fan_matches_torch(name, kind, pool, stacks):
  """face-alignment's FAN, pickled (< 1.3, max pooling) or TorchScript (1.3+, average pooling):
  the heatmaps of every stack; the emotion head on top is new."""
  from vaflax import convert  # noqa: PLC0415

  assert reader.read_checkpoint(fixture(name)).kind == kind
  ref = np.load(fixture(name.split('.')[0] + '_outputs.npz'))
  c = convert.convert('fan', fixture(name))
  assert (c.config.model.pool, c.config.model.num_stacks) == (pool, stacks)
  assert c.config.image_size == 256  # face-alignment's input side
  c.config.image_size = 64  # the fixture's
  assert c.new and all(k.startswith('head') for k in c.new) and c.ignored == []
  c.model.eval()
  out = _jit(lambda m, x: m({'image': x}), c.model, unit_input(ref['faces'], c.config))
  assert rel_diff(out['heatmaps_all'], ref['heatmaps'].transpose(0, 1, 3, 4, 2)) < 1e-4


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


@pytest.mark.slow  # a conversion, a load and a compile per format
@pytest.mark.parametrize('fmt,name,image_size,margin', [
    ('torchvision_resnet', 'resnet50_w4', 224, 0.2), ('mae', 'mae_vit_d32_p8', 32, 0.2),
    ('emonet', 'emonet8_w16', 64, 0.4)])
def test_cli_writes_a_run_that_reproduces_its_source(tmp_path, capsys, fmt, name, image_size,
                                                     margin):
  """`python -m vaflax.convert` writes a run (provenance, licence, step 0) that vaflax.load reads
  with no overrides: the source's input side, preprocessing and no flip TTA give PyTorch's
  forward on the same crops (the fixtures' faces are at the source's side); the crop spec is
  recorded, so loading prints no fallback note."""
  import json  # noqa: PLC0415

  import vaflax  # noqa: PLC0415
  from vaflax import faces, runs  # noqa: PLC0415
  from vaflax.convert import __main__ as cli  # noqa: PLC0415

  out = tmp_path / 'run'
  assert cli.main([f'--format={fmt}', f'--input={fixture(name + ".pth")}', f'--workdir={out}']) == 0
  printed = capsys.readouterr().out
  assert 'loaded' in printed and 'ignored on purpose' in printed and 'licence' in printed
  prov = json.loads((out / 'provenance.json').read_text())
  assert prov['format'] == fmt and len(prov['sha256']) == 64 and prov['licence']
  assert ('CC BY-NC-ND' in prov['licence']) == (fmt == 'emonet')
  assert runs.load_run(str(out)).step == 0
  config = json.loads((out / 'config.json').read_text())
  assert config['image_size'] == image_size and config['eval']['flip_tta'] is False
  assert 'center_crop' not in config['input']['pp_eval']
  spec = faces.CropSpec.from_dict(config['crop'])
  assert (spec.size, spec.margin, spec.aligned) == (image_size, margin, False)
  run = vaflax.load(str(out), batch_size=4)
  assert 'records no crop spec' not in capsys.readouterr().err
  ref = np.load(fixture(f'{name}_outputs.npz'))
  assert ref['faces'].shape[1:3] == (image_size, image_size)
  if fmt == 'emonet':
    va = run.predict(ref['faces'])
    assert rel_diff(va['valence'], ref['valence']) < 1e-4
    assert rel_diff(va['arousal'], ref['arousal']) < 1e-4
  else:
    want = ref['features'] if fmt == 'torchvision_resnet' else ref['tokens'][:, 0]
    assert rel_diff(run.embed(ref['faces']), want) < 1e-4


@pytest.mark.slow
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
  c.model.dtype = 'float32'  # the recipe computes in bfloat16; parity is a float32 check
  assert 'normalize((0.485, 0.456, 0.406)' in c.input.pp_train
  # Only weights travel: the recipe keeps its own eval crop, input side and training data's crop.
  assert c.input.pp_eval.startswith('standardize|center_crop(0.925)|resize({image_size})|')
  assert c.image_size == 112 and not c.crop
  model = runs.make_model(c, nnx.Rngs(7))
  train.init_from(c, model)
  ref = np.load(fixture('resnet50_w4_outputs.npz'))
  model.eval()
  feats = model.features({'image': imagenet_input(ref['faces'], c)})
  assert rel_diff(feats, ref['features']) < 1e-4


@pytest.mark.slow
def test_predict_cropped_gives_emonet_expression_probabilities(tmp_path):
  """`vaflax.predict --cropped` on a converted EmoNet: VA and `expr_<class>` columns (softmax of
  EmoNet's expression logits, its class order) equal PyTorch's on the same face crops."""
  import csv  # noqa: PLC0415

  from PIL import Image  # noqa: PLC0415

  from vaflax.convert import __main__ as convert_cli  # noqa: PLC0415
  from vaflax.predict import cli  # noqa: PLC0415

  run_dir = tmp_path / 'emonet'
  assert convert_cli.main(['--format=emonet', f'--input={fixture("emonet8_w16.pth")}',
                           f'--workdir={run_dir}']) == 0
  ref = np.load(fixture('emonet8_w16_outputs.npz'))
  crops = tmp_path / 'crops'
  crops.mkdir()
  for i, face in enumerate(ref['faces']):  # 64 px: the run's size, so no resampling
    Image.fromarray(face).save(crops / f'face{i}.png')
  # No flags: a converted EmoNet runs as PyTorch's plain forward pass (no flip averaging).
  assert cli.main([f'--workdir={run_dir}', f'--input={crops}', f'--output={tmp_path / "out"}',
                   '--cropped', '--quiet']) == 0
  rows = sorted(csv.DictReader(open(tmp_path / 'out' / 'cropped.csv')), key=lambda r: r['path'])
  names = ('neutral', 'happy', 'sad', 'surprise', 'fear', 'disgust', 'anger', 'contempt')
  logits = ref['expression'] - ref['expression'].max(1, keepdims=True)
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  for i, r in enumerate(rows):
    assert r['status'] == 'ok'
    assert abs(float(r['valence']) - ref['valence'][i]) < 1e-5
    assert abs(float(r['arousal']) - ref['arousal'][i]) < 1e-5
    got = np.array([float(r[f'expr_{n}']) for n in names])
    np.testing.assert_allclose(got, probs[i], atol=2e-6)


@pytest.mark.slow
def test_emofan_recipe_starts_from_a_converted_fan(tmp_path):
  """configs/emofan_va.py:pretrained=OUT (EmoNet's recipe): the model takes OUT's FAN (stacks,
  pooling, weights), frozen, and a new emotion head; the heatmaps are face-alignment's."""
  from flax import nnx  # noqa: PLC0415

  from configs import emofan_va  # noqa: PLC0415
  from vaflax import optim, runs, train  # noqa: PLC0415
  from vaflax.convert import __main__ as cli  # noqa: PLC0415

  out = tmp_path / 'fan'
  assert cli.main(['--format=fan', f'--input={fixture("fan3_max_w16.pth.tar")}',
                   f'--workdir={out}']) == 0
  c = emofan_va.get_config(f'pretrained={out},runlocal=True')
  assert (c.model.num_stacks, c.model.pool, c.model.head, c.model.width) == (3, 'max', 'emonet', 16)
  assert c.frozen == 'fan(/|$)' and 'value_range(0, 1)' in c.input.pp_eval
  model = runs.make_model(c, nnx.Rngs(3))
  train.init_from(c, model)
  params = nnx.to_flat_state(nnx.state(model, nnx.Param))
  n_fan = sum(1 for p, _ in params if p[0] == 'fan')
  assert 0 < n_fan < len(params) and optim.check_frozen(c, model) == n_fan  # the FAN, only
  ref = np.load(fixture('fan3_max_w16_outputs.npz'))
  model.eval()
  out_ = _jit(lambda m, x: m({'image': x}), model, ref['faces'].astype(np.float32) / 255.0)
  assert rel_diff(out_['heatmaps_all'], ref['heatmaps'].transpose(0, 1, 3, 4, 2)) < 1e-4


def test_no_library_module_imports_configs():
  """configs/ import vaflax, never the other way (presets shared with the converters live in
  vaflax/presets.py): no module of the package imports `configs`, at any depth."""
  import ast  # noqa: PLC0415
  import pathlib  # noqa: PLC0415

  root = pathlib.Path(__file__).resolve().parent.parent / 'vaflax'
  found = []
  for path in sorted(root.rglob('*.py')):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import)
               else [node.module or ''] if isinstance(node, ast.ImportFrom) and not node.level
               else [])
      found += [f'{path.relative_to(root.parent)}: {n}' for n in names
                if n == 'configs' or n.startswith('configs.')]
  assert found == []
