"""`--cropped`: every input image is already one face crop (no detection): one CSV row each.

OUT/cropped.csv: path, valence, arousal, quadrant and, when the model has an expression head,
expr_<class> probabilities (AffectNet's classes, the order of EmoNet's and EmoFAN's heads).
Floats with 6 decimals. Unreadable images get a row with status 'error' and the reason; the run
goes on.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from vaflax import circumplex
from vaflax.predict.decode import IMAGE_EXTS, InputError, read_image

CSV_NAME = 'cropped.csv'


def _softmax(logits_NxE):
  z = np.exp(logits_NxE - logits_NxE.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def predict_crops(run, files: list[str], out_dir: str, root: str) -> tuple[str, int, int]:
  """Scores each image file as one face crop with `run` (vaflax.api.Run); returns (CSV path,
  rows ok, rows with an error)."""
  os.makedirs(out_dir, exist_ok=True)
  images, rows = [], []
  for path in files:
    if not path.lower().endswith(IMAGE_EXTS):
      rows.append({'path': path, 'error': 'not an image (--cropped takes face-crop images)'})
      continue
    try:
      images.append(read_image(path))
      rows.append({'path': path, 'image': len(images) - 1})
    except InputError as e:
      rows.append({'path': path, 'error': str(e)})
  # Crops of any sizes: the run's preprocessing resizes each, then they share device batches.
  pred = run.predict(images) if images else {}
  names = list(circumplex.AFFECTNET_EMOTIONS)
  n_expr = pred['expression'].shape[-1] if 'expression' in pred else 0
  expr_cols = [f'expr_{names[k] if k < len(names) else k}' for k in range(n_expr)]
  path_csv = os.path.join(out_dir, CSV_NAME)
  ok = 0
  with open(path_csv + '.tmp', 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['path', 'status', 'error', 'valence', 'arousal', 'quadrant', *expr_cols])
    for r in rows:
      rel = os.path.relpath(r['path'], root)
      if 'error' in r:
        w.writerow([rel, 'error', r['error'], '', '', '', *([''] * n_expr)])
        continue
      i = r['image']
      v, a = float(pred['valence'][i]), float(pred['arousal'][i])
      quadrant = circumplex.quadrant_name(int(circumplex.va_to_quadrant(np.array([v, a]))))
      probs = _softmax(pred['expression'][i]) if n_expr else []
      w.writerow([rel, 'ok', '', f'{v:.6f}', f'{a:.6f}', quadrant, *(f'{x:.6f}' for x in probs)])
      ok += 1
  os.replace(path_csv + '.tmp', path_csv)
  return path_csv, ok, len(rows) - ok
