r"""Calibrate a run's valence/arousal intervals on a held-out split, or check them on another.

  python -m vaflax.calibrate --workdir=W [--split=validation] [--coverage=0.9]
      [--method=scaled|plain] [--dataset=NAME] [--data_dir=D] [--config.x=y ...]
  python -m vaflax.calibrate --workdir=W --check=test [--degrade=blur|downscale|rotate]

The first form scores the split with the run's evaluation forward (vaflax/scoring.py, the
predictions that predict and evaluate report) and writes W/calibration.json (vaflax/calibration.py:
split-conformal quantiles at every coverage of calibration.COVERAGES). `scaled` also fits the
difficulty model on the faces' sharpness, flip disagreement and roll (vaflax/quality.py), on the
split's faces plus a copy of each degraded at random (blur, downscale or roll at a random
strength), so that the model has seen hard faces; its quantiles are taken on the split's own
faces only, so that they promise coverage on faces drawn like them. The second
form reads that file and prints the empirical coverage and mean width on another split, overall
and per sharpness tercile, optionally on degraded copies of its faces. docs/uncertainty.md.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from vaflax import calibration, cli, faces, quality

DEGRADATIONS = ('blur', 'downscale', 'rotate')


def _degrade_one(kind: str, x_HxWxC: np.ndarray, strength: float) -> tuple[np.ndarray,
                                                                          np.ndarray]:
  """One model input made harder the way real faces are, and the (2, 3) affine map of its pixel
  coordinates (the identity but for a roll); strength 1 is --check's setting: a Gaussian blur
  of sigma 2 px at 64 px, a 4x smaller face enlarged back, a 30 degree roll."""
  import cv2  # noqa: PLC0415

  x = np.asarray(x_HxWxC, np.float32)
  h, w = x.shape[:2]
  m = np.eye(2, 3)
  if kind == 'blur':
    y = cv2.GaussianBlur(x, (0, 0), 2.0 * strength * h / 64)
  elif kind == 'downscale':
    f = 1 + 3 * strength
    small = cv2.resize(x, (max(1, round(w / f)), max(1, round(h / f))),
                       interpolation=cv2.INTER_AREA)
    y = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
  else:
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 30.0 * strength, 1.0)
    y = cv2.warpAffine(x, m, (w, h), borderMode=cv2.BORDER_REFLECT)
  return y.reshape(x.shape), m


def _degrade(kind: str, images_BxHxWxC: np.ndarray, rng: np.random.Generator):
  """(images, (B, 2, 3) pixel maps): `kind` at strength 1 on every image, or with kind 'random'
  (scaled calibration's extra copies) a random kind at a random strength in [0.25, 1.25] (and a
  random roll direction)."""
  out = np.empty_like(images_BxHxWxC)
  maps = np.empty((len(out), 2, 3))
  for i, x in enumerate(images_BxHxWxC):
    if kind == 'random':
      k = DEGRADATIONS[rng.integers(len(DEGRADATIONS))]
      out[i], maps[i] = _degrade_one(k, x, rng.uniform(0.25, 1.25) * rng.choice(
          [-1, 1] if k == 'rotate' else [1]))
    else:
      out[i], maps[i] = _degrade_one(kind, x, 1.0)
  return out, maps


def _rolls(landmarks_NxLx2, landmarks_mask_N, side: int, maps_Nx2x3=None) -> np.ndarray:
  """(N,) roll in degrees of each face in its model input (quality.pose) from the record's
  landmarks ([0, 1] crop coordinates), moved by the degradation's pixel map; NaN where the
  record has none (quality.difficulty_features takes it as upright)."""
  out = np.full(len(landmarks_NxLx2), np.nan)
  for i, (lm, has) in enumerate(zip(landmarks_NxLx2, landmarks_mask_N, strict=True)):
    if has <= 0:
      continue
    px = np.asarray(lm, np.float64) * side
    if maps_Nx2x3 is not None:
      px = px @ maps_Nx2x3[i][:, :2].T + maps_Nx2x3[i][:, 2]
    try:
      out[i] = quality.pose(faces.keypoints(px))[1]
    except ValueError:  # a markup keypoints() does not know: unknown roll
      continue
  return out


def interval_inputs(run, split: str, *, dataset: str | None = None, degrade: str = '',
                    difficulty: bool = True) -> dict:
  """Per-frame arrays of a restored run on `split`: its predictions (`pred`, the run's own
  evaluation rules, flip TTA included), labels (`va`, `mask`), `video`, and with `difficulty`
  the features of calibration's difficulty model (`features`, quality.DIFFICULTY_FEATURES)
  and each frame's `sharpness`. Window models (frames B x T) are flattened to frames."""
  import jax  # noqa: PLC0415
  import ml_collections  # noqa: PLC0415

  from vaflax import runs, scoring, sharding  # noqa: PLC0415
  from vaflax.data import sources  # noqa: PLC0415

  data = sources.EvalData(run.config, split, dataset=dataset)
  step = scoring.make_eval_step(run.config, run.graphdef, run.state_sharding, run.mesh)
  raw_step = None
  if difficulty:  # the model's own two views, without TTA (TTA would average them away)
    raw_config = ml_collections.ConfigDict(run.config.to_dict())
    runs.apply_overrides(raw_config, ['eval.flip_tta=False'])
    raw_step = scoring.make_eval_step(raw_config, run.graphdef, run.state_sharding, run.mesh)
  cols: dict[str, list] = {}
  rng = np.random.default_rng(0)
  for batch in data:
    key = 'frames' if 'frames' in batch else 'image'
    maps = None
    if degrade:
      flat = batch[key].reshape(-1, *batch[key].shape[-3:])
      flat, maps = _degrade(degrade, flat, rng)
      batch = {**batch, key: flat.reshape(batch[key].shape)}
    out = jax.device_get(step(run.state, sharding.to_global(batch, run.mesh)))
    keep = np.asarray(out['mask']).reshape(-1, 2).max(-1) > 0
    for k in ('pred', 'va', 'mask'):
      cols.setdefault(k, []).append(np.asarray(out[k]).reshape(-1, 2)[keep])
    cols.setdefault('video', []).append(np.asarray(out['video']).reshape(-1)[keep])
    if raw_step is not None:
      images = batch[key].reshape(-1, *batch[key].shape[-3:])[keep]
      flipped = {**batch, key: batch[key][..., ::-1, :]}
      a = jax.device_get(raw_step(run.state, sharding.to_global(batch, run.mesh)))
      b = jax.device_get(raw_step(run.state, sharding.to_global(flipped, run.mesh)))
      roll = _frame_rolls(batch, key, maps)[keep]
      feats = quality.difficulty_features(images, np.asarray(a['pred']).reshape(-1, 2)[keep],
                                          np.asarray(b['pred']).reshape(-1, 2)[keep], roll)
      cols.setdefault('features', []).append(feats)
      cols.setdefault('sharpness', []).append(np.exp(feats[:, 0]) - 1e-3)
  if 'pred' not in cols:
    raise ValueError(f'{run.workdir}: this run predicts no valence/arousal; nothing to calibrate')
  arrays = {k: np.concatenate(v) for k, v in cols.items()}
  arrays['dataset'] = data.name
  return arrays


