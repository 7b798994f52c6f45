r"""Evaluate a trained run on a dataset split: metrics JSON, per-frame and per-video CSVs, plots.

  python -m vaflax.evaluate --workdir=W [--split=test] [--dataset=NAME] [--flip_tta]
      [--checkpoint_step=N] [--output=DIR] [--data_dir=D] [--config.x=y ...]

Reads the run's W/config.json, restores its latest (or the given) checkpoint and scores the split
with the eval pass and eval step of training (vaflax/scoring.py: ABAW pooled metrics, per-video
CCC, quadrant metrics of the regressed VA and of the 4-way head when the model has one). A
multi-stage workdir (one sub-workdir per stage, e.g. mae_va) is evaluated at the stage that
finished last; pass --workdir=W/<stage> to choose another. See docs/evaluate.md.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys

import numpy as np

from vaflax import cli

# --- Outputs ------------------------------------------------------------------------------------


def _clean(v):
  """JSON-ready: NumPy scalars/arrays to Python, NaN/inf to null."""
  if isinstance(v, dict):
    return {k: _clean(x) for k, x in v.items()}
  if isinstance(v, np.ndarray):
    v = v.tolist()
  if isinstance(v, list | tuple):
    return [_clean(x) for x in v]
  if isinstance(v, np.generic):
    v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return None
  return v


def _fmt(x) -> str:
  return f'{float(x):.9g}'  # 9 significant digits: float32 values round-trip exactly


def write_frame_csv(path, arrays, keep, video_names) -> None:
  """One row per scored frame: the numbers the pooled metrics were computed from."""
  idx = np.nonzero(keep)[0]
  head = 'quadrant_pred' in arrays
  with open(path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['index', 'video_id', 'valence_pred', 'arousal_pred', 'valence', 'arousal',
                'valence_mask', 'arousal_mask'] + (['quadrant_head_pred'] if head else []))
    for i in idx:
      p, t, m = arrays['pred'][i], arrays['va'][i], arrays['mask'][i]
      row = [int(arrays['index'][i]), video_names(int(arrays['video'][i])), _fmt(p[0]), _fmt(p[1]),
             _fmt(t[0]), _fmt(t[1]), _fmt(m[0]), _fmt(m[1])]
      if head:
        row.append(int(arrays['quadrant_pred'][i]))
      w.writerow(row)


def per_video_rows(arrays, keep, video_names) -> list[dict]:
  from vaflax import metrics as metrics_lib  # noqa: PLC0415

  vid = arrays['video'][keep]
  p, t, m = arrays['pred'][keep], arrays['va'][keep], arrays['mask'][keep]
  rows = []
  for k in np.unique(vid):
    sel = vid == k
    mv = m[sel] > 0
    scores = metrics_lib.va_metrics(p[sel], t[sel], m[sel])
    rows.append({
        'video_id': video_names(int(k)),
        'frames': int(np.sum(mv.any(-1))),
        'ccc_valence': scores['ccc_valence'],
        'ccc_arousal': scores['ccc_arousal'],
        'mean_pred_valence': float(np.clip(p[sel, 0], -1, 1)[mv[:, 0]].mean()) if mv[:, 0].any() else math.nan,
        'mean_pred_arousal': float(np.clip(p[sel, 1], -1, 1)[mv[:, 1]].mean()) if mv[:, 1].any() else math.nan,
        'mean_valence': float(t[sel, 0][mv[:, 0]].mean()) if mv[:, 0].any() else math.nan,
        'mean_arousal': float(t[sel, 1][mv[:, 1]].mean()) if mv[:, 1].any() else math.nan,
    })
  return rows


def _write_rows(path, rows, fields) -> None:
  with open(path, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    for r in rows:
      w.writerow({k: (_fmt(v) if isinstance(v, float) else v) for k, v in r.items()})


def _subsample(n: int, limit: int = 20000) -> np.ndarray:
  """Row indices for scatter plots: all of them, or a fixed random subset of `limit`."""
  if n <= limit:
    return np.arange(n)
  return np.sort(np.random.default_rng(0).choice(n, limit, replace=False))


def evaluate_run(workdir: str, *, split: str = 'test', dataset: str | None = None,
                 flip: bool = False, checkpoint_step: int | None = None, output: str | None = None,
                 overrides=(), data_dir: str | None = None) -> dict:
  """Evaluates a run and writes its outputs; returns the JSON record (with 'files')."""
  from vaflax import circumplex, plots, runs, scoring, tta  # noqa: PLC0415

  if data_dir:
    overrides = [*overrides, f'input.data_dir={data_dir}']
  if flip:  # the run's own switch (tasks.predict_fn applies it), so nothing mirrors twice
    overrides = [*overrides, 'eval.flip_tta=True']
  run = runs.load_run(workdir, checkpoint_step, overrides=overrides)
  workdir, config, step = run.workdir, run.config, run.step
  results, arrays, eval_data = scoring.score_split(run, split, dataset=dataset,
                                                   process_index=0, process_count=1)

  name = eval_data.name
  out_dir = os.path.abspath(output or os.path.join(workdir, 'eval'))
  os.makedirs(out_dir, exist_ok=True)
  files = {}
  videos = (eval_data.info.metadata or {}).get('videos', {}).get(split) or []

  def video_names(k):
    return str(videos[k][0]) if 0 <= k < len(videos) else ('' if k < 0 else str(k))

  record = {
      'workdir': workdir, 'checkpoint_step': step, 'dataset': name, 'split': split,
      'flip_tta': tta.enabled(config), 'model_name': config.model_name, 'task': config.task,
      'num_examples': eval_data.num_examples,
  }
  # A flip-TTA evaluation writes under its own names: it never overwrites the plain one's files.
  tag = f'{name}_{split}' + ('_flip_tta' if record['flip_tta'] else '')
  shows = f'{name}/{split}, step {step}' + (', flip TTA' if record['flip_tta'] else '')
  if arrays:
    keep = arrays['mask'].max(-1) > 0
    record['num_frames'] = int(keep.sum())
    q_true = circumplex.va_to_quadrant(arrays['va'][keep])
    q_true = np.where(arrays['mask'][keep].min(-1) > 0, q_true, circumplex.NO_LABEL)
    q_reg = circumplex.va_to_quadrant(np.clip(arrays['pred'][keep], -1, 1))
    record['quadrant_names'] = list(circumplex.QUADRANT_NAMES[:circumplex.NUM_QUADRANTS])
    cm = circumplex.quadrant_confusion(q_true, q_reg)
    record['quadrant_confusion'] = cm.tolist()
    if 'quadrant_pred' in arrays:
      cm_head = circumplex.quadrant_confusion(q_true, arrays['quadrant_pred'][keep])
      record['quadrant_head_confusion'] = cm_head.tolist()

    files['frames_csv'] = os.path.join(out_dir, f'predictions_{tag}.csv')
    write_frame_csv(files['frames_csv'], arrays, keep, video_names)
    rows = per_video_rows(arrays, keep, video_names) if videos else []
    record['num_videos'] = len(rows)
    files['per_video_csv'] = os.path.join(out_dir, f'per_video_{tag}.csv')
    _write_rows(files['per_video_csv'], rows, [
        'video_id', 'frames', 'ccc_valence', 'ccc_arousal', 'mean_pred_valence',
        'mean_pred_arousal', 'mean_valence', 'mean_arousal'])

    sel = _subsample(int(keep.sum()))
    p, t, m = arrays['pred'][keep][sel], arrays['va'][keep][sel], arrays['mask'][keep][sel]
    files['circumplex_png'] = plots.circumplex_scatter(
        os.path.join(out_dir, f'circumplex_{tag}.png'), np.clip(p, -1, 1), t, mask=m,
        title=f'Predicted and labelled VA\n{shows}')
    files['va_scatter_png'] = plots.va_scatter(
        os.path.join(out_dir, f'va_scatter_{tag}.png'), np.clip(p, -1, 1), t, mask=m,
        title=f'Prediction against label\n{shows}')
    files['quadrant_confusion_png'] = plots.confusion_heatmap(
        os.path.join(out_dir, f'quadrant_confusion_{tag}.png'), cm,
        title=f'Quadrants of the predicted VA\n{shows}')
    if 'quadrant_pred' in arrays:
      files['quadrant_head_confusion_png'] = plots.confusion_heatmap(
          os.path.join(out_dir, f'quadrant_head_confusion_{tag}.png'), cm_head,
          title=f'Quadrant head\n{shows}')
    files.update(_calibration_outputs(run, split, dataset, record, out_dir, tag, shows))
  else:
    record['note'] = 'this task predicts no VA (e.g. MAE pretraining): only its eval_* means'
  record['metrics'] = results
  record['files'] = files
  files['metrics_json'] = os.path.join(out_dir, f'metrics_{tag}.json')
  with open(files['metrics_json'], 'w') as f:
    json.dump(_clean(record), f, indent=2)
  return record


def _calibration_outputs(run, split, dataset, record, out_dir, tag, shows) -> dict:
  """With the run's calibration.json: record['calibration'] (empirical coverage and mean width
  per dimension at each stored coverage, overall and per sharpness tercile: calibrate.check_run's
  report) and a reliability plot. The split is scored a second time here, by the same forward
  (calibrate.interval_inputs), since the intervals also need each crop's sharpness and, for a
  scaled calibration, the raw forward's flip gap, which the metrics pass does not keep."""
  from vaflax import calibrate, calibration, plots  # noqa: PLC0415

  cal = calibration.load(run.workdir)
  if cal is None:
    record['calibration'] = 'none'
    return {}
  arrays = calibrate.interval_inputs(run, split, dataset=dataset)
  rep = calibrate.coverage_table(cal, arrays, split)
  rep.update({'calibrated_on': cal.split, 'n': cal.n, 'coverage': cal.coverage})
  record['calibration'] = rep
  nominal = [float(k) for k in rep['coverages']]
  empirical = [[rep['coverages'][k][f'coverage_{d}'] for d in calibration.DIMS]
               for k in rep['coverages']]
  path = os.path.join(out_dir, f'reliability_{tag}.png')
  return {'reliability_png': plots.reliability(
      path, nominal, np.array(empirical).reshape(-1, 2),
      title=f'Interval coverage ({cal.method}, calibrated on {cal.split})\n{shows}')}


