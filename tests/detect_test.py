"""vaflax.detect: the Haar wrapper on a real photo and the 5-point box rule."""

import cv2
import numpy as np
import pytest
import skimage.data

from vaflax import detect

# Hand-placed eyes, nose tip and mouth corners of skimage's astronaut (see vaflax/detect.py).
ASTRONAUT_5 = np.array([(202, 100), (246, 104), (224, 125), (205, 143), (243, 143)], np.float64)


def iou(a, b):
  ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
  iw = max(0.0, min(ax1, bx1) - max(a[0], b[0]))
  ih = max(0.0, min(ay1, by1) - max(a[1], b[1]))
  inter = iw * ih
  return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_finds_the_astronaut():
  faces = detect.detect_faces(skimage.data.astronaut())
  assert len(faces) == 1
  x, y, w, h, score = faces[0]
  np.testing.assert_allclose((x, y, w, h), (177, 66, 95, 95), atol=4)
  assert score >= 5


def test_downscaled_search_maps_back_to_source_pixels():
  img = cv2.resize(skimage.data.astronaut(), (1024, 1024), interpolation=cv2.INTER_LINEAR)
  (x, y, w, h, _), = detect.detect_faces(img, min_size=48, max_side=512)
  np.testing.assert_allclose((x, y, w, h), (354, 132, 190, 190), atol=10)


def test_gray_and_rgba_inputs_agree():
  rgb = skimage.data.astronaut()
  gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
  rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], -1)
  assert detect.detect_faces(gray) == detect.detect_faces(rgb) == detect.detect_faces(rgba)


def test_nothing_in_flat_grey_or_tiny_images():
  assert detect.detect_faces(np.full((240, 320, 3), 128, np.uint8)) == []
  assert detect.detect_faces(np.full((10, 10, 3), 128, np.uint8)) == []


def test_min_size_filters_and_sorting_is_by_size():
  img = skimage.data.astronaut()
  assert detect.detect_faces(img, min_size=120) == []
  # Two astronauts side by side at different scales: the bigger face comes first.
  small = cv2.resize(img, (256, 256), interpolation=cv2.INTER_AREA)
  canvas = np.full((512, 768, 3), 200, np.uint8)
  canvas[:, :512] = img
  canvas[128:384, 512:] = small
  faces = detect.detect_faces(canvas)
  assert len(faces) == 2
  assert faces[0][2] > faces[1][2]
  # Haar pyramid steps are 10 %, and the 768 px canvas is searched at 640 px: a few px slack.
  np.testing.assert_allclose(faces[1][:4], (512 + 88.5, 128 + 33, 47.5, 47.5), atol=6)


def test_bad_input_is_named():
  with pytest.raises(ValueError, match='uint8'):
    detect.detect_faces(np.zeros((32, 32, 3), np.float32))
  with pytest.raises(ValueError, match='image'):
    detect.detect_faces(np.zeros((32, 32, 2), np.uint8))


def test_five_point_box_matches_haar_framing():
  box = detect.box_from_five_points(ASTRONAUT_5)
  # Hand computation: eye centre (224, 102), mouth centre (224, 143), inter-ocular
  # sqrt(44^2 + 4^2) = 44.18 > eye-mouth 41, side 2.2 * 44.18, centre y 102 + 0.3 * 41.
  side = 2.2 * np.hypot(44, 4)
  np.testing.assert_allclose(box, (224 - side / 2, 114.3 - side / 2, side, side), atol=1e-6)
  assert iou(box, (177, 66, 95, 95)) > 0.9


def test_five_point_box_uses_the_larger_scale():
  # A pitched head: eyes far apart, mouth close; the inter-ocular distance sets the side.
  p = np.array([(0, 0), (40, 0), (20, 10), (10, 10), (30, 10)], np.float64)
  assert detect.box_from_five_points(p)[2] == pytest.approx(88.0)
  # A turned head: eyes close, mouth far; eye-to-mouth sets it.
  p = np.array([(0, 0), (10, 0), (5, 20), (0, 50), (10, 50)], np.float64)
  assert detect.box_from_five_points(p)[2] == pytest.approx(110.0)
  with pytest.raises(ValueError, match='5 finite'):
    detect.box_from_five_points(np.full((5, 2), np.nan))