def _frame_rolls(batch: dict, key: str, maps) -> np.ndarray:
  """(frames,) roll of each face of an evaluation batch in its model input (NaN: unknown)."""
  n, side = int(np.prod(batch[key].shape[:-3])), batch[key].shape[-2]
  if 'landmarks' not in batch:
    return np.full(n, np.nan)
  lm = np.asarray(batch['landmarks'])
  lm_mask = np.broadcast_to(np.asarray(batch.get('landmarks_mask', 1.0)), lm.shape[:-2])
  return _rolls(lm.reshape(n, *lm.shape[-2:]), lm_mask.reshape(n), side, maps)


def calibrate_run(workdir: str, *, split: str = 'validation', coverage: float = 0.9,
                  method: str = 'scaled', dataset: str | None = None, overrides=()) -> tuple:
  """Writes WORKDIR/calibration.json; returns (Calibration, path, the coverage report on the
  calibration split itself)."""
  from vaflax import runs  # noqa: PLC0415

  run = runs.load_run(workdir, overrides=overrides)
  scaled = method == 'scaled'
  arrays = interval_inputs(run, split, dataset=dataset, difficulty=scaled)
  own = np.ones(len(arrays['pred']), bool)  # the split's own faces: the quantiles' frames
  if scaled:  # and a randomly degraded copy of each (same video: same half) for the fit and
    # the categories' quantiles. (A second copy adds frames, not people: on synthetic_va_heldout
    # it moved no coverage closer to nominal, docs/uncertainty.md.)
    extra = interval_inputs(run, split, dataset=dataset, degrade='random')
    fit_arrays = {k: (np.concatenate([v, extra[k]]) if isinstance(v, np.ndarray) else v)
                  for k, v in arrays.items()}
    own = np.concatenate([own, np.zeros(len(extra['pred']), bool)])
  else:
    fit_arrays = arrays
  cal = calibration.calibrate(
      fit_arrays['pred'], fit_arrays['va'], fit_arrays['mask'], split=split,
      group_N=fit_arrays['video'], features_NxF=fit_arrays.get('features'),
      feature_names=quality.DIFFICULTY_FEATURES if scaled else (),
      feature_signs=quality.DIFFICULTY_SIGNS if scaled else None, coverage=coverage,
      dataset=arrays['dataset'], checkpoint_step=run.step, quantile_N=own,
      categories=quality.DIFFICULTY_CATEGORIES if scaled else ())
  path = calibration.save(cal, run.workdir)
  lo, hi = cal.intervals(arrays['pred'], arrays.get('features'),
                         feature_names=quality.DIFFICULTY_FEATURES)
  return cal, path, calibration.coverage_report(arrays['va'], arrays['mask'], lo, hi,
                                                group_N=arrays['video'])


