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


def _read(path):
  try:
    return read_image(path), None
  except InputError as e:
    return None, str(e)


def score_crops(run, paths: list[str], chunk: int = 512, workers: int = 4):
  """Yields (index, {'valence', 'arousal'[, 'quadrant', 'expression']} of one crop, or None,
  error or None) for each path, in order, `chunk` images at a time (memory stays bounded for
  a whole test set); images are read by `workers` threads. Used by `--cropped` and vaflax.abaw."""
  from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

  with ThreadPoolExecutor(workers) as pool:
    for start in range(0, len(paths), chunk):
      read = list(pool.map(_read, paths[start:start + chunk]))
      ok = [j for j, (img, _) in enumerate(read) if img is not None]
      # Crops of any sizes: the run's preprocessing resizes each, then they share device batches.
      pred = run.predict([read[j][0] for j in ok]) if ok else {}
      where = {j: n for n, j in enumerate(ok)}
      for j, (_, err) in enumerate(read):
        if err is not None:
          yield start + j, None, err
        else:
          yield start + j, {k: v[where[j]] for k, v in pred.items()}, None


def predict_crops(run, files: list[str], out_dir: str, root: str) -> tuple[str, int, int]:
  """Scores each image file as one face crop with `run` (vaflax.api.Run); returns (CSV path,
  rows ok, rows with an error)."""
  from vaflax.predict.outputs import atomic  # noqa: PLC0415

  os.makedirs(out_dir, exist_ok=True)
  images = [p for p in files if p.lower().endswith(IMAGE_EXTS)]
  scored = {images[i]: (out, err) for i, out, err in score_crops(run, images)}
  names = list(circumplex.AFFECTNET_EMOTIONS)
  n_expr = next((len(out['expression']) for out, _ in scored.values()
                 if out is not None and 'expression' in out), 0)
  expr_cols = [f'expr_{names[k] if k < len(names) else k}' for k in range(n_expr)]
  path_csv = os.path.join(out_dir, CSV_NAME)
  ok = 0
  with atomic(path_csv) as tmp, open(tmp, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['path', 'status', 'error', 'valence', 'arousal', 'quadrant', *expr_cols])
    for path in files:
      rel = os.path.relpath(path, root)
      out, err = scored.get(path, (None, 'not an image (--cropped takes face-crop images)'))
      if err is not None:
        w.writerow([rel, 'error', err, '', '', '', *([''] * n_expr)])
        continue
      v, a = float(out['valence']), float(out['arousal'])
      quadrant = circumplex.quadrant_name(int(circumplex.va_to_quadrant(np.array([v, a]))))
      probs = _softmax(out['expression'][None])[0] if n_expr else []
      w.writerow([rel, 'ok', '', f'{v:.6f}', f'{a:.6f}', quadrant, *(f'{x:.6f}' for x in probs)])
      ok += 1
  return path_csv, ok, len(files) - ok
