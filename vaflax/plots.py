"""Evaluation and prediction plots as PNG files (matplotlib's Agg canvas, no display, no pyplot).

Every function takes the output path first, writes a PNG of exactly `size` pixels (width,
height) and returns the path. Figures are built with `matplotlib.figure.Figure`, not pyplot,
so nothing touches the global backend or leaks figures across calls. The figure's titles are
also written into the PNG's text (`Title`), so a reader or a test can tell what a file shows.
"""

from __future__ import annotations

import json
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from vaflax import circumplex, metrics

_DPI = 100


def _figure(size):
  w, h = size
  fig = Figure(figsize=(w / _DPI, h / _DPI), dpi=_DPI, layout='constrained')
  FigureCanvasAgg(fig)
  return fig


def _save(fig, path):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  titles = [fig.get_suptitle()] + [ax.get_title() for ax in fig.axes]
  meta = {'Title': ' | '.join(t for t in titles if t), 'Software': 'vaflax'}
  # no bbox_inches='tight': keeps the pixel size
  fig.savefig(path, dpi=_DPI, format='png', metadata=meta)
  return path


def plain_text(s) -> str:
  """`s` as plain text: a '$' (e.g. in a file name) would start matplotlib's mathtext."""
  return str(s).replace('$', r'\$')


def _va(x, name):
  x = np.asarray(x, np.float64)
  if x.ndim != 2 or x.shape[1] != 2:
    raise ValueError(f'{name} must have shape (N, 2) (valence, arousal); got {x.shape}')
  return x


def _valid_rows(mask, n):
  if mask is None:
    return np.ones(n, bool)
  mask = np.asarray(mask)
  return np.all(mask > 0, axis=-1) if mask.ndim == 2 else mask > 0


def _circumplex_axes(ax, title):
  ax.add_patch(Circle((0, 0), 1.0, fill=False, color='0.6', lw=1))
  ax.axhline(0, color='0.6', lw=1)
  ax.axvline(0, color='0.6', lw=1)
  corners = {0: (0.55, 1.05), 1: (-0.55, 1.05), 2: (-0.55, -1.12), 3: (0.55, -1.12)}
  for q, (x, y) in corners.items():
    ax.text(x, y, circumplex.QUADRANT_NAMES[q], ha='center', fontsize=8, color='0.35')
  ax.set_xlim(-1.2, 1.2)
  ax.set_ylim(-1.2, 1.2)
  ax.set_aspect('equal')
  ax.set_xlabel('valence')
  ax.set_ylabel('arousal')
  if title:
    ax.set_title(title)


# Points that `circumplex_scatter` numbers and names in a legend; more are drawn unnamed.
MAX_NAMED_POINTS = 40


def circumplex_scatter(path, pred_va, target_va=None, *, mask=None, title=None, labels=None,
                       marks=None, legend_title='clips', size=(640, 640)):
  """Predictions (and labels, when given) on the valence/arousal plane with the unit circle.

  `labels` (one name per row, e.g. the clips of a collection): each point is marked on the
  plane with its number (1, 2, ...; or `marks`, one short text per row) and the legend says
  which name each mark is (up to MAX_NAMED_POINTS points)."""
  pred_va = _va(pred_va, 'pred_va')
  keep = _valid_rows(mask, len(pred_va))
  if labels is not None and len(labels) != len(pred_va):
    raise ValueError(f'{len(labels)} labels for {len(pred_va)} points')
  named = labels is not None and 0 < int(keep.sum()) <= MAX_NAMED_POINTS
  fig = _figure((size[0] + 260, size[1]) if named else size)
  ax = fig.add_subplot()
  if target_va is not None:
    target_va = _va(target_va, 'target_va')[keep]
    ax.scatter(target_va[:, 0], target_va[:, 1], s=6, alpha=0.5, c='tab:gray', label='label')
  if named:
    for k, i in enumerate(np.flatnonzero(keep)):
      x, y = pred_va[i]
      mark, colour = plain_text(k + 1 if marks is None else marks[i]), f'C{k % 10}'
      ax.scatter([x], [y], s=30, color=colour, label=f'{mark}  {plain_text(labels[i])}', zorder=3)
      ax.annotate(mark, (x, y), xytext=(4, 4), textcoords='offset points', fontsize=9,
                  fontweight='bold', color=colour, zorder=4)
  else:
    ax.scatter(pred_va[keep, 0], pred_va[keep, 1], s=6, alpha=0.5, c='tab:blue',
               label='prediction')
  _circumplex_axes(ax, title)
  if named:
    fig.legend(loc='outside right upper', fontsize=8, title=legend_title)
  else:
    ax.legend(loc='center left', fontsize=8)
  return _save(fig, path)


