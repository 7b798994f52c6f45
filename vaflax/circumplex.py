"""Russell's circumplex: valence/arousal <-> quadrants, emotion categories -> VA points.

Quadrant ids (see docs/quadrants.md):
  0 pleasant-activated   V >= 0, A >= 0
  1 unpleasant-activated V <  0, A >= 0
  2 unpleasant-calm      V <  0, A <  0
  3 pleasant-calm        V >= 0, A <  0
  4 neutral              sqrt(V^2 + A^2) < neutral_radius (only when neutral_radius > 0)
Tie rule: 0 counts as non-negative on both axes, so the positive valence half-axis and the
origin go to 0, the positive arousal half-axis to 0, the negative valence half-axis to 1 and
the negative arousal half-axis to 3. A non-finite point gets -1 ("no label").
"""

from __future__ import annotations

import sys

import numpy as np

from vaflax import metrics

QUADRANT_NAMES = (
    'pleasant-activated',
    'unpleasant-activated',
    'unpleasant-calm',
    'pleasant-calm',
    'neutral',
)
NUM_QUADRANTS = 4  # without the neutral class
NEUTRAL = 4
NO_LABEL = -1

# Russell & Mehrabian (1977), "Evidence for a three-factor theory of emotions", J. Research in
# Personality 11:273-294: pleasure (valence) and arousal means and standard deviations, already
# on [-1, 1], as reproduced in public code that cites the paper (the original table was not
# checked against these values). Neutral is the origin by definition.
EMOTION_VA = {
    'neutral': (0.00, 0.00),
    'happy': (0.81, 0.61),
    'surprise': (0.40, 0.67),
    'anger': (-0.51, 0.59),
    'fear': (-0.64, 0.60),
    'disgust': (-0.60, 0.35),
    'sad': (-0.63, -0.27),
    'calm': (0.68, -0.46),
}
EMOTION_VA_SD = {
    'neutral': (0.20, 0.20),
    'happy': (0.21, 0.26),
    'surprise': (0.30, 0.27),
    'anger': (0.20, 0.33),
    'fear': (0.20, 0.32),
    'disgust': (0.20, 0.41),
    'sad': (0.23, 0.34),
    'calm': (0.30, 0.38),
}
# Categories that the datasets use but the source table has no value for.
UNMAPPED_EMOTIONS = frozenset({'contempt'})
# Spellings used by FER2013/FER+, AffectNet, MEAD and CelebV-HQ -> the names above.
_ALIASES = {
    'happiness': 'happy',
    'surprised': 'surprise',
    'angry': 'anger',
    'fearful': 'fear',
    'disgusted': 'disgust',
    'sadness': 'sad',
    'relaxed': 'calm',
}
# AffectNet `expression` codes 0-7 (codes 8-10 are None/Uncertain/No-Face: no emotion).
AFFECTNET_EMOTIONS = (
    'neutral', 'happy', 'sad', 'surprise', 'fear', 'disgust', 'anger', 'contempt',
)


def va_to_quadrant(va, neutral_radius: float = 0.0):
  """Quadrant id (int32) of each VA point `(..., 2) -> (...)`, with the module's tie rule.

  A jax.Array (also a tracer under jit, e.g. a training target) gives a jax.Array; anything
  else is read as NumPy float64 and gives a NumPy array.
  """
  # The TFDS builders import this module without jax: a jax.Array exists only once jax is loaded.
  jax = sys.modules.get('jax')
  if jax is not None and isinstance(va, jax.Array):
    xp = jax.numpy
  else:
    xp, va = np, np.asarray(va, np.float64)
  if va.ndim < 1 or va.shape[-1] != 2:
    raise ValueError(f'va must have shape (..., 2) (valence, arousal); got {va.shape}')
  if neutral_radius < 0:
    raise ValueError(f'neutral_radius must be >= 0; got {neutral_radius}')
  v, a = va[..., 0], va[..., 1]
  pleasant, activated = v >= 0, a >= 0
  q = xp.where(activated, xp.where(pleasant, 0, 1), xp.where(pleasant, 3, 2))
  q = xp.where(xp.hypot(v, a) < neutral_radius, NEUTRAL, q)
  return xp.where(xp.isfinite(v) & xp.isfinite(a), q, NO_LABEL).astype(xp.int32)


