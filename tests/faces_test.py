import cv2
import numpy as np
import pytest
import skimage.data

from vaflax import detect, faces
from vaflax.data import ops


def test_crop_box_geometry_and_landmark_mapping():
  img = np.zeros((100, 200, 3), np.uint8)
  img[40:60, 90:110] = 200  # a 20x20 "face"
  crop, cb = faces.crop_face(img, box=(90, 40, 20, 20), spec=faces.CropSpec(margin=0.5, size=40))
  assert crop.shape == (40, 40, 3) and cb == faces.CropBox(80, 30, 40)
  # The face occupies the central half of the crop.
  assert crop[15:25, 15:25].min() == 200 and crop[:5].max() == 0
  np.testing.assert_allclose(cb.to_crop([[100, 50]]), [[0.5, 0.5]])
  np.testing.assert_allclose(cb.to_source(cb.to_crop([[93.0, 41.0]])), [[93.0, 41.0]], atol=1e-5)


def test_crop_at_border_pads_instead_of_shifting():
  img = np.full((50, 50, 3), 255, np.uint8)
  crop, cb = faces.crop_face(img, box=(0, 0, 10, 10), spec=faces.CropSpec(margin=0.5, size=20))
  assert (cb.x0, cb.y0, cb.side) == (-5, -5, 20)
  assert crop[:5, :5].max() == 0 and crop[10:, 10:].min() == 255


def test_crop_from_landmarks_uses_their_box():
  lm = np.array([[10, 20], [30, 20], [20, 40]], np.float32)
  _, cb = faces.crop_face(np.zeros((64, 64, 3), np.uint8), landmarks=lm,
                         spec=faces.CropSpec(margin=0.0, size=16))
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


# --- Aligned crops -------------------------------------------------------------------------------


def test_similarity_recovers_a_known_transform_and_a_hand_case():
  # Hand case: (0, 0), (2, 0) onto (1, 1), (1, 2): a quarter turn, scale 1/2, shift (1, 1).
  A, t = faces.similarity([[0, 0], [2, 0]], [[1, 1], [1, 2]])
  np.testing.assert_allclose(A, [[0, -0.5], [0.5, 0]], atol=1e-12)
  np.testing.assert_allclose(t, [1, 1], atol=1e-12)
  # A known similarity (scale 1.7, 35 degrees, shift (4, -2)) of 4 generic points, recovered.
  th = np.radians(35.0)
  A_true = 1.7 * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
  src = np.array([[3.0, 1.0], [9.0, 2.0], [6.0, 5.0], [5.5, 9.0]])
  A, t = faces.similarity(src, src @ A_true.T + [4.0, -2.0])
  np.testing.assert_allclose(A, A_true, atol=1e-12)
  np.testing.assert_allclose(t, [4.0, -2.0], atol=1e-12)
  # A mirror image is not a similarity: the best one without reflection is worse than exact.
  A, _ = faces.similarity(src, src * [-1, 1])
  assert np.linalg.det(A) >= 0
  with pytest.raises(ValueError, match='degenerate'):
    faces.similarity([[1, 1], [1, 1]], [[0, 0], [1, 0]])


def test_keypoint_converters():
  lm = np.zeros((68, 2))
  lm[36:42] = [10, 20]
  lm[42:48] = [30, 22]
  lm[30] = [20, 30]
  lm[48], lm[54] = [12, 40], [28, 42]
  np.testing.assert_allclose(faces.keypoints_from_68(lm), [[10, 20], [30, 22], [20, 30], [20, 41]])
  five = [[1, 2], [5, 2], [3, 4], [2, 6], [4, 8]]
  np.testing.assert_allclose(faces.keypoints_from_5(five), [[1, 2], [5, 2], [3, 4], [3, 7]])
  np.testing.assert_allclose(faces.keypoints(np.asarray(five)[:4]), np.asarray(five)[:4])
  with pytest.raises(ValueError, match=r'\(68, 2\), \(5, 2\) or \(4, 2\)'):
    faces.keypoints(np.zeros((7, 2)))