def va_scatter(path, pred_va, target_va, *, mask=None, title=None, size=(960, 480)):
  """Prediction against label per dimension, with the identity line and the pooled CCC."""
  pred_va, target_va = _va(pred_va, 'pred_va'), _va(target_va, 'target_va')
  scores = metrics.va_metrics(pred_va, target_va, mask)
  valid = np.ones(target_va.shape, bool) if mask is None else np.broadcast_to(
      np.asarray(mask).reshape(len(target_va), -1) > 0, target_va.shape
  )
  fig = _figure(size)
  for d, name in enumerate(metrics.VA_NAMES):
    ax = fig.add_subplot(1, 2, d + 1)
    ok = valid[:, d]
    ax.scatter(target_va[ok, d], pred_va[ok, d], s=6, alpha=0.5)
    ax.plot([-1, 1], [-1, 1], color='tab:red', lw=1, label='identity')
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    ax.set_aspect('equal')
    ax.set_xlabel(f'label {name}')
    ax.set_ylabel(f'predicted {name}')
    ax.set_title(f'{name}: CCC {scores[f"ccc_{name}"]:.3f}')
    ax.legend(loc='upper left', fontsize=8)
  if title:
    fig.suptitle(title)
  return _save(fig, path)


def confusion_heatmap(path, confusion, class_names=None, *, normalise=True, title=None,
                      size=(640, 560)):
  """Heat map of a (C, C) confusion matrix (rows = true); cells show counts (and row share)."""
  cm = np.asarray(confusion, np.float64)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f'confusion must be a square matrix; got shape {cm.shape}')
  names = list(class_names or circumplex.QUADRANT_NAMES[: cm.shape[0]])
  if len(names) != cm.shape[0]:
    raise ValueError(f'{len(names)} class names for a {cm.shape[0]}-class confusion matrix')
  rows = cm.sum(1, keepdims=True)
  share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
  shown = share if normalise else cm
  fig = _figure(size)
  ax = fig.add_subplot()
  im = ax.imshow(shown, cmap='Blues', vmin=0, vmax=1 if normalise else max(cm.max(), 1))
  fig.colorbar(im, ax=ax, shrink=0.8)
  for i in range(cm.shape[0]):
    for j in range(cm.shape[1]):
      text = f'{int(cm[i, j])}\n{share[i, j]:.0%}' if normalise else f'{int(cm[i, j])}'
      ax.text(j, i, text, ha='center', va='center', fontsize=8,
              color='white' if share[i, j] > 0.5 else 'black')
  ax.set_xticks(range(len(names)), names, rotation=30, ha='right', fontsize=8)
  ax.set_yticks(range(len(names)), names, fontsize=8)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  if title:
    ax.set_title(title)
  return _save(fig, path)


def va_over_time(path, time_s, va, *, target_va=None, title=None, duration_s=None,
                 size=(960, 420)):
  """Valence and arousal against time in seconds (labels dashed, when given), over the whole
  clip (0 to `duration_s`, when known). Rows of NaN VA (frames without a face) are gaps, shaded."""
  time_s = np.asarray(time_s, np.float64).reshape(-1)
  va = _va(va, 'va')
  if len(time_s) != len(va):
    raise ValueError(f'time_s has {len(time_s)} entries for {len(va)} VA rows')
  fig = _figure(size)
  ax = fig.add_subplot()
  end = max(float(duration_s or 0), float(time_s.max()) if len(time_s) else 0.0)
  missing = np.isnan(va).any(1)
  if missing.any():  # shade each run of faceless frames, from its first to the next face
    edges = np.flatnonzero(np.diff(np.r_[0, missing.astype(np.int8), 0]))
    for k, (a, b) in enumerate(zip(edges[::2], edges[1::2], strict=True)):
      t0 = time_s[a - 1] if a > 0 else 0.0
      t1 = time_s[b] if b < len(time_s) else end
      ax.axvspan(t0, t1, color='0.9', lw=0, label='no face' if k == 0 else None)
  for d, (name, colour) in enumerate(zip(('valence', 'arousal'), ('tab:blue', 'tab:orange'),
                                         strict=True)):
    ax.plot(time_s, va[:, d], color=colour, lw=1.5, label=name)
    if target_va is not None:
      ax.plot(time_s, _va(target_va, 'target_va')[:, d], color=colour, lw=1, ls='--',
              label=f'{name} (label)')
  ax.axhline(0, color='0.6', lw=0.8)
  ax.set_ylim(-1.05, 1.05)
  if end > 0:
    ax.set_xlim(0, end)
  ax.set_xlabel('time (s)')
  ax.set_ylabel('value')
  ax.legend(loc='upper right', fontsize=8, ncol=2)
  if title:
    ax.set_title(title)
  return _save(fig, path)


