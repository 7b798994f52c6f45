"""Stable face ids across frames (greedy matching on IoU, landmark or centre distance, with
motion prediction through misses) and per-track smoothing."""

from __future__ import annotations

import math

import numpy as np


def iou(a, b) -> float:
  ax, ay, aw, ah = a[:4]
  bx, by, bw, bh = b[:4]
  iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
  ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
  inter = iw * ih
  union = aw * ah + bw * bh - inter
  return inter / union if union > 0 else 0.0


def dedupe(boxes, thr: float = 0.5, key=None) -> list:
  """The first by `key` (default: the largest) of each group of boxes that overlap by IoU >= thr."""
  out = []
  for d in sorted(boxes, key=key or (lambda d: -d[2] * d[3])):
    if all(iou(d, o) < thr for o in out):
      out.append(d)
  return out


def _centre(box):
  return box[0] + box[2] / 2, box[1] + box[3] / 2


def match_score(track_box, det_box, track_lm=None, det_lm=None, *, min_iou: float = 0.3,
                max_centre: float = 0.5) -> float:
  """How well a detection continues a track: 1 + IoU when the IoU is >= `min_iou`; else, for
  sizes within 1.5x, 1 - d / (max_centre * side) in (0, 1] when d < max_centre * side, where d is
  the mean distance between the landmarks when both have them (they locate a face better than a
  box that a turned head stretches), else between the box centres (fast motion); 0: no match."""
  s = iou(track_box, det_box)
  if s >= min_iou:
    return 1.0 + s
  side = max(track_box[2], track_box[3])
  ratio = max(det_box[2], det_box[3]) / side
  if track_lm is not None and det_lm is not None and np.shape(track_lm) == np.shape(det_lm):
    d = float(np.linalg.norm(np.asarray(det_lm) - np.asarray(track_lm), axis=-1).mean())
  else:
    (tx, ty), (dx, dy) = _centre(track_box), _centre(det_box)
    d = math.hypot(dx - tx, dy - ty)
  if d < max_centre * side and 1 / 1.5 < ratio < 1.5:
    return 1.0 - d / (max_centre * side)
  return 0.0


def near_track(box, live_boxes) -> bool:
  """Whether a box would continue one of these tracks (`match_score` > 0)."""
  return any(match_score(t, box) > 0 for t in live_boxes)


class FaceTracker:
  """Gives detections stable ids: greedy matching on `match_score` (IoU, else landmark or centre
  distance), best pairs first.

  Detections are boxes (x, y, w, h, ...) or `Face`s (with `.box` and `.landmarks`). A track is
  matched at the place it is predicted to be: its last box and landmarks moved by its velocity
  (an average of its recent per-update displacements) times the updates since it was last seen,
  so a moving face that the detector misses for a few frames keeps its id. A track not matched for
  more than `max_age` updates is dropped.
  """

  def __init__(self, max_age: int = 5, min_iou: float = 0.3, max_centre: float = 0.5,
               momentum: float = 0.5):
    self.max_age, self.min_iou, self.max_centre = max_age, min_iou, max_centre
    self.momentum = momentum  # weight of the old velocity in its running average
    self.tracks: dict[int, dict] = {}  # id -> {'box', 'landmarks', 'velocity', 'last'}
    self._next = 0
    self._t = -1

  def _predicted(self, tr):
    gap = self._t - tr['last']
    vx, vy = tr['velocity'] * gap
    x, y, w, h = tr['box']
    lm = tr['landmarks']
    return (x + vx, y + vy, w, h), (None if lm is None else lm + np.array([vx, vy], np.float32))

  def update(self, detections) -> tuple[list[tuple[int, tuple]], list[int]]:
    """(face_id, box) per detection, and the ids of the tracks this update dropped."""
    self._t += 1
    boxes = [tuple(d.box) if hasattr(d, 'box') else tuple(d[:4]) for d in detections]
    lms = [getattr(d, 'landmarks', None) for d in detections]
    cands = []
    for tid, tr in self.tracks.items():
      pbox, plm = self._predicted(tr)
      for i, (b, lm) in enumerate(zip(boxes, lms, strict=True)):
        cands.append((match_score(pbox, b, plm, lm, min_iou=self.min_iou,
                                  max_centre=self.max_centre), tid, i))
    cands.sort(reverse=True)
    used_t, ids = set(), [None] * len(boxes)
    for score, tid, i in cands:
      if score <= 0:
        break
      if tid in used_t or ids[i] is not None:
        continue
      used_t.add(tid)
      ids[i] = tid
    for i, b in enumerate(boxes):
      lm = None if lms[i] is None else np.asarray(lms[i], np.float32)
      if ids[i] is None:
        ids[i] = self._next
        self._next += 1
        velocity = np.zeros(2)
      else:
        tr = self.tracks[ids[i]]
        step = (np.subtract(_centre(b), _centre(tr['box']))) / (self._t - tr['last'])
        velocity = self.momentum * tr['velocity'] + (1 - self.momentum) * step
      self.tracks[ids[i]] = {'box': tuple(float(v) for v in b[:4]), 'landmarks': lm,
                             'velocity': velocity, 'last': self._t}
    dropped = [tid for tid, tr in self.tracks.items() if self._t - tr['last'] > self.max_age]
    for tid in dropped:
      del self.tracks[tid]
    return [(ids[i], tuple(float(v) for v in b[:4])) for i, b in enumerate(boxes)], dropped

  def live_boxes(self) -> list[tuple]:
    """Where the live tracks are expected in the frame about to be processed."""
    saved, self._t = self._t, self._t + 1
    try:
      return [self._predicted(tr)[0] for tr in self.tracks.values()]
    finally:
      self._t = saved


def smooth_track(values_Nx2: np.ndarray, method: str, window: int) -> np.ndarray:
  """EMA (causal, alpha = 2 / (window + 1)) or centred moving average (shrinking at the ends)."""
  v = np.asarray(values_Nx2, np.float64)
  if method == 'none' or len(v) < 2 or window < 2:
    return v
  if method == 'ema':
    alpha = 2.0 / (window + 1.0)
    out = np.empty_like(v)
    out[0] = v[0]
    for i in range(1, len(v)):
      out[i] = alpha * v[i] + (1 - alpha) * out[i - 1]
    return out
  half_lo, half_hi = (window - 1) // 2, window // 2
  c = np.concatenate([np.zeros((1, 2)), np.cumsum(v, 0)])
  idx = np.arange(len(v))
  lo, hi = np.maximum(idx - half_lo, 0), np.minimum(idx + half_hi + 1, len(v))
  return (c[hi] - c[lo]) / (hi - lo)[:, None]


def smooth_tracks(va_Nx2: np.ndarray, face_id_N: np.ndarray, method: str, window: int) -> np.ndarray:
  """`smooth_track` over the rows of each face id (rows are in frame order within a track)."""
  va = np.array(va_Nx2, np.float64)
  if method != 'none':
    for f in np.unique(face_id_N):
      sel = np.nonzero(face_id_N == f)[0]
      va[sel] = smooth_track(va[sel], method, window)
  return va