def test_crop_spec_round_trip_and_checks():
  spec = faces.CropSpec(aligned=True, margin=0.25, size=64)
  assert faces.CropSpec.from_dict(spec.to_dict()) == spec
  assert faces.CropSpec.from_dict({}) == faces.DEFAULT_CROP
  with pytest.raises(ValueError, match='unknown fields'):
    faces.CropSpec.from_dict({'aligned': True, 'pad': 1})
  with pytest.raises(ValueError, match='unknown template'):
    faces.CropSpec(aligned=True, template='nope')


def test_aligned_crop_puts_keypoints_on_the_template():
  img = np.random.default_rng(0).integers(0, 255, (200, 300, 3), np.uint8)
  kp = np.array([[120.0, 80.0], [160.0, 95.0], [135.0, 110.0], [128.0, 135.0]])
  # 200 px for a ~120 px face window: upsampled, so each crop pixel is one bilinear sample.
  spec = faces.CropSpec(aligned=True, margin=0.1, size=200)
  crop, frame = faces.crop_face(img, box=(0, 0, 5, 5), landmarks=kp, spec=spec)  # box unused
  assert crop.shape == (200, 200, 3)
  want = (faces.TEMPLATES['haar_frame'] + 0.1) / 1.2
  # 4 points, 4 parameters of a similarity: not exact, but each within a few % of the crop.
  assert np.abs(frame.to_crop(kp) - want).max() < 0.04
  np.testing.assert_allclose(frame.to_source(frame.to_crop(kp)), kp, atol=1e-3)
  # The pixel at a keypoint is the source pixel there (bilinear, up to the half-pixel grid).
  for u, v in np.floor(frame.to_crop(kp) * 200).astype(int):
    x, y = frame.to_source([[(u + 0.5) / 200, (v + 0.5) / 200]])[0]
    ref = cv2.getRectSubPix(img.astype(np.float32), (1, 1), (float(x) - 0.5, float(y) - 0.5))
    np.testing.assert_allclose(crop[v, u], ref[0, 0], atol=2)
  # Without landmarks the aligned spec falls back to the box crop.
  _, fb = faces.crop_face(img, box=(100, 60, 80, 80), spec=spec)
  assert isinstance(fb, faces.CropBox)


# Measured once by eye on skimage.data.astronaut() (a 4x enlarged, 10 px gridded view of
# (150..300, 50..200)): eye centres and mouth corners as in vaflax/detect.py's calibration, the
# nose tip at (225, 127).
ASTRONAUT_FIVE = np.array([[202, 100], [246, 104], [225, 127], [205, 143], [243, 143]], np.float64)


def _ncc(a, b) -> float:
  a = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY).astype(np.float64).ravel()
  b = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY).astype(np.float64).ravel()
  a, b = a - a.mean(), b - b.mean()
  return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_aligned_crop_undoes_a_40_degree_in_plane_turn():
  """The issue-15 evidence: a face turned in-plane by 40 degrees gives an aligned crop matching
  the upright one's (NCC >= 0.9); a box crop of the same face does not."""
  img = skimage.data.astronaut()
  centre = tuple(float(v) for v in faces.keypoints(ASTRONAUT_FIVE).mean(0))
  M = cv2.getRotationMatrix2D(centre, 40.0, 1.0)
  turned = cv2.warpAffine(img, M, img.shape[1::-1], flags=cv2.INTER_LINEAR)
  five_turned = ASTRONAUT_FIVE @ M[:, :2].T + M[:, 2]
  spec = faces.CropSpec(aligned=True, margin=0.2, size=112)
  up, _ = faces.crop_face(img, landmarks=ASTRONAUT_FIVE, spec=spec)
  al, frame = faces.crop_face(turned, landmarks=five_turned, spec=spec)
  ncc_aligned = _ncc(up, al)
  # The box crop: the upright face's box (the box a perfect box detector would give; the turn
  # is about its centre), with the same margin and size.
  box = detect.box_from_five_points(ASTRONAUT_FIVE)
  box_spec = faces.CropSpec(aligned=False, margin=0.2, size=112)
  up_box, _ = faces.crop_face(img, box=box, spec=box_spec)
  turned_box, _ = faces.crop_face(turned, box=box, spec=box_spec)
  ncc_box = _ncc(up_box, turned_box)
  print(f'NCC aligned {ncc_aligned:.3f}, box {ncc_box:.3f}, undone rotation {frame.rotation_deg:.1f}')
  assert ncc_aligned >= 0.9 and ncc_box < 0.7