_SUMMARY_KEYS = ('ccc_valence', 'ccc_arousal', 'ccc_mean', 'per_video_ccc_mean', 'rmse_mean',
                 'sagr_mean', 'quadrant_accuracy', 'quadrant_macro_f1',
                 'quadrant_head_accuracy', 'quadrant_head_macro_f1')


@cli.entry_point
def main(argv) -> int:
  ap = cli.parser('vaflax.evaluate', __doc__)
  ap.add_argument('--workdir', required=True, help='the run (its config.json and checkpoints/)')
  ap.add_argument('--split', default='test', help='dataset split to score')
  ap.add_argument('--dataset', default=None,
                  help="dataset to score (default: the first of the run's config.input.dataset)")
  ap.add_argument('--flip_tta', action='store_true',
                  help='average the predictions on each image and its horizontal mirror '
                  '(sets config.eval.flip_tta; a run trained with it on mirrors anyway)')
  ap.add_argument('--checkpoint_step', type=int, default=None, help='default: the latest')
  ap.add_argument('--output', default=None, help='output folder (default: WORKDIR/eval)')
  ap.add_argument('--data_dir', default=None, help='TFDS data dir (default: the run config\'s)')
  args, overrides = cli.parse(ap, argv, overrides=True)
  rec = evaluate_run(args.workdir, split=args.split, dataset=args.dataset, flip=args.flip_tta,
                     checkpoint_step=args.checkpoint_step, output=args.output,
                     overrides=overrides, data_dir=args.data_dir)
  m = rec['metrics']
  flip = ' (flip TTA)' if rec['flip_tta'] else ''
  print(f"{rec['dataset']}/{rec['split']} step {rec['checkpoint_step']}{flip}: " + ', '.join(
      f'{k}={m[k]:.4f}' for k in _SUMMARY_KEYS if isinstance(m.get(k), float)))
  print(f"wrote {rec['files']['metrics_json']}")
  return 0


if __name__ == '__main__':
  sys.exit(main())
