"""Evaluation metrics for valence/arousal under the ABAW protocol, plus classification metrics.

Protocol
- Scores are pooled over all valid frames of a split (not averaged over batches or videos), as in
  the ABAW evaluation; `per_video_ccc_*` is the OMG-Emotion variant (CCC per video, then the mean).
- Predictions are clipped to [-1, 1] before scoring (the label range); targets are not touched.
- CCC is Lin's with population (ddof 0) moments: target [3, -0.5, 2, 7] vs prediction
  [2.5, 0, 2, 8] gives 0.976789 (before clipping; these values lie outside the VA range).
- SAGR (sign agreement rate, Kossaifi et al. 2017 AFEW-VA) is the fraction of frames where
  np.sign(pred) == np.sign(target); np.sign(0) is 0, so 0 agrees only with 0.
- Masks: 1 = valid. Masked entries are ignored whatever they hold (NaN included). A NaN in an
  unmasked entry makes the metrics NaN, so it is seen rather than silently dropped.
- Undefined values are NaN, never an exception: CCC when its denominator
  var(p) + var(t) + (mean(p) - mean(t))^2 is 0 (both constant and equal), PCC when either side
  is constant, every metric when a dimension has no valid entry. A side whose standard
  deviation is below 1e-5 of its mean's magnitude counts as constant (rounding of the mean
  leaves such a residue). Per-video means skip the videos whose CCC is undefined.
- Results are flat dicts of Python floats (JSON-friendly; NaN is written as NaN by `json`).
"""

from __future__ import annotations

import numpy as np

VA_NAMES = ('valence', 'arousal')
# Columns of one row (one VA dimension) of the (2, 7) statistics array.
STAT_FIELDS = (
    'count',  # number of valid entries
    'mean_pred',  # mean of the clipped predictions
    'mean_target',
    'm2_pred',  # sum of squared deviations of the prediction from mean_pred
    'm2_target',
    'c_pred_target',  # sum of products of deviations (co-moment)
    'sign_agree',  # number of entries with sign(pred) == sign(target)
)
_N, _MP, _MT, _M2P, _M2T, _C, _AGREE = range(len(STAT_FIELDS))
# Relative standard deviation below which a side counts as constant (float32 rounding of a
# constant's mean is ~1e-7 relative; 1e-5 leaves a wide margin and is far below any real signal).
_CONSTANT_RTOL = 1e-5


# --- Host (NumPy float64) metrics ------------------------------------------------------------


def _va_arrays(pred, target, mask):
  """(..., 2) inputs -> (N, 2) pred (clipped), target, bool valid; masked entries zeroed."""
  pred = np.asarray(pred)
  target = np.asarray(target)
  if pred.shape != target.shape or pred.ndim < 1 or pred.shape[-1] != 2:
    raise ValueError(
        f'pred and target must have the same shape (..., 2) (valence, arousal); '
        f'got pred {pred.shape} and target {target.shape}'
    )
  if mask is None:
    valid = np.ones(target.shape, bool)
  else:
    mask = np.asarray(mask)
    if mask.shape == target.shape[:-1]:  # one flag per frame
      mask = mask[..., None]
    try:
      valid = np.broadcast_to(mask > 0, target.shape)
    except ValueError as e:
      raise ValueError(
          f'mask of shape {mask.shape} does not fit targets of shape {target.shape}'
      ) from e
  pred = np.reshape(pred, (-1, 2))
  target = np.reshape(target, (-1, 2))
  valid = np.reshape(valid, (-1, 2))
  pred = np.where(valid, np.clip(pred, -1.0, 1.0), 0.0)
  target = np.where(valid, target, 0.0)
  return pred, target, valid


def _np_stats(p, t, valid):
  """The (2, 7) statistics of (N, 2) float64 arrays, computed in one NumPy pass."""
  w = valid.astype(np.float64)
  n = w.sum(0)
  safe = np.maximum(n, 1.0)
  mp, mt = (w * p).sum(0) / safe, (w * t).sum(0) / safe
  dp, dt = w * (p - mp), w * (t - mt)
  agree = (w * (np.sign(p) == np.sign(t))).sum(0)
  # NaN in a valid entry must survive into the result (the sign test alone would hide it).
  agree = agree + 0.0 * (w * p * t).sum(0)
  return np.stack([n, mp, mt, (dp * dp).sum(0), (dt * dt).sum(0), (dp * dt).sum(0), agree], -1)


def _divide(num, den):
  """num / den with NaN where den is 0 (the metric is undefined there)."""
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  with np.errstate(divide='ignore', invalid='ignore'):
    return np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)


