"""The one face crop used everywhere: dataset builders, training-time ops and predict.

A crop is a square around a face box (x, y, w, h in pixels) or around the bounding box of
landmarks, enlarged by `margin` (a fraction of the box side added on *each* side), resized to
`size` x `size`. Pixels outside the image are filled with zeros, so a face at the border keeps
its geometry instead of being shifted. Train and test use the same function; that is the point.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np


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


def crop_face(
    image_HxWxC: np.ndarray,
    *,
    box=None,
    landmarks=None,
    margin: float = 0.2,
    size: int = 112,
) -> tuple[np.ndarray, CropBox]:
  """Crops a square face window and resizes it to (size, size).

  Give either `box` (x, y, w, h) or `landmarks` (N, 2) in source pixels; landmarks win when both
  are given. Returns the uint8 crop and the `CropBox`, whose `to_crop` maps landmarks into the
  crop's [0, 1] frame.
  """
  img = np.asarray(image_HxWxC)
  if img.ndim == 2:
    img = np.repeat(img[..., None], 3, axis=-1)
  if img.ndim != 3 or img.shape[0] == 0 or img.shape[1] == 0:
    raise ValueError(f'crop_face: expected an HxWxC image, got shape {img.shape}')
  if landmarks is not None:
    box = box_from_landmarks(landmarks)
  if box is None:
    raise ValueError('crop_face: give a face box or landmarks')
  cb = square_box(box, margin)
  h, w = img.shape[:2]
  # Pad only what the window needs outside the image, then cut: exact integer geometry.
  pad_l, pad_t = max(0, -cb.x0), max(0, -cb.y0)
  pad_r, pad_b = max(0, cb.x0 + cb.side - w), max(0, cb.y0 + cb.side - h)
  if pad_l or pad_t or pad_r or pad_b:
    img = np.pad(img, ((pad_t, pad_b), (pad_l, pad_r), (0, 0)))
  ys, xs = cb.y0 + pad_t, cb.x0 + pad_l
  window = img[ys : ys + cb.side, xs : xs + cb.side]
  interp = cv2.INTER_AREA if cb.side > size else cv2.INTER_LINEAR
  crop = cv2.resize(np.ascontiguousarray(window), (size, size), interpolation=interp)
  if crop.ndim == 2:
    crop = crop[..., None]
  return crop.astype(np.uint8), cb


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
