"""How usable a detected face is: sharpness, size, pose from its keypoints, detector score, and
the flags predict writes with every face (docs/uncertainty.md gives the thresholds' reasons).

Shapes: N faces, H/W crop pixels, L keypoints in faces.KEYPOINTS order (eye_left, eye_right,
nose, mouth: image-left eye first).
"""

from __future__ import annotations

import math

import numpy as np

from vaflax import faces

# Flag thresholds. A face is flagged, never dropped: the user decides what to keep.
SMALL_PX = 40  # box side: below it the crop is upscaled past ~3x for a 112 px model input
BLURRED = 0.01  # sharpness (below). Measured (tests/quality_test.py): sharp faces 0.048
# (skimage's astronaut) and 0.16 (matplotlib's grace_hopper); the astronaut face after a Gaussian
# blur of sigma 1 px at 64 px 0.0045, shrunk 4x and enlarged back 0.0085, shrunk 2x 0.023
PROFILE_DEG = 45.0  # |yaw| above it: one eye is mostly hidden and alignment degrades
ROLLED_DEG = 20.0  # |roll| above it: a box crop (the default) keeps the tilt, and models trained
# on upright faces err more on tilted ones; a scaled calibration gives such faces (rolled in the
# model input) quantiles of their own (DIFFICULTY_CATEGORIES, docs/uncertainty.md)
LOW_SCORE = 0.7  # detector score below it (BlazeFace keeps faces from 0.5 up)
FLAGS = ('small', 'blurred', 'profile', 'rolled', 'low_score')
SHARPNESS_SIZE = 64  # crops are compared at one size, whatever the run's crop size

_EYE_L, _EYE_R, _NOSE = (faces.KEYPOINTS.index(k) for k in ('eye_left', 'eye_right', 'nose'))


def _gray(image_HxWxC: np.ndarray) -> np.ndarray:
  x = np.asarray(image_HxWxC, np.float64)
  return x @ np.array([0.299, 0.587, 0.114]) if x.ndim == 3 and x.shape[-1] == 3 else x


def sharpness(image_HxWxC: np.ndarray) -> float:
  """Variance of the 4-neighbour Laplacian over the variance of the image, at 64 x 64 gray.

  The ratio does not change with brightness, contrast or the value range (uint8, [0, 1],
  [-1, 1] or ImageNet-normalised inputs give the same number), so it can be taken on a crop or
  on a model input. High-frequency energy falls with blur and with upscaling of a small face.
  """
  import cv2  # noqa: PLC0415

  g = _gray(image_HxWxC).astype(np.float32)
  g = cv2.resize(g, (SHARPNESS_SIZE, SHARPNESS_SIZE), interpolation=cv2.INTER_AREA)
  lap = (g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1]) - 4 * g[1:-1, 1:-1]
  var = float(g.var())
  return float(lap.var()) / (var * 8.0) if var > 1e-12 else 0.0  # /8: a unit-variance white
  # noise image gives ~2.5, a sharp face 0.05-0.2


def pose(landmarks_Lx2) -> tuple[float, float]:
  """(yaw, roll) in degrees from 4 keypoints; NaN without them.

  roll: the angle of the line from the image-left to the image-right eye (positive clockwise in
  image coordinates). yaw: the nose tip's offset from the eyes' midpoint along that line, over
  half the eye distance, taken as the sine of the turn (weak perspective with the nose tip as
  far ahead of the eyes as they are apart; 0 frontal, +-90 when the nose reaches an eye).
  """
  if landmarks_Lx2 is None or np.shape(landmarks_Lx2) != (len(faces.KEYPOINTS), 2):
    return math.nan, math.nan
  lm = np.asarray(landmarks_Lx2, np.float64)
  eye = lm[_EYE_R] - lm[_EYE_L]
  dist = float(np.hypot(*eye))
  if not np.isfinite(dist) or dist < 1e-6:
    return math.nan, math.nan
  roll = math.degrees(math.atan2(eye[1], eye[0]))
  offset = float(np.dot(lm[_NOSE] - (lm[_EYE_L] + lm[_EYE_R]) / 2, eye / dist))
  yaw = math.degrees(math.asin(float(np.clip(offset / (dist / 2), -1.0, 1.0))))
  return yaw, roll