def check_run(workdir: str, split: str = 'test', *, dataset: str | None = None,
              degrade: str = '', overrides=()) -> dict:
  """Empirical coverage and mean width of the run's stored calibration on `split`, at every
  stored coverage, overall and per sharpness tercile of the split's faces."""
  from vaflax import runs  # noqa: PLC0415

  run = runs.load_run(workdir, overrides=overrides)
  cal = calibration.load(run.workdir)
  if cal is None:
    raise FileNotFoundError(f'{run.workdir}: no {calibration.FILENAME}; run python -m '
                            f'vaflax.calibrate --workdir={workdir} first')
  arrays = interval_inputs(run, split, dataset=dataset, degrade=degrade)
  return coverage_table(cal, arrays, split, degrade)


def coverage_table(cal: calibration.Calibration, arrays: dict, split: str,
                   degrade: str = '') -> dict:
  """check_run's report of `cal` on interval_inputs' `arrays` (vaflax.evaluate reports it too)."""
  terciles = np.quantile(arrays['sharpness'], [1 / 3, 2 / 3])
  bins = np.array(['blurry', 'middle', 'sharp'])[np.searchsorted(terciles, arrays['sharpness'])]
  report = {'split': split, 'degrade': degrade or 'none', 'method': cal.method, 'coverages': {}}
  for key in sorted(cal.quantiles, key=float):
    if not all(np.isfinite(cal.quantiles[key])):
      continue
    lo, hi = cal.intervals(arrays['pred'], arrays.get('features'), coverage=float(key),
                           feature_names=quality.DIFFICULTY_FEATURES)
    report['coverages'][key] = calibration.coverage_report(arrays['va'], arrays['mask'], lo, hi,
                                                           bins, arrays.get('video'))
  return report


