"""The one face crop used everywhere: dataset builders, training-time ops and predict.

`crop_face(image, box=..., landmarks=..., spec=CropSpec(...))` cuts a `spec.size` square crop in
one of two ways:

- box crop (`spec.aligned` False, or no landmarks): a square around a face box (x, y, w, h in
  pixels), or around the bounding box of the landmarks when no box is given, enlarged by
  `spec.margin` (a fraction of the box side added on *each* side).
- aligned crop (`spec.aligned` and landmarks given): the similarity (rotation, uniform scale,
  translation) that maps the face's 4 keypoints (`KEYPOINTS`) closest, in least squares, onto a
  canonical template (`TEMPLATES[spec.template]`) in the crop frame, with the same margin
  semantics: the template lives in a unit face box, and the margin enlarges that box on each side.

Pixels outside the image are zeros in both, so a face at the border keeps its geometry instead of
being shifted. The `CropSpec` a dataset was built with is recorded in its metadata (key `crop`)
and in the config of every run trained on it (`config.crop`), so predict cuts the same crop.
Train and test use the same function; that is the point.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

# Canonical keypoints, in this order everywhere (datasets, detectors, predict's CSV). Left and
# right are IMAGE sides (eye_left has the smaller x in an upright face); mouth is its centre.
KEYPOINTS = ('eye_left', 'eye_right', 'nose', 'mouth')

# The canonical template 'haar_frame': where the keypoints of an upright frontal face sit in the
# unit face box that `vaflax.detect.box_from_five_points` draws around them (side 2.2 x the
# eye/mouth scale, centre 0.3 of the way from the eyes to the mouth; calibrated there against the
# Haar box of skimage's astronaut). Eye distance = eye-to-mouth distance = 1 / 2.2 of the box;
# the nose halfway down. So an aligned crop of an upright face frames it like a box crop of its
# Haar box with the same margin, and runs trained on either kind see faces of the same size.
_S = 1.0 / 2.2
_EYE_Y = 0.5 - 0.3 * _S
TEMPLATES = {
    'haar_frame': np.array(
        [[0.5 - _S / 2, _EYE_Y], [0.5 + _S / 2, _EYE_Y], [0.5, _EYE_Y + 0.5 * _S],
         [0.5, _EYE_Y + _S]], np.float64),
}


@dataclasses.dataclass(frozen=True)
class CropSpec:
  """How a face crop is cut: what a dataset records in its metadata and a run in its config.

  aligned: similarity-align the keypoints to `template` when landmarks are known (else the box).
  margin: fraction of the face box side added on each side (box and template frame alike).
  size: crop side in pixels.
  template: a name in `TEMPLATES` (used only when aligned).
  """

  aligned: bool = False
  margin: float = 0.2
  size: int = 112
  template: str = 'haar_frame'

  def __post_init__(self):
    if not (isinstance(self.size, int | np.integer) and self.size >= 1):
      raise ValueError(f'CropSpec: size must be a positive integer, got {self.size!r}')
    if not (np.isfinite(self.margin) and self.margin > -0.5):
      raise ValueError(f'CropSpec: margin must be a number > -0.5, got {self.margin!r}')
    if self.aligned and self.template not in TEMPLATES:
      raise ValueError(f'CropSpec: unknown template {self.template!r}; known: {sorted(TEMPLATES)}')

  def to_dict(self) -> dict:
    return {'aligned': bool(self.aligned), 'margin': float(self.margin), 'size': int(self.size),
            'template': str(self.template)}

  @classmethod
  def from_dict(cls, d) -> CropSpec:
    d = dict(d)
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise ValueError(f'CropSpec: unknown fields {unknown} in {d}')
    kw = {}
    for f, conv in (('aligned', bool), ('margin', float), ('size', int), ('template', str)):
      if f in d:
        kw[f] = conv(d[f])
    return cls(**kw)


# What a run that recorded no crop (trained before crops were recorded, or converted weights)
# is given: the box crop with margin 0.2 that every Haar-box builder and predict used, at 112 px
# unless the run's dataset says its size (vaflax/predict/model.py).
DEFAULT_CROP = CropSpec()


@dataclasses.dataclass(frozen=True)
class CropBox:
  """A square crop window in source-image pixels: top-left (x0, y0) and side length."""

  x0: int
  y0: int
  side: int

  def to_crop(self, points_Nx2: np.ndarray) -> np.ndarray:
    """Maps source pixel coordinates to [0, 1] coordinates relative to the crop."""
    p = np.asarray(points_Nx2, np.float32)
    return (p - np.array([self.x0, self.y0], np.float32)) / float(self.side)

  def to_source(self, points_Nx2: np.ndarray) -> np.ndarray:
    """Inverse of `to_crop`."""
    p = np.asarray(points_Nx2, np.float32)
    return p * float(self.side) + np.array([self.x0, self.y0], np.float32)


@dataclasses.dataclass(frozen=True)
class AlignedFrame:
  """The similarity of an aligned crop: crop [0, 1] coordinates = A @ (x, y) + t, where
  A = scale * rotation. Same interface as `CropBox`."""

  A_2x2: np.ndarray
  t_2: np.ndarray

  def to_crop(self, points_Nx2: np.ndarray) -> np.ndarray:
    p = np.asarray(points_Nx2, np.float64)
    return (p @ self.A_2x2.T + self.t_2).astype(np.float32)

  def to_source(self, points_Nx2: np.ndarray) -> np.ndarray:
    p = np.asarray(points_Nx2, np.float64)
    return ((p - self.t_2) @ np.linalg.inv(self.A_2x2).T).astype(np.float32)

  @property
  def rotation_deg(self) -> float:
    """Counter-clockwise (in image coordinates, y down: clockwise on screen) rotation applied."""
    return float(np.degrees(np.arctan2(self.A_2x2[1, 0], self.A_2x2[0, 0])))


def keypoints_from_68(landmarks_68x2) -> np.ndarray:
  """KEYPOINTS from the iBUG-68 markup: eye centres (means of 36-41 and 42-47: the image-left
  and image-right eye of an upright face), nose tip 30, mouth centre (mean of corners 48, 54)."""
  p = np.asarray(landmarks_68x2, np.float64)
  if p.shape != (68, 2):
    raise ValueError(f'keypoints_from_68: need (68, 2) landmarks, got shape {p.shape}')
  return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], 0.5 * (p[48] + p[54])])


def keypoints_from_5(points_5x2) -> np.ndarray:
  """KEYPOINTS from the 5-point markup (left eye, right eye, nose, left and right mouth corner:
  CelebA, MTCNN, RetinaFace): the mouth centre is the mean of the corners."""
  p = np.asarray(points_5x2, np.float64)
  if p.shape != (5, 2):
    raise ValueError(f'keypoints_from_5: need (5, 2) points, got shape {p.shape}')
  return np.stack([p[0], p[1], p[2], 0.5 * (p[3] + p[4])])


def keypoints(landmarks_Nx2) -> np.ndarray:
  """KEYPOINTS (4, 2) of a markup of 68, 5 or 4 (already canonical) points."""
  p = np.asarray(landmarks_Nx2, np.float64)
  conv = {68: keypoints_from_68, 5: keypoints_from_5, len(KEYPOINTS): np.asarray}
  if p.ndim != 2 or p.shape[1] != 2 or p.shape[0] not in conv:
    raise ValueError(f'keypoints: landmarks must be (68, 2), (5, 2) or (4, 2), got {p.shape}')
  return np.asarray(conv[p.shape[0]](p), np.float64)


def similarity(src_Nx2, dst_Nx2) -> tuple[np.ndarray, np.ndarray]:
  """(A 2x2, t 2) of the similarity (rotation, uniform scale, translation; no reflection) that
  maps src onto dst in least squares: dst ~ A @ src + t.

  Closed form (the 2-D case of Umeyama, PAMI 1991): in complex numbers, with both point sets
  centred, the best z = s * exp(i theta) minimises sum |d_k - z p_k|^2, so
  z = sum(conj(p_k) d_k) / sum |p_k|^2.
  """
  src, dst = np.asarray(src_Nx2, np.float64), np.asarray(dst_Nx2, np.float64)
  ms, md = src.mean(0), dst.mean(0)
  p = (src - ms) @ np.array([1, 1j])
  d = (dst - md) @ np.array([1, 1j])
  energy = float(np.sum(np.abs(p) ** 2))
  if not np.isfinite(energy) or energy <= 1e-12:
    raise ValueError(f'similarity: degenerate source points {src.tolist()}')
  z = np.sum(np.conj(p) * d) / energy
  A = np.array([[z.real, -z.imag], [z.imag, z.real]])
  return A, md - A @ ms


def box_from_landmarks(landmarks_Nx2) -> tuple[float, float, float, float]:
  """Tight (x, y, w, h) box of the finite landmark points."""
  p = np.asarray(landmarks_Nx2, np.float64)
  p = p[np.all(np.isfinite(p), axis=1)]
  if p.size == 0:
    raise ValueError('box_from_landmarks: no finite landmark point')
  x0, y0 = p.min(0)
  x1, y1 = p.max(0)
  return float(x0), float(y0), float(x1 - x0), float(y1 - y0)


def square_box(box_xywh, margin: float) -> CropBox:
  """Square window centred on the box, side = max(w, h) * (1 + 2 * margin)."""
  x, y, w, h = (float(v) for v in box_xywh)
  if not (np.isfinite([x, y, w, h]).all() and w > 0 and h > 0):
    raise ValueError(f'square_box: invalid face box {box_xywh!r} (need finite x, y and w, h > 0)')
  side = max(w, h) * (1.0 + 2.0 * margin)
  cx, cy = x + 0.5 * w, y + 0.5 * h
  side_i = max(1, int(round(side)))
  return CropBox(int(round(cx - 0.5 * side_i)), int(round(cy - 0.5 * side_i)), side_i)


def aligned_frame(landmarks_Nx2, spec: CropSpec) -> AlignedFrame:
  """The similarity taking the face's keypoints onto `spec.template` in crop [0, 1] coordinates."""
  kp = keypoints(landmarks_Nx2)
  if not np.isfinite(kp).all():
    raise ValueError(f'aligned crop: keypoints not finite: {kp.tolist()}')
  dst = (TEMPLATES[spec.template] + spec.margin) / (1.0 + 2.0 * spec.margin)
  return AlignedFrame(*similarity(kp, dst))


