"""Split-conformal intervals on valence and arousal, and what they say about a clip's quadrant.

Split conformal prediction (Vovk et al. 2005; Lei et al. 2018, "Distribution-free predictive
inference for regression", JASA): on n held-out frames with nonconformity scores s_i, the
ceil((n + 1) c)-th smallest score q gives, for a new frame exchangeable with them,
P(s_new <= q) >= c. Two scores, one per dimension (valence, arousal):

  plain    s = |y - f(x)|                     interval f(x) -+ q             (same width everywhere)
  scaled   s = |y - f(x)| / sigma(x)          interval f(x) -+ q sigma(x)    (wider where harder)

sigma(x) = exp(phi(x) . w) is a difficulty model fitted by least squares of log|residual| on the
frame's difficulty features phi (vaflax/quality.py: crop sharpness, flip disagreement, roll) on
half of the calibration split's videos (FIT_SHARE); q is taken on the rest, so the guarantee is
untouched by the fit (Lei et al. 2018, section 5.2, "locally weighted" conformal). The halves
are split by video so that frames of one clip never sit on both sides.

What the guarantee is: marginal coverage over frames drawn like the calibration split (same
datasets, same face pipeline). Not per clip, not per person, and not under shift to other data;
docs/uncertainty.md says more. Labels live in [-1, 1], so intervals are clipped to it (coverage
cannot drop: the label is inside [-1, 1] anyway).

Shapes: N frames, F difficulty features, C coverages; the last axis of 2 is (valence, arousal).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np

from vaflax import fileio

DIMS = ('valence', 'arousal')
# Stored in every calibration (a reliability curve: nominal vs empirical); --coverage picks the
# one predict reports. A coverage the split is too small for is stored as null (infinite width).
COVERAGES = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99)
FILENAME = 'calibration.json'
# The share of videos the scaled method fits its difficulty model on. Measured on
# synthetic_va_heldout (docs/uncertainty.md): a third instead of a half gives the quantile more
# frames but leaves arousal's weak sharpness weight noisier, and blurred faces' coverage worse.
FIT_SHARE = 1 / 2
_LOG_SIGMA_RANGE = (-6.0, 3.0)  # sigma within [e^-6, e^3]: a fit can never make a zero-width or
# unbounded interval out of an odd feature value


class CalibrationError(ValueError):
  """A calibration that cannot be made or read; the message names the file or the reason."""


def conformal_quantile(scores_N: np.ndarray, coverage: float) -> float:
  """The ceil((n + 1) c)-th smallest score (inf when n is too small for that coverage)."""
  if not 0.0 < coverage < 1.0:
    raise CalibrationError(f'coverage must be in (0, 1), got {coverage}')
  s = np.sort(np.asarray(scores_N, np.float64)[np.isfinite(scores_N)])
  k = math.ceil((len(s) + 1) * coverage)
  return float(s[k - 1]) if k <= len(s) else math.inf


def effective_size(hit_N: np.ndarray, group_N=None) -> float:
  """How many independent frames `hit` (N,) bools are worth: p(1 - p) over the cluster-robust
  variance of their mean, the groups (videos, people) being the independent units.

  A model errs alike on the frames of one clip and of one person, so a split's N frames carry
  far less information about coverage than N independent ones (measured on synthetic_va's
  validation split, 576 frames of 6 people: about 30-45). sqrt(c (1 - c) / n_eff) is how far
  the coverage realised on such a split scatters around its true value.
  """
  y = np.asarray(hit_N, np.float64)
  n = len(y)
  p = y.mean() if n else 0.0
  if group_N is None or p in (0.0, 1.0):
    return float(n)
  _, inverse = np.unique(np.asarray(group_N), return_inverse=True)
  var = float((np.bincount(inverse, weights=y - p) ** 2).sum()) / n ** 2
  return float(n) if var <= 0 else float(min(n, p * (1 - p) / var))


def _design(features_NxF: np.ndarray) -> np.ndarray:
  f = np.asarray(features_NxF, np.float64)
  return np.concatenate([np.ones((len(f), 1)), f], axis=1)


def fit_log_scale(features_NxF: np.ndarray, abs_residual_N: np.ndarray, signs=None,
                  ridge: float = 1e-3) -> np.ndarray:
  """Weights w (F + 1,) of log sigma = [1, phi] . w: ridge least squares of log|r| on phi.

  `signs` (F,) of +1 / -1 / 0 fix the direction a feature may move sigma (harder faces must get
  wider intervals, never narrower): a feature whose fitted weight has the wrong sign is dropped
  and the rest refitted, so the model never extrapolates against the difficulty it measures.
  """
  x = _design(features_NxF)
  y = np.log(np.maximum(np.asarray(abs_residual_N, np.float64), 1e-4))
  signs = np.zeros(x.shape[1] - 1) if signs is None else np.asarray(signs, np.float64)
  use = np.ones(x.shape[1], bool)
  while True:
    xs = x[:, use]
    w_use = np.linalg.solve(xs.T @ xs + ridge * len(x) * np.eye(use.sum()), xs.T @ y)
    w = np.zeros(x.shape[1])
    w[use] = w_use
    wrong = np.flatnonzero((signs != 0) & (w[1:] * signs < 0)) + 1
    if not len(wrong):
      return w
    use[wrong] = False


def scale(weights: np.ndarray, features_NxF: np.ndarray, feature_range=None) -> np.ndarray:
  """sigma(x) of each frame (N,); features are clipped to `feature_range` ((F,), (F,)), the
  range the model was fitted on, so that it never extrapolates."""
  f = np.asarray(features_NxF, np.float64)
  if feature_range is not None:
    f = np.clip(f, *np.asarray(feature_range, np.float64))
  return np.exp(np.clip(_design(f) @ weights, *_LOG_SIGMA_RANGE))


@dataclasses.dataclass(frozen=True)
class Calibration:
  """Quantiles per coverage and dimension; `weights` (per dimension) only for method 'scaled'."""
  method: str  # 'plain' | 'scaled'
  split: str
  n: int  # frames the quantiles were taken on (per dimension, the smaller count)
  coverage: float  # the default coverage of intervals
  quantiles: dict  # {coverage (str): [q_valence, q_arousal]}
  weights: tuple | None = None  # ((F + 1) weights of valence, (F + 1) of arousal)
  features: tuple = ()  # names of the difficulty features, in order
  n_fit: int = 0  # frames the difficulty model was fitted on (scaled)
  feature_range: tuple | None = None  # ((F,) low, (F,) high) the difficulty model saw
  dataset: str = ''
  checkpoint_step: int | None = None
  n_groups: int = 0  # videos the quantiles were taken on
  n_eff: tuple | None = None  # (V, A): effective_size of the quantile frames' hits at `coverage`
  # scaled: categories of faces with quantiles of their own (Mondrian conformal, Vovk et al.
  # 2005 ch. 4): ({'feature': name, 'below' or 'above': threshold, 'n': frames,
  # 'quantiles': {...}}, ...); a face gets the quantiles of the first category it falls in
  # (its feature below / above the threshold), taken on such faces only
  categories: tuple = ()

  def widths(self, n: int, features_NxF=None, coverage: float | None = None,
             feature_names=None) -> np.ndarray:
    """Half-widths (N, 2) of the intervals at `coverage` (default: the calibration's).
    `feature_names` names the columns of `features_NxF` when they are not exactly this
    calibration's features (predict computes every quality.DIFFICULTY_FEATURES; a calibration
    made before one was added uses the ones it has)."""
    c = self.coverage if coverage is None else coverage
    key = _key(c)
    if key not in self.quantiles:
      raise CalibrationError(f'no quantile stored for coverage {c}; stored: '
                             f'{", ".join(sorted(self.quantiles))}')
    q_2 = np.asarray(self.quantiles[key], np.float64)
    if self.method == 'plain':
      return np.broadcast_to(q_2, (n, 2)).copy()
    if features_NxF is None:
      raise CalibrationError('a scaled calibration needs the difficulty features of each face')
    feats = np.asarray(features_NxF, np.float64)
    if feature_names is not None and tuple(feature_names) != self.features:
      missing = [f for f in self.features if f not in feature_names]
      if missing or feats.ndim != 2 or feats.shape[1] != len(feature_names):
        raise CalibrationError(f'this calibration takes the features {", ".join(self.features)};'
                               f' got {", ".join(feature_names)}: re-run python -m '
                               'vaflax.calibrate')
      feats = feats[:, [list(feature_names).index(f) for f in self.features]]
    if feats.ndim != 2 or feats.shape[1] != len(self.features):
      raise CalibrationError(f'this calibration takes the features {", ".join(self.features)}; '
                             f'got an array of shape {feats.shape}: re-run python -m '
                             f'vaflax.calibrate')
    s_Nx2 = np.stack([scale(np.asarray(w), feats, self.feature_range)
                      for w in self.weights], axis=-1)
    q_Nx2 = np.broadcast_to(q_2, s_Nx2.shape)
    rules = [(c['feature'], side, c[side]) for c in self.categories
             for side in ('below', 'above') if side in c]
    member_N = category_of(feats, self.features, rules)
    for i, cat in enumerate(self.categories):
      q_cat = np.asarray(cat['quantiles'][key], np.float64)
      q_Nx2 = np.where((member_N == i)[:, None], q_cat, q_Nx2)
    return s_Nx2 * q_Nx2

  def intervals(self, pred_Nx2, features_NxF=None, coverage: float | None = None,
                feature_names=None):
    """(lo, hi), each (N, 2), clipped to [-1, 1]."""
    pred = np.asarray(pred_Nx2, np.float64)
    half = self.widths(len(pred), features_NxF, coverage, feature_names)
    return np.clip(pred - half, -1, 1), np.clip(pred + half, -1, 1)

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d['weights'] = None if self.weights is None else [list(map(float, w)) for w in self.weights]
    d['features'] = list(self.features)
    d['n_eff'] = None if self.n_eff is None else [float(x) for x in self.n_eff]
    d['categories'] = [{**cat, 'quantiles': {k: [_finite_or_none(x) for x in v]
                                             for k, v in cat['quantiles'].items()}}
                       for cat in self.categories]
    d['feature_range'] = (None if self.feature_range is None
                          else [list(map(float, r)) for r in self.feature_range])
    d['quantiles'] = {k: [_finite_or_none(x) for x in v] for k, v in self.quantiles.items()}
    return d


def _finite_or_none(x):
  return float(x) if math.isfinite(x) else None


def _key(coverage: float) -> str:
  return f'{coverage:g}'


def category_of(features_NxF: np.ndarray, feature_names, categories) -> np.ndarray:
  """(N,) the index of the first category each face falls in, -1 for none; a category is a
  (feature, 'below' | 'above', threshold) rule."""
  feats = np.asarray(features_NxF, np.float64)
  member = np.full(len(feats), -1)
  for i, (name, side, threshold) in enumerate(categories):
    x = feats[:, list(feature_names).index(name)]
    inside = x < threshold if side == 'below' else x > threshold
    member = np.where((member == -1) & inside, i, member)
  return member


def calibrate(pred_Nx2, target_Nx2, mask_Nx2, *, split: str, group_N=None, features_NxF=None,
              feature_names=(), feature_signs=None, coverage: float = 0.9, coverages=COVERAGES,
              seed: int = 0, dataset: str = '', checkpoint_step: int | None = None,
              quantile_N=None, categories=()) -> Calibration:
  """A plain calibration, or a scaled one when difficulty features are given.

  `mask` (N, 2) marks labelled values; `group` (N,) the video of each frame (the scaled method
  fits its difficulty model on FIT_SHARE of the videos and takes its quantiles on the rest).
  `quantile` (N,) bools: the frames the scaled method may take its quantiles on (default all);
  the others only teach the difficulty model. vaflax.calibrate passes the split's own faces
  here and adds degraded copies for the fit only, so the quantiles are those of frames drawn
  like the split (the guarantee stays exact for them) while sigma has seen hard faces.
  `categories` ((feature name, 'below' | 'above', threshold), ...), scaled only: the faces of
  each (blurred ones, rolled ones; a face belongs to the first it falls in) get quantiles taken
  on that category's faces of the quantile half, own or not, and the others on the others; each
  group then has its own guarantee (Mondrian conformal).
  """
  pred, target = np.asarray(pred_Nx2, np.float64), np.asarray(target_Nx2, np.float64)
  mask = np.asarray(mask_Nx2) > 0
  coverages = tuple(sorted({*coverages, coverage}))
  resid_Nx2 = np.abs(target - pred)
  if features_NxF is None:
    q = {_key(c): [conformal_quantile(resid_Nx2[mask[:, d], d], c) for d in range(2)]
         for c in coverages}
    n = int(mask.sum(0).min())
    _check_n(n, q, coverage, split)
    groups = np.arange(len(pred)) if group_N is None else np.asarray(group_N)
    n_eff = tuple(effective_size(resid_Nx2[mask[:, d], d] <= q[_key(coverage)][d],
                                 groups[mask[:, d]]) for d in range(2))
    return Calibration('plain', split, n, coverage, q, dataset=dataset,
                       checkpoint_step=checkpoint_step,
                       n_groups=len(np.unique(groups[mask.any(-1)])), n_eff=n_eff)
  feats = np.asarray(features_NxF, np.float64)
  if feats.ndim != 2 or len(feats) != len(pred) or not np.isfinite(feats).all():
    raise CalibrationError(f'difficulty features must be finite (N, F) with N={len(pred)}; '
                           f'got shape {feats.shape}')
  groups = np.arange(len(pred)) if group_N is None else np.asarray(group_N)
  uniq = np.unique(groups)
  if len(uniq) < 2:
    raise CalibrationError(f'{split}: the scaled method needs frames of at least 2 videos')
  n_fit_groups = min(len(uniq) - 1, max(1, round(FIT_SHARE * len(uniq))))
  fit_groups = np.random.default_rng(seed).permutation(uniq)[:n_fit_groups]
  fit = np.isin(groups, fit_groups)
  usable = np.ones(len(pred), bool) if quantile_N is None else np.asarray(quantile_N, bool)
  member_N = category_of(feats, feature_names, categories)
  usable = usable & (member_N == -1)
  franges = (tuple(map(float, feats[fit].min(0))), tuple(map(float, feats[fit].max(0))))
  weights, q_scores = [], []
  for d in range(2):
    sel_fit, sel_cal = fit & mask[:, d], ~fit & mask[:, d] & usable
    w = fit_log_scale(feats[sel_fit], resid_Nx2[sel_fit, d], feature_signs)
    weights.append(tuple(map(float, w)))
    q_scores.append(resid_Nx2[sel_cal, d] / scale(w, feats[sel_cal], franges))
  q = {_key(c): [conformal_quantile(q_scores[d], c) for d in range(2)] for c in coverages}
  cats = []
  for i, (name, side, threshold) in enumerate(categories):
    cat_scores = []
    for d in range(2):
      sel = ~fit & mask[:, d] & (member_N == i)  # the category's faces of the quantile half
      cat_scores.append(resid_Nx2[sel, d] / scale(np.asarray(weights[d]), feats[sel], franges))
    cats.append({'feature': str(name), side: float(threshold),
                 'n': min(len(x) for x in cat_scores),
                 'quantiles': {_key(c): [conformal_quantile(cat_scores[d], c) for d in range(2)]
                               for c in coverages}})
  n = min(len(s) for s in q_scores)
  _check_n(n, q, coverage, split)
  n_eff = tuple(effective_size(q_scores[d] <= q[_key(coverage)][d],
                               groups[~fit & mask[:, d] & usable]) for d in range(2))
  return Calibration('scaled', split, n, coverage, q, tuple(weights), tuple(feature_names),
                     n_fit=int((fit & mask.any(-1)).sum()), feature_range=franges,
                     dataset=dataset, checkpoint_step=checkpoint_step,
                     n_groups=len(np.unique(groups[~fit & mask.any(-1) & usable])), n_eff=n_eff,
                     categories=tuple(cats))


def _check_n(n: int, quantiles: dict, coverage: float, split: str) -> None:
  if not all(math.isfinite(x) for x in quantiles[_key(coverage)]):
    raise CalibrationError(f'{split}: {n} labelled frames are too few for coverage {coverage:g} '
                           f'(need at least {math.ceil(coverage / (1 - coverage))})')


# --- Files --------------------------------------------------------------------------------------


def save(cal: Calibration, workdir: str) -> str:
  return fileio.write_json(os.path.join(workdir, FILENAME), cal.to_json())


# A calibration.json is a few kB; a larger file is not one (and is not read into memory).
MAX_FILE_BYTES = 1 << 20


def _number(x, *, finite: bool = True) -> float:
  """`x` as a float; NaN is refused, and infinity too unless `finite` is False (a quantile the
  split was too small for): one would turn every interval built from it into NaN."""
  v = float(x)
  if math.isnan(v) or (finite and math.isinf(v)):
    raise ValueError(f'{x!r} where a finite number belongs')
  return v


def _count(x) -> int:
  """`x` as a count of frames or videos: a whole number in [0, 1e12] (an infinite or negative
  count is refused rather than crashing int() or being reported)."""
  v = _number(x)
  if v != int(v) or not 0 <= v <= 1e12:
    raise ValueError(f'{x!r} where a count belongs')
  return int(v)


def _quantile_pairs(entries) -> dict:
  """{coverage key: [q_valence, q_arousal]}: coverages in (0, 1), quantiles >= 0 (null or
  Infinity: the split was too small for that coverage)."""
  out = {}
  for k, v in entries.items():
    c = _number(k)
    if not 0 < c < 1 or not isinstance(v, list) or len(v) != 2:
      raise ValueError(f'bad quantile entry {k!r}')
    q = [math.inf if x is None else _number(x, finite=False) for x in v]
    if min(q) < 0:
      raise ValueError(f'negative quantile at {k!r}')
    out[_key(c)] = q
  return out


def load(workdir: str) -> Calibration | None:
  """The run's calibration, or None when it has none. A file that is not a calibration raises
  CalibrationError naming it (it is read as data: types and ranges are checked, NaN refused)."""
  path = os.path.join(workdir, FILENAME)
  if not os.path.exists(path):
    return None
  try:
    if os.path.getsize(path) > MAX_FILE_BYTES:
      raise ValueError(f'{os.path.getsize(path):,} bytes, over the {MAX_FILE_BYTES:,} a '
                       'calibration takes')
    with open(path) as f:
      d = json.load(f)
    if not isinstance(d, dict):
      raise TypeError('not a JSON object')
    method = d['method']
    if method not in ('plain', 'scaled'):
      raise ValueError(f'unknown method {method!r}')
    quantiles = _quantile_pairs(d['quantiles'])
    features = d.get('features') or []
    if not isinstance(features, list) or not all(isinstance(x, str) for x in features):
      raise ValueError('features is not a list of names')
    features = tuple(features)
    weights = d.get('weights')
    if method == 'scaled':
      weights = tuple(tuple(_number(x) for x in w) for w in weights)
      if len(weights) != 2 or any(len(w) != len(features) + 1 for w in weights):
        raise ValueError('weights do not match the features')
      franges = tuple(tuple(_number(x) for x in r) for r in d['feature_range'])
      if len(franges) != 2 or any(len(r) != len(features) for r in franges) or any(
          lo > hi for lo, hi in zip(*franges, strict=True)):
        raise ValueError('feature_range does not match the features')
    else:
      weights, franges = None, None
    coverage = float(d['coverage'])
    if _key(coverage) not in quantiles:
      raise ValueError(f'no quantile for its own coverage {coverage}')
    # (a calibration written before rolled faces had a category holds one, as 'category')
    cats = d.get('categories', [] if d.get('category') is None else [d['category']])
    if not isinstance(cats, list) or len(cats) > 8:
      raise ValueError('categories is not a short list')
    categories = []
    for cat in cats:
      sides = [k for k in ('below', 'above') if k in cat]
      if method != 'scaled' or cat['feature'] not in features or len(sides) != 1:
        raise ValueError('a category on a feature the calibration does not have, or without '
                         'one threshold (below or above)')
      categories.append({'feature': str(cat['feature']), sides[0]: _number(cat[sides[0]]),
                         'n': _count(cat['n']), 'quantiles': _quantile_pairs(cat['quantiles'])})
      if set(categories[-1]['quantiles']) != set(quantiles):
        raise ValueError('category quantiles do not match the quantiles')
    n_eff = d.get('n_eff')
    n_eff = None if n_eff is None else tuple(_number(x) for x in n_eff)
    if n_eff is not None and (len(n_eff) != 2 or min(n_eff) < 0):
      raise ValueError('n_eff is not (valence, arousal) >= 0')
    step = d.get('checkpoint_step')
    return Calibration(method, str(d['split']), _count(d['n']), coverage, quantiles, weights,
                       features, _count(d.get('n_fit', 0)), franges, str(d.get('dataset', '')),
                       None if step is None else _count(step), _count(d.get('n_groups', 0)),
                       n_eff, tuple(categories))
  except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError,
          OverflowError) as e:
    raise CalibrationError(f'{path}: not a vaflax calibration ({type(e).__name__}: {e})') from None


# --- Clips and evaluation -----------------------------------------------------------------------


def clip_quadrant(lo_Nx2: np.ndarray, hi_Nx2: np.ndarray, quadrant: int) -> dict:
  """How sure a clip's quadrant is, from its face frames' intervals.

  confidence: the share of face frames whose whole interval box lies inside `quadrant`.
  mean interval: [mean lo, mean hi] per dimension (the clip mean's range if every frame's
  interval holds its true value); `uncertain` when it crosses an axis, i.e. the clip's
  quadrant could change within the intervals.
  """
  from vaflax import circumplex  # noqa: PLC0415

  lo, hi = np.asarray(lo_Nx2, np.float64), np.asarray(hi_Nx2, np.float64)
  if len(lo) == 0:
    return {'quadrant_confidence': math.nan, 'uncertain': True}
  q_lo, q_hi = circumplex.va_to_quadrant(lo), circumplex.va_to_quadrant(hi)
  # A box lies in one quadrant iff its two opposite corners do (quadrants are axis-aligned).
  inside = (q_lo == quadrant) & (q_hi == quadrant)
  m_lo, m_hi = lo.mean(0), hi.mean(0)
  crosses = bool(np.any((m_lo < 0) & (m_hi >= 0)))
  return {'quadrant_confidence': float(inside.mean()), 'uncertain': crosses,
          'valence_mean_lo': float(m_lo[0]), 'valence_mean_hi': float(m_hi[0]),
          'arousal_mean_lo': float(m_lo[1]), 'arousal_mean_hi': float(m_hi[1])}


def coverage_report(target_Nx2, mask_Nx2, lo_Nx2, hi_Nx2, bins_N=None, group_N=None) -> dict:
  """Empirical coverage and mean width per dimension, overall and per bin label; with `group`
  (N,) (the video of each frame) also the coverage's standard error over videos
  (`coverage_se_<dim>`: sqrt(p (1 - p) / effective_size))."""
  t, m = np.asarray(target_Nx2), np.asarray(mask_Nx2) > 0
  lo, hi = np.asarray(lo_Nx2), np.asarray(hi_Nx2)
  covered = (t >= lo) & (t <= hi)

  def stats(sel_N):
    out = {}
    for d, name in enumerate(DIMS):
      s = sel_N & m[:, d]
      out[f'coverage_{name}'] = float(covered[s, d].mean()) if s.any() else math.nan
      out[f'width_{name}'] = float((hi - lo)[s, d].mean()) if s.any() else math.nan
      out[f'n_{name}'] = int(s.sum())
      if group_N is not None and s.any():
        p, n_eff = covered[s, d].mean(), effective_size(covered[s, d], np.asarray(group_N)[s])
        out[f'coverage_se_{name}'] = float(math.sqrt(p * (1 - p) / n_eff))
    return out

  report = stats(np.ones(len(t), bool))
  if bins_N is not None:
    bins = np.asarray(bins_N)
    report['bins'] = {str(b): stats(bins == b) for b in np.unique(bins)}
  return report