def _precision(cal: calibration.Calibration) -> str:
  """How precise the promise is: the quantile frames' worth in independent frames, and the
  scatter of the coverage a split like them would realise (docs/uncertainty.md)."""
  c = cal.coverage
  sd = [math.sqrt(c * (1 - c) / max(n, 1.0)) for n in cal.n_eff]
  return (f'the {cal.n} quantile frames of {cal.n_groups} videos are worth about '
          f'{cal.n_eff[0]:.0f} (V) / {cal.n_eff[1]:.0f} (A) independent frames: the coverage '
          f'realised on such a split scatters by about +-{sd[0]:.3f} / {sd[1]:.3f} (1 s.d.)'
          + ('; calibrate on more videos (people) for a tighter promise'
             if max(sd) > 0.015 else ''))


def _print_report(rep: dict) -> None:
  for key, r in rep['coverages'].items():
    bins = ', '.join(f"{b} {s['coverage_valence']:.3f}/{s['coverage_arousal']:.3f}"
                     for b, s in r.get('bins', {}).items())
    se = (f" (+-{r['coverage_se_valence']:.3f} / {r['coverage_se_arousal']:.3f} s.e. over "
          f"videos)" if 'coverage_se_valence' in r else '')
    print(f"nominal {float(key):.2f}: coverage V {r['coverage_valence']:.3f} "
          f"A {r['coverage_arousal']:.3f}{se}, mean width V {r['width_valence']:.3f} "
          f"A {r['width_arousal']:.3f} (n={r['n_valence']}); per sharpness tercile V/A: {bins}")


@cli.entry_point
def main(argv) -> int:
  ap = cli.parser('vaflax.calibrate', __doc__)
  ap.add_argument('--workdir', required=True)
  ap.add_argument('--split', default='validation', help='held-out split to calibrate on')
  ap.add_argument('--coverage', type=float, default=0.9, help='the intervals predict reports')
  ap.add_argument('--method', choices=('scaled', 'plain'), default='scaled')
  ap.add_argument('--dataset', default=None)
  ap.add_argument('--data_dir', default=None)
  ap.add_argument('--check', default='', help='a split to measure the stored calibration on')
  ap.add_argument('--degrade', choices=DEGRADATIONS + ('random',), default=None,
                  help='with --check: degrade the faces first')
  args, overrides = cli.parse(ap, argv, overrides=True)
  if not 0 < args.coverage < 1:
    ap.error(f'--coverage must be in (0, 1), got {args.coverage}')
  if args.degrade and not args.check:
    ap.error('--degrade goes with --check')
  if args.data_dir:
    overrides.append(f'input.data_dir={args.data_dir}')
  if args.check:
    rep = check_run(args.workdir, args.check, dataset=args.dataset, degrade=args.degrade or '',
                    overrides=overrides)
    print(f"{args.workdir} on {rep['split']} (degrade: {rep['degrade']}, {rep['method']}):")
    _print_report(rep)
    return 0
  cal, path, rep = calibrate_run(args.workdir, split=args.split, coverage=args.coverage,
                                 method=args.method, dataset=args.dataset, overrides=overrides)
  q = cal.quantiles[f'{cal.coverage:g}']
  print(f'{cal.method} calibration on {cal.dataset}/{cal.split}: n={cal.n}, coverage '
        f'{cal.coverage:g}: quantile V {q[0]:.4f} A {q[1]:.4f}; on the split itself coverage '
        f"V {rep['coverage_valence']:.3f} A {rep['coverage_arousal']:.3f}, mean width "
        f"V {rep['width_valence']:.3f} A {rep['width_arousal']:.3f}")
  print(_precision(cal))
  print(f'wrote {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