def _as_rgb(image_HxWxC) -> np.ndarray:
  img = np.asarray(image_HxWxC)
  if img.ndim == 2:
    img = np.repeat(img[..., None], 3, axis=-1)
  if img.ndim != 3 or img.shape[0] == 0 or img.shape[1] == 0:
    raise ValueError(f'crop_face: expected an HxWxC image, got shape {img.shape}')
  return img


def _box_crop(img, cb: CropBox, size: int) -> np.ndarray:
  h, w = img.shape[:2]
  # Pad only what the window needs outside the image, then cut: exact integer geometry.
  pad_l, pad_t = max(0, -cb.x0), max(0, -cb.y0)
  pad_r, pad_b = max(0, cb.x0 + cb.side - w), max(0, cb.y0 + cb.side - h)
  if pad_l or pad_t or pad_r or pad_b:
    img = np.pad(img, ((pad_t, pad_b), (pad_l, pad_r), (0, 0)))
  ys, xs = cb.y0 + pad_t, cb.x0 + pad_l
  window = img[ys : ys + cb.side, xs : xs + cb.side]
  interp = cv2.INTER_AREA if cb.side > size else cv2.INTER_LINEAR
  return cv2.resize(np.ascontiguousarray(window), (size, size), interpolation=interp)


def _aligned_crop(img, frame: AlignedFrame, size: int) -> np.ndarray:
  # Shrinking by more than 1x with bilinear sampling aliases; like the box crop (INTER_AREA),
  # warp at the source resolution first, then area-resize to `size`.
  scale = float(np.sqrt(abs(np.linalg.det(frame.A_2x2))))  # crop units per source pixel
  side = max(size, int(round(1.0 / scale))) if scale > 0 else size
  # Continuous coordinates put pixel j's centre at j + 0.5 (as `CropBox` and cv2.resize do);
  # warpAffine maps pixel indices: shift by half a pixel on both sides.
  A = frame.A_2x2 * side
  t = side * (frame.A_2x2 @ np.array([0.5, 0.5]) + frame.t_2) - 0.5
  M = np.concatenate([A, t[:, None]], 1)
  warped = cv2.warpAffine(np.ascontiguousarray(img), M, (side, side), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
  if side == size:
    return warped
  return cv2.resize(warped, (size, size), interpolation=cv2.INTER_AREA)


def crop_face(
    image_HxWxC: np.ndarray,
    *,
    box=None,
    landmarks=None,
    spec: CropSpec = DEFAULT_CROP,
) -> tuple[np.ndarray, CropBox | AlignedFrame]:
  """Cuts the face crop of `spec` (see the module doc) and returns (uint8 crop, frame).

  landmarks: (68, 2) iBUG, (5, 2) or (4, 2) KEYPOINTS, in source pixels. With `spec.aligned`
  they give the aligned crop; otherwise (or when there are none) the box crop is cut around
  `box`, or around the landmarks' bounding box when no box is given. The returned frame
  (`CropBox` or `AlignedFrame`) maps source pixels to the crop's [0, 1] coordinates (`to_crop`).
  """
  img = _as_rgb(image_HxWxC)
  if spec.aligned and landmarks is not None:
    frame = aligned_frame(landmarks, spec)
    crop = _aligned_crop(img, frame, spec.size)
  else:
    if box is None and landmarks is not None:
      box = box_from_landmarks(landmarks)
    if box is None:
      raise ValueError('crop_face: give a face box or landmarks')
    frame = square_box(box, spec.margin)
    crop = _box_crop(img, frame, spec.size)
  if crop.ndim == 2:
    crop = crop[..., None]
  return crop.astype(np.uint8), frame


def crop_inputs(image, audio=None) -> dict:
  """Face crop(s), and the audio of their frames, as every model reads them.

  image: a uint8 crop (H, W, C), a window (T, H, W, C) or a list of crops, C 1 or 3 -> uint8
  RGB (..., H, W, 3). audio: samples -> float32. The `standardize` op (vaflax/data/ops.py) and
  predict (vaflax/predict/model.py) both call this, so a crop is prepared the same way in both.
  """
  img = np.stack(image) if isinstance(image, list) else np.asarray(image)
  if img.shape[-1] == 1:
    img = np.repeat(img, 3, axis=-1)
  out = {'image': img}
  if audio is not None:
    out['audio'] = np.asarray(audio, np.float32)
  return out


def _ibug68_flip_permutation() -> np.ndarray:
  """Index map of the iBUG-68 markup under a horizontal mirror (left <-> right parts)."""
  perm = np.arange(68)
  pairs = [(i, 16 - i) for i in range(8)]  # jaw 0-16 around the chin (8)
  pairs += [(17 + i, 26 - i) for i in range(5)]  # brows 17-21 <-> 26-22
  pairs += [(31, 35), (32, 34)]  # nose base; bridge 27-30 and tip 33 stay
  pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
  pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lip; 51, 57 stay
  pairs += [(60, 64), (61, 63), (65, 67)]  # inner lip; 62, 66 stay
  for a, b in pairs:
    perm[a], perm[b] = b, a
  return perm


IBUG68_FLIP = _ibug68_flip_permutation()


def flip_landmarks(landmarks_x68x2: np.ndarray) -> np.ndarray:
  """Mirrors [0, 1] crop landmarks (x -> 1 - x) and swaps left/right indices (iBUG-68)."""
  lm = np.asarray(landmarks_x68x2)
  out = lm[..., IBUG68_FLIP, :].copy()
  out[..., 0] = 1.0 - out[..., 0]
  return out
