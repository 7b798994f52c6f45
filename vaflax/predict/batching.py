"""Face crops -> model batches, kept in flight while the next frames are decoded."""

from __future__ import annotations

import numpy as np


class Batcher:
  """Batches of single crops, or of windows of T crops of one face track (temporal models).

  `add` numbers the rows (one per face per frame) in the order it sees them; `finish` returns
  every row's prediction. Dispatch is asynchronous (jax), so at most two batches wait on the
  device while the caller decodes and detects.

  One Batcher can serve many clips at once (vaflax/predict/collection.py): track keys are then
  (clip, face_id), crops of several clips share a batch, and `resolved` / `take` hand each clip
  its rows as soon as their batches have come back.
  """

  def __init__(self, model):
    self.model = model  # dispatch(items) -> handle; result(handle) -> {'va', ['quadrant']}
    self.T = model.window
    self._items, self._targets = [], []  # inputs and the rows they predict
    self._tracks: dict[int, list] = {}
    self._inflight = []
    self._va: dict[int, np.ndarray] = {}
    self._quadrant: dict[int, int] = {}
    self._difficulty: dict[int, np.ndarray] = {}  # a scaled calibration's features per row
    self.has_quadrant = False  # the model has a quadrant head (known once a batch came back)
    self.rows = 0

  def add(self, face_id: int, inputs: dict) -> int:
    """Queues one face crop's inputs; returns its row."""
    row = self.rows
    self.rows += 1
    if not self.T:
      self._queue([row], inputs)
      return row
    buf = self._tracks.setdefault(face_id, [])
    buf.append((row, inputs))
    if len(buf) == self.T:
      self.end_track(face_id)
    return row

  def end_track(self, face_id: int):
    """Sends the track's partial window (a dropped track), padded by repeating its last crop."""
    buf = self._tracks.pop(face_id, None)
    if not buf:
      return
    rows = [r for r, _ in buf]
    frames = [x for _, x in buf] + [buf[-1][1]] * (self.T - len(buf))
    self._queue(rows, {k: np.stack([f[k] for f in frames]) for k in frames[0]})

  def _queue(self, rows, inputs):
    self._items.append(inputs)
    self._targets.append(rows)
    if len(self._items) == self.model.batch_size:
      self._dispatch()

  def _dispatch(self):
    if self._items:
      self._inflight.append((self.model.dispatch(self._items), self._targets))
      self._items, self._targets = [], []
    while len(self._inflight) > 2:
      self._collect()

  def _collect(self):
    handle, targets = self._inflight.pop(0)
    out = self.model.result(handle)
    for j, rows in enumerate(targets):
      va = out['va'][j].reshape(-1, 2)
      q = out['quadrant'][j].reshape(-1) if 'quadrant' in out else None
      self.has_quadrant = q is not None
      d = out['difficulty'][j].reshape(len(va), -1) if 'difficulty' in out else None
      for k, r in enumerate(rows):
        self._va[r] = va[k]
        if d is not None:
          self._difficulty[r] = d[k]
        if q is not None:
          self._quadrant[r] = int(q[k])

  def flush(self):
    """Sends the queued crops as a (padded) batch and waits for every batch in flight. Partial
    windows of live tracks stay queued."""
    self._dispatch()
    while self._inflight:
      self._collect()

  def resolved(self, rows) -> bool:
    """Whether every one of `rows` has its prediction."""
    return all(r in self._va for r in rows)

  def take(self, rows) -> tuple[np.ndarray, np.ndarray | None]:
    """(va (len(rows), 2) float64, the quadrant head's class per row or None) of resolved rows,
    forgotten here afterwards."""
    va = np.array([self._va.pop(r) for r in rows], np.float64).reshape(-1, 2)
    quadrant = (np.array([self._quadrant.pop(r) for r in rows], np.int64).reshape(-1)
                if self.has_quadrant else None)
    return va, quadrant

  def take_difficulty(self, rows) -> np.ndarray | None:
    """The difficulty features (len(rows), F) of resolved rows (a scaled calibration's, see
    Predictor.result), forgotten here afterwards; None when the model gives none."""
    if not self._difficulty:
      return None
    return np.array([self._difficulty.pop(r) for r in rows], np.float64).reshape(len(rows), -1)

  def finish(self) -> tuple[np.ndarray, np.ndarray | None]:
    """(va (rows, 2) float64, the quadrant head's class per row or None) of every row."""
    for fid in list(self._tracks):
      self.end_track(fid)
    self.flush()
    return self.take(range(self.rows))