def flags(*, size_px: float, sharp: float, yaw: float, score: float,
          roll: float = math.nan) -> str:
  """The face's flags, '|'-joined in FLAGS order ('' for a clean face). A NaN measure (no
  keypoints, a detector without scores) raises no flag."""
  out = []
  if size_px < SMALL_PX:
    out.append('small')
  if sharp < BLURRED:
    out.append('blurred')
  if abs(yaw) > PROFILE_DEG:
    out.append('profile')
  if abs(roll) > ROLLED_DEG:
    out.append('rolled')
  if score < LOW_SCORE:
    out.append('low_score')
  return '|'.join(out)


def measure(crop_HxWx3: np.ndarray, box_xywh, landmarks_Lx2, score: float) -> dict:
  """Every quality column of one face: det_score, face_px, sharpness, yaw, roll, flags."""
  size = float(min(box_xywh[2], box_xywh[3]))
  sharp = sharpness(crop_HxWx3)
  yaw, roll = pose(landmarks_Lx2)
  return {'face_px': size, 'sharpness': sharp, 'yaw': yaw, 'roll': roll,
          'flags': flags(size_px=size, sharp=sharp, yaw=yaw, score=float(score), roll=roll)}


def crop_roll(frame, landmarks_Lx2) -> float:
  """The roll (degrees, quality.pose's sign) of a face inside its crop: its keypoints mapped
  into the crop by the crop's frame (faces.CropBox or faces.AlignedFrame, as crop_face returns
  it). A box crop keeps the face's tilt; an aligned crop takes most of it out. NaN without
  keypoints."""
  if landmarks_Lx2 is None:
    return math.nan
  try:
    kp = faces.keypoints(landmarks_Lx2)
  except ValueError:
    return math.nan
  return pose(frame.to_crop(kp))[1]


def difficulty_features(images_NxHxWxC: np.ndarray, va_Nx2: np.ndarray,
                        va_flipped_Nx2: np.ndarray, roll_N=None) -> np.ndarray:
  """The features (N, 3) of calibration's difficulty model (vaflax/calibration.py), in
  DIFFICULTY_FEATURES order, taken on the model inputs so that evaluate and predict see the
  same numbers: log sharpness, how far the model's VA moves when the face is mirrored (a face
  the model is unsure of moves more), and |roll| of the face in the model input in degrees
  (`roll_N`, crop_roll; unknown -- NaN or not given, e.g. crops without keypoints -- is taken
  as upright, 0)."""
  sharp = np.array([sharpness(x) for x in np.asarray(images_NxHxWxC)])
  gap = np.abs(np.asarray(va_Nx2, np.float64) - np.asarray(va_flipped_Nx2, np.float64)).mean(-1)
  roll = np.zeros(len(sharp)) if roll_N is None else np.asarray(roll_N, np.float64).reshape(-1)
  return np.stack([np.log(sharp + 1e-3), gap, np.nan_to_num(np.abs(roll), nan=0.0)], axis=-1)


DIFFICULTY_FEATURES = ('log_sharpness', 'flip_gap', 'abs_roll')
# Faces with quantiles of their own in a scaled calibration (calibration.calibrate's
# `categories`, Mondrian conformal), since the difficulty model alone under-widens them
# (docs/uncertainty.md): (feature, 'below' | 'above', threshold), the first that holds wins.
# Blurred faces as the `blurred` flag marks them, on the model input; faces rolled in the model
# input as the `rolled` flag marks them in the image (box crops keep the tilt).
DIFFICULTY_CATEGORIES = (('log_sharpness', 'below', math.log(BLURRED + 1e-3)),
                         ('abs_roll', 'above', ROLLED_DEG))
DIFFICULTY_SIGNS = (-1, 1, 1)  # a less sharp face, one whose VA moves more when mirrored, or a
# more rolled one is harder: calibration's difficulty model may only widen intervals that way
