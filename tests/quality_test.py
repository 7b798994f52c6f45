"""Face quality (vaflax/quality.py) on real faces: sharpness falls with blur and downscaling, the
flags' thresholds sit between the measured cases, pose from keypoints by hand."""

import math

import cv2
import numpy as np
import pytest
import skimage.data

from vaflax import faces, quality


def _face():
  return skimage.data.astronaut()[40:200, 150:300]


def test_sharpness_separates_sharp_from_blurred_and_upscaled_faces():
  face = _face()
  sharp = quality.sharpness(face)
  blurred = quality.sharpness(cv2.GaussianBlur(face, (0, 0), face.shape[0] / 64))
  small = cv2.resize(face, (face.shape[1] // 4, face.shape[0] // 4), interpolation=cv2.INTER_AREA)
  upscaled = quality.sharpness(cv2.resize(small, face.shape[1::-1]))
  assert sharp == pytest.approx(0.0481, abs=2e-3)
  assert blurred < quality.BLURRED < sharp
  assert upscaled < quality.BLURRED
  # The measure does not depend on the value range: uint8, [-1, 1] and affine-scaled agree.
  assert quality.sharpness(face / 127.5 - 1) == pytest.approx(sharp, rel=1e-5)
  assert quality.sharpness(face * 3.0 + 7) == pytest.approx(sharp, rel=1e-5)
  assert quality.sharpness(np.full((30, 30, 3), 9, np.uint8)) == 0.0


def test_pose_from_keypoints_by_hand():
  # eye_left, eye_right, nose, mouth (image coordinates)
  frontal = [[40, 50], [80, 50], [60, 70], [60, 90]]
  assert quality.pose(frontal) == pytest.approx((0.0, 0.0))
  turned = [[40, 50], [80, 50], [70, 70], [65, 90]]  # nose half way to the right eye
  assert quality.pose(turned)[0] == pytest.approx(30.0)  # asin(10 / 20)
  rolled = [[40, 50], [80, 90], [50, 80], [40, 100]]
  assert quality.pose(rolled)[1] == pytest.approx(45.0)
  assert all(math.isnan(v) for v in quality.pose(None))
  assert all(math.isnan(v) for v in quality.pose([[1, 1]] * 4))  # no eye distance


def test_flags_name_every_reason_and_nan_raises_none():
  assert quality.flags(size_px=100, sharp=0.05, yaw=10, score=0.9) == ''
  assert quality.flags(size_px=20, sharp=0.001, yaw=-60, score=0.55, roll=-25) == (
      'small|blurred|profile|rolled|low_score')
  assert quality.flags(size_px=100, sharp=0.05, yaw=math.nan, score=math.nan) == ''
  assert quality.flags(size_px=100, sharp=0.05, yaw=0, score=0.9, roll=19.9) == ''
  m = quality.measure(_face(), (150, 40, 150, 160), [[190, 110], [250, 110], [220, 140],
                                                      [220, 165]], 0.93)
  assert m['flags'] == '' and m['face_px'] == 150 and m['yaw'] == pytest.approx(0.0)
  # The same face with its eyes on a 30 degree line: rolled (roll from the keypoints).
  tilted = quality.measure(_face(), (150, 40, 150, 160), [[190, 110], [242, 140], [212, 150],
                                                           [200, 175]], 0.93)
  assert tilted['roll'] == pytest.approx(29.98, abs=0.01) and tilted['flags'] == 'rolled'


def test_difficulty_features_grow_with_blur_and_flip_disagreement():
  face = _face().astype(np.float32) / 255
  blurred = cv2.GaussianBlur(face, (0, 0), 4)
  va = np.array([[0.1, 0.2], [0.1, 0.2]])
  f = quality.difficulty_features(np.stack([face, blurred]), va, va + [[0, 0], [0.4, -0.2]])
  assert f[0, 0] > f[1, 0] + 2  # log sharpness: e^2 ~ 7x apart
  assert f[:, 1] == pytest.approx([0.0, 0.3])
  assert f[:, 2] == pytest.approx([0.0, 0.0])  # roll unknown: upright
  f = quality.difficulty_features(np.stack([face, face]), va, va, roll_N=[-32.0, np.nan])
  assert f[:, 2] == pytest.approx([32.0, 0.0])


def test_crop_roll_is_the_tilt_left_in_the_crop():
  # Keypoints of a face whose eyes lie on a 30 degree line (quality.pose's sign).
  kp = np.array([[100, 100], [100 + 40 * np.cos(np.pi / 6), 100 + 40 * np.sin(np.pi / 6)],
                 [110, 130], [100, 150]])
  box = faces.square_box(faces.box_from_landmarks(kp), 0.2)
  assert quality.crop_roll(box, kp) == pytest.approx(30.0)  # a box crop keeps the tilt
  aligned = faces.aligned_frame(kp, faces.CropSpec(size=112, aligned=True))
  assert abs(quality.crop_roll(aligned, kp)) < 5.0  # an aligned crop takes it out
  assert math.isnan(quality.crop_roll(box, None))
