"""Offline face detection: OpenCV's Haar frontal-face cascade, no download, no GPU.

`detect_faces` returns every face as (x, y, w, h, score) in source pixels, largest first. The
score is the number of raw cascade windows merged into the box (OpenCV's `numDetections`): more
is more certain, but it is not a probability. The cascade ships inside opencv-python(-headless) 4.x
(`cv2.data.haarcascades`); OpenCV 5 moved Haar to contrib and ships no XML, hence the <5 pin.

`box_from_five_points` turns the 5-point markup that aligned datasets (CelebA) and 5-point
detectors (MTCNN, CenterFace) give into a box framed like the Haar box, so that crops made from
landmarks and crops made from Haar detections (face_folder, predict --detector=haar) look alike.
predict's default detector is BlazeFace (vaflax/blazeface).
"""

from __future__ import annotations

import os
import threading

import cv2
import numpy as np

CASCADE = 'haarcascade_frontalface_default.xml'
_local = threading.local()  # one classifier per thread: OpenCV does not promise thread safety


def _cascade(name: str = CASCADE) -> cv2.CascadeClassifier:
  cache = getattr(_local, 'cascades', None)
  if cache is None:
    cache = _local.cascades = {}
  if name not in cache:
    path = os.path.join(cv2.data.haarcascades, name)
    c = cv2.CascadeClassifier(path)
    if c.empty():
      raise FileNotFoundError(
          f'{path}: OpenCV Haar cascade missing or unreadable (opencv-python-headless 4.x ships '
          f'it; 5.x does not: pip install "opencv-python-headless<5")')
    cache[name] = c
  return cache[name]


def _to_gray(image) -> np.ndarray:
  img = np.asarray(image)
  if img.dtype != np.uint8:
    raise ValueError(f'detect_faces: expected a uint8 image, got dtype {img.dtype}')
  if img.ndim == 2:
    return img
  if img.ndim == 3 and img.shape[-1] == 1:
    return img[..., 0]
  if img.ndim == 3 and img.shape[-1] in (3, 4):
    return cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2GRAY)
  raise ValueError(f'detect_faces: expected an HxW or HxWx{{1,3,4}} image, got {img.shape}')


def detect_faces(
    rgb_uint8: np.ndarray,
    min_size: int = 24,
    *,
    max_side: int = 640,
    scale_factor: float = 1.1,
    min_neighbors: int = 5,
) -> list[tuple[float, float, float, float, int]]:
  """Faces in an RGB (or gray) uint8 image as (x, y, w, h, score), largest first.

  min_size: smallest face side to report, in source pixels.
  max_side: images larger than this are searched on a downscaled copy (speed; Haar needs only
    ~24 px faces); boxes are mapped back to source pixels.
  scale_factor, min_neighbors: OpenCV's pyramid step and the merge threshold (5 is OpenCV's
    usual choice; lower finds more faces and more false ones).
  """
  gray = _to_gray(rgb_uint8)
  h, w = gray.shape
  s = min(1.0, max_side / max(h, w))
  if s < 1.0:
    gray = cv2.resize(gray, (max(1, round(w * s)), max(1, round(h * s))),
                      interpolation=cv2.INTER_AREA)
  m = max(1, int(round(min_size * s)))
  if min(gray.shape) < m:
    return []
  boxes, counts = _cascade().detectMultiScale2(
      gray, scaleFactor=scale_factor, minNeighbors=min_neighbors, minSize=(m, m))
  out = [(x / s, y / s, bw / s, bh / s, int(n)) for (x, y, bw, bh), n in zip(boxes, counts, strict=True)]
  out.sort(key=lambda b: (-b[2] * b[3], -b[4], b[0], b[1]))
  return [tuple(float(v) for v in b[:4]) + (b[4],) for b in out]


# Calibrated on skimage.data.astronaut(): with eyes and mouth corners placed by hand (eyes
# (202, 100) and (246, 104), mouth (205, 143) and (243, 143)) this rule gives (175, 66, 97, 97)
# against the Haar box (177, 66, 95, 95). The Haar box spans brows to mouth: the eyes sit at 38 %
# of its height, hence the centre 0.3 of the way from the eyes to the mouth.
FIVE_POINT_SIDE = 2.2  # box side / max(inter-ocular, eye-to-mouth distance)
FIVE_POINT_CENTRE = 0.3  # box centre: eye centre + this * (mouth centre - eye centre)


def largest_face(rgb_HxWx3: np.ndarray) -> tuple[float, float, float, float] | None:
  """(x, y, w, h) of the largest face the cascade finds, or None: the video builders' box_fn."""
  found = detect_faces(rgb_HxWx3)
  return tuple(found[0][:4]) if found else None


def box_from_five_points(points_5x2) -> tuple[float, float, float, float]:
  """(x, y, w, h) face box from 5 points: left eye, right eye, nose, left and right mouth corner.

  The scale is the larger of the inter-ocular and the eye-to-mouth distance, so that neither a
  turned head (eyes closer) nor a tilted one (mouth closer to the eyes) shrinks the box.
  """
  p = np.asarray(points_5x2, np.float64)
  if p.shape != (5, 2) or not np.isfinite(p).all():
    raise ValueError(f'box_from_five_points: need 5 finite (x, y) points, got {p.tolist()}')
  eyes = 0.5 * (p[0] + p[1])
  mouth = 0.5 * (p[3] + p[4])
  scale = max(np.linalg.norm(p[1] - p[0]), np.linalg.norm(mouth - eyes))
  if scale <= 0:
    raise ValueError(f'box_from_five_points: degenerate points {p.tolist()}')
  side = FIVE_POINT_SIDE * scale
  cx, cy = eyes + FIVE_POINT_CENTRE * (mouth - eyes)
  return float(cx - side / 2), float(cy - side / 2), float(side), float(side)
