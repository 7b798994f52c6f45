"""Stable face ids across frames (greedy IoU / centre matching) and per-track smoothing."""

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


def dedupe(boxes, thr: float = 0.5) -> list:
  """The largest of each group of boxes that overlap by IoU >= thr."""
  out = []
  for d in sorted(boxes, key=lambda d: -d[2] * d[3]):
    if all(iou(d, o) < thr for o in out):
      out.append(d)
  return out


class FaceTracker:
  """Gives detections stable ids: greedy matching by IoU, else by centre distance.

  A detection matches a track when their IoU is >= `min_iou`, or when its centre lies within
  `max_centre` track sides of the track's centre and the sizes differ by less than 1.5x (fast
  motion). A track not matched for more than `max_age` updates is dropped.
  """

  def __init__(self, max_age: int = 5, min_iou: float = 0.3, max_centre: float = 0.5):
    self.max_age, self.min_iou, self.max_centre = max_age, min_iou, max_centre
    self.tracks: dict[int, dict] = {}  # id -> {'box', 'last'}
    self._next = 0
    self._t = -1

  def _score(self, box, det) -> float:
    s = iou(box, det)
    if s >= self.min_iou:
      return 1.0 + s
    side = max(box[2], box[3])
    ratio = max(det[2], det[3]) / side
    d = math.hypot(det[0] + det[2] / 2 - box[0] - box[2] / 2, det[1] + det[3] / 2 - box[1] - box[3] / 2)
    if d < self.max_centre * side and 1 / 1.5 < ratio < 1.5:
      return 1.0 - d / (self.max_centre * side)  # in (0, 1]: below any IoU match
    return 0.0

  def update(self, boxes) -> tuple[list[tuple[int, tuple]], list[int]]:
    """(face_id, box) per box (x, y, w, h, ...), and the ids of the tracks this update dropped."""
    self._t += 1
    cands = sorted(((self._score(tr['box'], d), tid, i)
                    for tid, tr in self.tracks.items() for i, d in enumerate(boxes)),
                   reverse=True)
    used_t, ids = set(), [None] * len(boxes)
    for score, tid, i in cands:
      if score <= 0:
        break
      if tid in used_t or ids[i] is not None:
        continue
      used_t.add(tid)
      ids[i] = tid
    for i, d in enumerate(boxes):
      if ids[i] is None:
        ids[i] = self._next
        self._next += 1
      self.tracks[ids[i]] = {'box': tuple(d[:4]), 'last': self._t}
    dropped = [tid for tid, tr in self.tracks.items() if self._t - tr['last'] > self.max_age]
    for tid in dropped:
      del self.tracks[tid]
    return [(ids[i], tuple(float(v) for v in d[:4])) for i, d in enumerate(boxes)], dropped

  def live_boxes(self) -> list[tuple]:
    return [tr['box'] for tr in self.tracks.values()]


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
