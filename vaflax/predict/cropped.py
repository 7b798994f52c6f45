"""`--cropped`: every input image is already one face crop (no detection): one CSV row each.

OUT/cropped.csv: path, valence, arousal, quadrant and, when the model has an expression head,
expr_<class> probabilities (AffectNet's classes, the order of EmoNet's and EmoFAN's heads).
Floats with 6 decimals. Unreadable images (empty, corrupt, over the pixel limit, a
decompression bomb) and images the model cannot take get a row with status 'error' and the
reason; the run goes on. Text cells are neutralised against spreadsheet formulas (outputs.cell).
"""

from __future__ import annotations

import csv
import os

import numpy as np

from vaflax import circumplex
from vaflax.media import IMAGE_EXTS, MAX_PIXELS, InputError, read_image
from vaflax.predict.outputs import atomic, cell, remove_stale_parts

CSV_NAME = 'cropped.csv'


def _softmax(logits_NxE):
  z = np.exp(logits_NxE - logits_NxE.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def _read(path, max_pixels=MAX_PIXELS):
  try:
    return read_image(path, max_pixels), None
  except InputError as e:
    return None, str(e)


def _predict(run, images, paths):
  """([prediction dict or None per image], [error or None per image]): the chunk in one call;
  if that fails, image by image, so that one image the model cannot take is that image's error."""
  try:
    pred = run.predict(images)
    return [{k: v[n] for k, v in pred.items()} for n in range(len(images))], [None] * len(images)
  except Exception as e:  # noqa: BLE001 -- the image(s) at fault get error rows
    if len(images) == 1:
      return [None], [f'{paths[0]}: the model cannot take this image {images[0].shape} '
                      f'({type(e).__name__}: {e})']
  outs, errs = [], []
  for img, p in zip(images, paths, strict=True):
    out, err = _predict(run, [img], [p])
    outs += out
    errs += err
  return outs, errs


def score_crops(run, paths: list[str], chunk: int = 512, workers: int = 4,
                max_pixels: int = MAX_PIXELS):
  """Yields (index, {'valence', 'arousal'[, 'quadrant', 'expression']} of one crop, or None,
  error or None) for each path, in order, `chunk` images at a time (memory stays bounded for
  a whole test set); images are read by `workers` threads. Used by `--cropped` and vaflax.abaw."""
  from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

  with ThreadPoolExecutor(workers) as pool:
    for start in range(0, len(paths), chunk):
      part = paths[start:start + chunk]
      read = list(pool.map(lambda p: _read(p, max_pixels), part))
      ok = [j for j, (img, _) in enumerate(read) if img is not None]
      # Crops of any sizes: the run's preprocessing resizes each, then they share device batches.
      outs, errs = _predict(run, [read[j][0] for j in ok], [part[j] for j in ok]) if ok else ([], [])
      where = {j: n for n, j in enumerate(ok)}
      for j, (_, err) in enumerate(read):
        if err is None:
          out, err = outs[where[j]], errs[where[j]]
        yield start + j, (None if err is not None else out), err


def predict_crops(run, files: list[str], out_dir: str, root: str,
                  max_pixels: int = MAX_PIXELS) -> tuple[str, int, int]:
  """Scores each image file as one face crop with `run` (vaflax.api.Run); returns (CSV path,
  rows ok, rows with an error)."""
  os.makedirs(out_dir, exist_ok=True)
  remove_stale_parts(out_dir)  # a killed run's cropped.part<pid>h<host>.csv
  images = [p for p in files if p.lower().endswith(IMAGE_EXTS)]
  scored = {images[i]: (out, err) for i, out, err in score_crops(run, images,
                                                                  max_pixels=max_pixels)}
  names = list(circumplex.AFFECTNET_EMOTIONS)
  n_expr = next((len(out['expression']) for out, _ in scored.values()
                 if out is not None and 'expression' in out), 0)
  expr_cols = [f'expr_{names[k] if k < len(names) else k}' for k in range(n_expr)]
  path_csv = os.path.join(out_dir, CSV_NAME)
  ok = 0
  with atomic(path_csv) as tmp, open(tmp, 'w', newline='', encoding='utf-8') as f:
    w = csv.writer(f)
    w.writerow(['path', 'status', 'error', 'valence', 'arousal', 'quadrant', *expr_cols])
    for path in files:
      rel = os.path.relpath(path, root)
      out, err = scored.get(path, (None, 'not an image (--cropped takes face-crop images)'))
      if err is not None:
        w.writerow([cell(rel), 'error', cell(err), '', '', '', *([''] * n_expr)])
        continue
      v, a = float(out['valence']), float(out['arousal'])
      quadrant = circumplex.quadrant_name(int(circumplex.va_to_quadrant(np.array([v, a]))))
      probs = _softmax(out['expression'][None])[0] if n_expr else []
      w.writerow([cell(rel), 'ok', '', f'{v:.6f}', f'{a:.6f}', quadrant,
                  *(f'{x:.6f}' for x in probs)])
      ok += 1
  return path_csv, ok, len(files) - ok
