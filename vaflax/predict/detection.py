"""Face finding for predict, behind one interface: a detector maps an RGB frame and the
smallest wanted face side to a list of `Face`s. `haar` (vaflax.detect, OpenCV) is today's;
`FaceFinder` schedules a detector over a stream: full frames, or windows around live tracks."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from vaflax import detect
from vaflax.predict import tracking


class Face(NamedTuple):
  box: tuple[float, float, float, float]  # x, y, w, h in source pixels
  score: float  # the detector's confidence (Haar: merged windows, not a probability)
  landmarks: np.ndarray | None = None  # (L, 2) source pixels, when the detector gives them


Detector = Callable[[np.ndarray, int], list[Face]]

# Faces are searched on a copy scaled so that the smallest wanted face is this many pixels: the
# same faces as at full size at a fraction of the cost. Not the cascade's own 24 px window: at
# that size it misses some faces (astronaut test video: 29/30 frames at 24 px, 30/30 at 32).
DETECT_SIDE = 32


def haar(rgb_HxWx3: np.ndarray, min_size: int) -> list[Face]:
  """Haar faces of side >= min_size (source pixels), largest first."""
  side = max(rgb_HxWx3.shape[:2])
  scale = min(1.0, DETECT_SIDE / min_size)
  found = detect.detect_faces(rgb_HxWx3, min_size=min_size,
                              max_side=max(24, math.ceil(side * scale)))
  return [Face(tuple(d[:4]), float(d[4])) for d in found]


def _shift(face: Face, x0: int, y0: int) -> Face:
  x, y, w, h = face.box
  lm = None if face.landmarks is None else face.landmarks + np.array([x0, y0], np.float32)
  return Face((x + x0, y + y0, w, h), face.score, lm)


def _whole_pixels(face: Face) -> Face:
  # The CSV then holds the exact box the crop was cut from.
  return face._replace(box=tuple(float(round(v)) for v in face.box))


class FaceFinder:
  """Full-frame detection every `detect_every` frames; in between, detection inside a window
  around each live track (a few pyramid levels on a small image: ~10x cheaper for Haar), and a
  full detection on the next frame whenever a track was not found."""

  def __init__(self, min_face: int, detect_every: int, largest_only: bool,
               detector: Detector = haar):
    self.min_face, self.every, self.largest = min_face, detect_every, largest_only
    self.detector = detector
    self._n = 0
    self._force = True

  def __call__(self, rgb_HxWx3, live_boxes) -> list[Face]:
    full = self._force or self._n % self.every == 0 or not live_boxes
    self._n += 1
    if full:
      faces = self.detector(rgb_HxWx3, self.min_face)
      self._force = False
    else:
      faces = []
      h, w = rgb_HxWx3.shape[:2]
      for box in live_boxes:
        side = max(box[2], box[3])
        cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
        x0, y0 = int(max(0, cx - side)), int(max(0, cy - side))
        x1, y1 = int(min(w, cx + side)), int(min(h, cy + side))
        if x1 - x0 < self.min_face or y1 - y0 < self.min_face:
          continue
        found = [_shift(f, x0, y0) for f in
                 self.detector(rgb_HxWx3[y0:y1, x0:x1], max(self.min_face, int(0.6 * side)))]
        if found:
          faces.append(max(found, key=lambda f: tracking.iou(box, f.box)))
        else:
          self._force = True
      kept = tracking.dedupe([f.box + (i,) for i, f in enumerate(faces)])
      faces = [faces[b[4]] for b in kept]
    faces = [_whole_pixels(f) for f in faces if min(f.box[2], f.box[3]) >= self.min_face]
    faces.sort(key=lambda f: -f.box[2] * f.box[3])
    return faces[:1] if self.largest else faces
