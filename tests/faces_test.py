import numpy as np
import pytest

from vaflax import faces
from vaflax.data import ops


def test_crop_box_geometry_and_landmark_mapping():
  img = np.zeros((100, 200, 3), np.uint8)
  img[40:60, 90:110] = 200  # a 20x20 "face"
  crop, cb = faces.crop_face(img, box=(90, 40, 20, 20), margin=0.5, size=40)
  assert crop.shape == (40, 40, 3) and cb == faces.CropBox(80, 30, 40)
  # The face occupies the central half of the crop.
  assert crop[15:25, 15:25].min() == 200 and crop[:5].max() == 0
  np.testing.assert_allclose(cb.to_crop([[100, 50]]), [[0.5, 0.5]])
  np.testing.assert_allclose(cb.to_source(cb.to_crop([[93.0, 41.0]])), [[93.0, 41.0]], atol=1e-5)


def test_crop_at_border_pads_instead_of_shifting():
  img = np.full((50, 50, 3), 255, np.uint8)
  crop, cb = faces.crop_face(img, box=(0, 0, 10, 10), margin=0.5, size=20)
  assert (cb.x0, cb.y0, cb.side) == (-5, -5, 20)
  assert crop[:5, :5].max() == 0 and crop[10:, 10:].min() == 255


def test_crop_from_landmarks_uses_their_box():
  lm = np.array([[10, 20], [30, 20], [20, 40]], np.float32)
  _, cb = faces.crop_face(np.zeros((64, 64, 3), np.uint8), landmarks=lm, margin=0.0, size=16)
  assert cb == faces.CropBox(10, 20, 20)
  assert np.all((cb.to_crop(lm) >= 0) & (cb.to_crop(lm) <= 1))


def test_bad_boxes_raise():
  with pytest.raises(ValueError, match='invalid face box'):
    faces.crop_face(np.zeros((8, 8, 3), np.uint8), box=(0, 0, 0, 5))
  with pytest.raises(ValueError, match='box or landmarks'):
    faces.crop_face(np.zeros((8, 8, 3), np.uint8))


def test_flip_permutation_is_an_involution_with_known_pairs():
  p = faces.IBUG68_FLIP
  np.testing.assert_array_equal(p[p], np.arange(68))
  assert (p[36], p[45], p[0], p[16], p[48], p[54]) == (45, 36, 16, 0, 54, 48)
  for fixed in (8, 27, 28, 29, 30, 33, 51, 57, 62, 66):
    assert p[fixed] == fixed


def test_crop_inputs_is_the_image_and_audio_standardize_gives():
  grey = np.arange(64, dtype=np.uint8).reshape(8, 8, 1)
  rec = {'image': grey, 'valence': 0.1, 'arousal': 0.2, 'va_mask': np.ones(2), 'emotion': 1,
         'landmarks': np.zeros((68, 2)), 'landmarks_mask': 0.0, 'audio': np.ones(4, np.float64)}
  std = ops.build('standardize(audio=True)')(dict(rec), np.random.default_rng(0))
  mine = faces.crop_inputs(grey, rec['audio'])
  assert mine['image'].shape == (8, 8, 3) and mine['image'].dtype == np.uint8
  np.testing.assert_array_equal(mine['image'], std['image'])
  assert mine['audio'].dtype == np.float32
  np.testing.assert_array_equal(mine['audio'], std['audio'])
  # A window given as a list of crops is stacked; no audio, no audio key.
  win = faces.crop_inputs([grey, grey + 1])
  assert win['image'].shape == (2, 8, 8, 3) and set(win) == {'image'}