def circumplex_trajectory(path, va, time_s=None, *, title=None, size=(640, 640)):
  """The VA path of a clip on the circumplex, coloured by time."""
  va = _va(va, 'va')
  t = np.arange(len(va), dtype=np.float64) if time_s is None else np.asarray(time_s, np.float64)
  if len(t) != len(va):
    raise ValueError(f'time_s has {len(t)} entries for {len(va)} VA rows')
  fig = _figure(size)
  ax = fig.add_subplot()
  ax.plot(va[:, 0], va[:, 1], color='0.75', lw=0.8, zorder=1)
  norm = Normalize(t.min(), t.max()) if len(t) else None
  sc = ax.scatter(va[:, 0], va[:, 1], c=t, cmap='viridis', norm=norm, s=10, zorder=2)
  fig.colorbar(sc, ax=ax, shrink=0.8, label='time (s)' if time_s is not None
               else 'frame')
  _circumplex_axes(ax, title)
  return _save(fig, path)


def reliability(path, nominal_C, empirical_Cx2, *, title=None, size=(560, 560)):
  """Nominal against empirical coverage of the intervals, one line per dimension (valence,
  arousal), and the diagonal they keep to when the calibration holds."""
  nominal = np.asarray(nominal_C, np.float64)
  emp = np.asarray(empirical_Cx2, np.float64).reshape(len(nominal), 2)
  fig = _figure(size)
  ax = fig.add_subplot(1, 1, 1)
  ax.plot([0, 1], [0, 1], color='0.6', lw=1, ls='--', label='nominal = empirical')
  for d, (name, mark) in enumerate((('valence', 'o'), ('arousal', 's'))):
    ax.plot(nominal, emp[:, d], marker=mark, label=name)
  lo = min(0.4, float(np.nanmin(np.concatenate([nominal, emp.reshape(-1)]))) - 0.05)
  ax.set_xlim(lo, 1.0)
  ax.set_ylim(lo, 1.0)
  ax.set_xlabel('nominal coverage')
  ax.set_ylabel('empirical coverage')
  ax.set_aspect('equal')
  ax.grid(alpha=0.3)
  ax.legend(loc='lower right')
  if title:
    ax.set_title(plain_text(title))
  return _save(fig, path)


def read_metrics_jsonl(metrics_path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{key: (steps, values)} from a metrics.jsonl (one JSON object with 'step' per line).

  Null values (NaN written by vaflax.writers) and non-numeric values are skipped.
  """
  series: dict[str, list[tuple[int, float]]] = {}
  with open(metrics_path) as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{metrics_path}:{line_no}: not a JSON object ({e})') from e
      if 'step' not in rec:
        raise ValueError(f'{metrics_path}:{line_no}: record has no "step" key')
      for k, v in rec.items():
        if k != 'step' and isinstance(v, int | float) and not isinstance(v, bool):
          series.setdefault(k, []).append((int(rec['step']), float(v)))
  return {k: (np.array([s for s, _ in v]), np.array([x for _, x in v])) for k, v in series.items()}


def training_curves(path, metrics_path, *, keys=None, size=(1000, 440)):
  """Curves against step from metrics.jsonl: losses on the left panel, other metrics right.

  `keys` selects the series (default: all numeric keys); a key containing 'loss' goes left.
  """
  series = read_metrics_jsonl(metrics_path)
  keys = sorted(series) if keys is None else list(keys)
  missing = [k for k in keys if k not in series]
  if missing:
    raise ValueError(f'{metrics_path} has no numeric series {missing}; it has {sorted(series)}')
  if not keys:
    raise ValueError(f'{metrics_path} holds no numeric metric to plot')
  fig = _figure(size)
  panels = (
      ('loss', [k for k in keys if 'loss' in k]),
      ('metric', [k for k in keys if 'loss' not in k]),
  )
  panels = [p for p in panels if p[1]]
  for i, (ylabel, ks) in enumerate(panels):
    ax = fig.add_subplot(1, len(panels), i + 1)
    for k in ks:
      steps, values = series[k]
      ax.plot(steps, values, marker='.' if len(steps) < 30 else None, lw=1.2, label=k)
    ax.set_xlabel('step')
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  return _save(fig, path)