def _per_dim(stats):
  """(2, 7) stats -> dict of (2,) float64 arrays: ccc, pcc, rmse, sagr."""
  s = np.asarray(stats, np.float64)
  n = s[:, _N]
  nz = np.where(n > 0, n, np.nan)  # no valid entry -> every metric NaN
  vp, vt, cov = s[:, _M2P] / nz, s[:, _M2T] / nz, s[:, _C] / nz
  # A constant side keeps a variance of ~(1 ulp of its mean)^2 from the rounded mean; below
  # _CONSTANT_RTOL of |mean| the side counts as constant, so CCC is 0 and PCC NaN, not noise.
  const_p = vp <= (_CONSTANT_RTOL * s[:, _MP]) ** 2
  const_t = vt <= (_CONSTANT_RTOL * s[:, _MT]) ** 2
  vp, vt = np.where(const_p, 0.0, vp), np.where(const_t, 0.0, vt)
  cov = np.where(const_p | const_t, 0.0, cov)
  bias2 = (s[:, _MP] - s[:, _MT]) ** 2
  mse = np.maximum(vp + vt - 2.0 * cov + bias2, 0.0)  # max: rounding can leave -1e-17
  return {
      'ccc': _divide(2.0 * cov, vp + vt + bias2),
      'pcc': _divide(cov, np.sqrt(vp * vt)),
      'rmse': np.sqrt(mse),
      'sagr': s[:, _AGREE] / nz,
  }


def _flatten(per_dim, prefix=''):
  out = {}
  for name, v in per_dim.items():
    out[f'{prefix}{name}_valence'] = float(v[0])
    out[f'{prefix}{name}_arousal'] = float(v[1])
    out[f'{prefix}{name}_mean'] = float(0.5 * (v[0] + v[1]))
  return out


def va_metrics(pred, target, mask=None, video_ids=None) -> dict:
  """Pooled ABAW metrics of `pred`, `target` (N, 2) (or (..., 2)), float64 on the host.

  Keys: {ccc,pcc,rmse,sagr}_{valence,arousal,mean}; with `video_ids` (one per frame, any
  hashable dtype) also per_video_ccc_{valence,arousal,mean}: CCC per video averaged over the
  videos where it is defined.
  """
  p, t, valid = _va_arrays(np.asarray(pred, np.float64), np.asarray(target, np.float64), mask)
  out = _flatten(_per_dim(_np_stats(p, t, valid)))
  if video_ids is not None:
    ids = np.asarray(video_ids).reshape(-1)
    if ids.shape[0] != p.shape[0]:
      raise ValueError(f'video_ids has {ids.shape[0]} entries for {p.shape[0]} frames')
    _, inverse = np.unique(ids, return_inverse=True)
    order = np.argsort(inverse, kind='stable')  # frames grouped by video, one slice each
    bounds = np.cumsum(np.bincount(inverse))[:-1]
    per_video = np.stack([
        _per_dim(_np_stats(p[i], t[i], valid[i]))['ccc'] for i in np.split(order, bounds)
    ]) if ids.size else np.full((1, 2), np.nan)
    defined = np.isfinite(per_video)
    mean = _divide(np.where(defined, per_video, 0.0).sum(0), defined.sum(0))
    out.update(_flatten({'ccc': mean}, prefix='per_video_'))
  return out


# --- Classification (quadrants, emotion categories) -------------------------------------------


def confusion_matrix(true_ids, pred_ids, num_classes: int) -> np.ndarray:
  """(C, C) int64 counts, rows = true class, columns = predicted; pairs with an id < 0 are skipped.

  A negative id marks "no label" (for example an unmapped emotion or a masked frame).
  """
  t = np.asarray(true_ids).reshape(-1)
  p = np.asarray(pred_ids).reshape(-1)
  if t.shape != p.shape:
    raise ValueError(f'true_ids ({t.shape[0]}) and pred_ids ({p.shape[0]}) differ in length')
  keep = (t >= 0) & (p >= 0)
  t, p = t[keep].astype(np.int64), p[keep].astype(np.int64)
  if t.size and max(t.max(), p.max()) >= num_classes:
    raise ValueError(f'class id {max(t.max(), p.max())} is out of range for {num_classes} classes')
  return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(
      num_classes, num_classes
  )


def classification_metrics(true_ids, pred_ids, class_names) -> dict:
  """Accuracy, macro-F1 and per-class F1 (`f1_<name>`) over the pairs with both ids >= 0.

  Macro-F1 averages over the classes that occur in the labels or the predictions (a class absent
  from both has no defined F1), as scikit-learn does when `labels` is not given.
  """
  cm = confusion_matrix(true_ids, pred_ids, len(class_names)).astype(np.float64)
  total = cm.sum()
  tp = np.diag(cm)
  support, predicted = cm.sum(1), cm.sum(0)
  f1 = _divide(2.0 * tp, support + predicted)  # = 2PR / (P + R); 0 when no true positive
  present = (support + predicted) > 0
  out = {
      'accuracy': float(_divide(tp.sum(), total)),
      'macro_f1': float(f1[present].mean()) if present.any() else float('nan'),
      'count': float(total),
  }
  out.update({f'f1_{name}': float(v) for name, v in zip(class_names, f1, strict=True)})
  return out