def quadrant_name(quadrant_id: int) -> str:
  if not 0 <= quadrant_id < len(QUADRANT_NAMES):
    raise ValueError(f'quadrant id must be in 0..{len(QUADRANT_NAMES) - 1}; got {quadrant_id}')
  return QUADRANT_NAMES[quadrant_id]


def canonical_emotion(name: str) -> str:
  """The table's name for an emotion label as the datasets spell it (case-insensitive)."""
  key = name.strip().lower()
  key = _ALIASES.get(key, key)
  if key not in EMOTION_VA and key not in UNMAPPED_EMOTIONS:
    known = sorted(set(EMOTION_VA) | UNMAPPED_EMOTIONS | set(_ALIASES))
    raise ValueError(f'unknown emotion {name!r}; known: {", ".join(known)}')
  return key


def emotion_to_va(name: str) -> tuple[float, float] | None:
  """(valence, arousal) of an emotion category, or None for a known but unmapped one (contempt)."""
  return EMOTION_VA.get(canonical_emotion(name))


def emotion_to_quadrant(name: str, neutral_radius: float = 0.0) -> int:
  """Quadrant id of a category's VA point; -1 when unmapped.

  With neutral_radius 0, 'neutral' (the origin) falls in quadrant 0 by the tie rule: pass a
  radius > 0 to give it its own class, or mask it out of a 4-way evaluation.
  """
  va = emotion_to_va(name)
  return NO_LABEL if va is None else int(va_to_quadrant(np.array(va), neutral_radius))


def emotion_ids_to_quadrant(ids, vocabulary=AFFECTNET_EMOTIONS, neutral_radius: float = 0.0):
  """Vectorised `emotion_to_quadrant` for integer labels indexing `vocabulary`.

  Ids outside the vocabulary (-1 = none, AffectNet 8-10) and unmapped categories give -1.
  """
  table = np.array([emotion_to_quadrant(n, neutral_radius) for n in vocabulary], np.int32)
  ids = np.asarray(ids)
  inside = (ids >= 0) & (ids < len(table))
  return np.where(inside, table[np.clip(ids, 0, len(table) - 1)], NO_LABEL).astype(np.int32)


def quadrant_metrics(true_ids, pred_ids, *, with_neutral: bool = False) -> dict:
  """Accuracy, macro-F1 and per-quadrant F1 from quadrant ids (-1 = skip), keys `quadrant_*`."""
  names = QUADRANT_NAMES if with_neutral else QUADRANT_NAMES[:NUM_QUADRANTS]
  out = metrics.classification_metrics(true_ids, pred_ids, names)
  return {f'quadrant_{k}': v for k, v in out.items()}


def quadrant_confusion(true_ids, pred_ids, *, with_neutral: bool = False) -> np.ndarray:
  """(C, C) counts, rows = true quadrant, columns = predicted; C = 4, or 5 with neutral."""
  return metrics.confusion_matrix(true_ids, pred_ids, NUM_QUADRANTS + int(with_neutral))


def va_quadrant_metrics(pred_va, target_va, mask=None, neutral_radius: float = 0.0) -> dict:
  """Quadrant metrics of regressed VA: classify both by `va_to_quadrant`, then score.

  A frame counts only when both of its dimensions are valid (mask (N,) or (N, 2)).
  Predictions are clipped to [-1, 1] first, as for the regression metrics (it does not change
  the quadrant, only keeps the two paths identical).
  """
  pred_va = np.clip(np.asarray(pred_va, np.float64), -1.0, 1.0)
  target_va = np.asarray(target_va, np.float64)
  if pred_va.shape != target_va.shape:
    raise ValueError(f'pred_va {pred_va.shape} and target_va {target_va.shape} differ in shape')
  true_q = va_to_quadrant(target_va, neutral_radius)
  pred_q = va_to_quadrant(pred_va, neutral_radius)
  if mask is not None:
    mask = np.asarray(mask)
    if mask.shape == target_va.shape:
      mask = np.all(mask > 0, axis=-1)
    if mask.shape != true_q.shape:
      raise ValueError(f'mask of shape {mask.shape} does not fit VA of shape {target_va.shape}')
    true_q = np.where(mask > 0, true_q, NO_LABEL)
  return quadrant_metrics(true_q, pred_q, with_neutral=neutral_radius > 0)
