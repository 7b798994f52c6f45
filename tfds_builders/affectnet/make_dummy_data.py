"""Writes dummy_data/ for affectnet in the real layouts of both releases.

  python -m tfds_builders.affectnet.make_dummy_data

dummy_data/csv/: the original release (Manually_Annotated_file_lists/training.csv with a header,
validation.csv without one, images under Manually_Annotated/Manually_Annotated_Images/ as emoca
nests them). Bad and special rows: None (8), Uncertain (9) and No-Face (10) categories, a -2
valence, a valence of 1.5, a row with a wrong field count, a missing and a truncated image,
malformed landmarks, a zero-size face box (cropped from the landmarks), expression 'x'.
dummy_data/npy/: the newer release (train_set/, val_set/ with images/<id>.jpg and
annotations/<id>_{exp,val,aro,lnd}.npy), values stored as strings for one image and as numbers
for the others; an image without annotations, a truncated one, a non-square one without
landmarks.

Faces are synthetic (vaflax.data.synthetic_faces) with a 3x3 red marker on landmark 30 (nose tip).
"""

from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
from PIL import Image

from vaflax.data import synthetic_faces as sf

OUT = os.path.join(os.path.dirname(__file__), 'dummy_data')
RED = (255, 0, 0)
HEADER = ('subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,'
          'expression,valence,arousal')


def face_image(seed, w, h, face, dx, dy):
  """(uint8 image, (68, 2) landmarks px): a synthetic face of side `face` at (dx, dy)."""
  ident = sf.sample_identity(np.random.default_rng(seed))
  f, lm = sf.render_frame(ident, 0.3, 0.2, np.array([0.5, 0.5, 1.0, 0.0, 0.0]), face)
  img = np.zeros((h, w, 3), np.uint8)
  img[:] = ident.background
  img[dy : dy + face, dx : dx + face] = f
  lm = np.round(lm + np.array([dx, dy]), 2)
  cx, cy = np.round(lm[30]).astype(int)
  img[cy - 1 : cy + 2, cx - 1 : cx + 2] = RED
  return img, lm


def save_jpeg(path, img, truncate=False):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(img).save(path, quality=90)
  if truncate:
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[: len(data) // 2])


def name(i):
  return hashlib.sha224(f'affectnet-dummy-{i}'.encode()).hexdigest() + '.jpg'


def write_csv_release():
  root = os.path.join(OUT, 'csv')
  images = os.path.join(root, 'Manually_Annotated', 'Manually_Annotated_Images')
  lists = os.path.join(root, 'Manually_Annotated_file_lists')
  os.makedirs(lists, exist_ok=True)

  def row(i, sub, expression, valence, arousal, *, seed=None, image=True, truncate=False,
          landmarks=None, box=None):
    rel = f'{sub}/{name(i)}'
    img, lm = face_image(seed if seed is not None else i, 80, 72, 48, 16 + i % 3, 12)
    if image:
      save_jpeg(os.path.join(images, rel), img, truncate)
    # A detector-like box: the landmark box, 10 % wider, starting a little above the brows.
    x0, y0 = lm.min(0)
    x1, y1 = lm.max(0)
    box = box or (int(x0 - 2), int(y0 - 4), int(x1 - x0 + 4), int(y1 - y0 + 6))
    lms = landmarks if landmarks is not None else ';'.join(f'{v:.2f}' for v in lm.reshape(-1))
    return f'{rel},{box[0]},{box[1]},{box[2]},{box[3]},{lms},{expression},{valence},{arousal}'

  train = [
      HEADER,
      row(0, 101, 1, 0.785714, -0.055556, seed=4),
      row(1, 101, 7, -0.3, 0.2, seed=5),
      row(2, 102, 8, 0.1, -0.1, seed=9),
      row(3, 102, 9, -2, -2, image=False),
      row(4, 103, 10, -2, -2, image=False),
      row(5, 103, 2, -2, 0.4, seed=10),
      f'103/{name(6)},1,2,3,4,0,0',
      row(7, 104, 1, 0.5, 0.5, image=False),
      row(8, 104, 1, 0.5, 0.5, truncate=True),
      row(9, 104, 6, 1.5, 0.3, seed=4),
      row(10, 105, 4, -0.5, 0.6, seed=5, landmarks='1;2;3'),
      row(11, 105, 3, 0.2, 0.6, seed=9, box=(0, 0, 0, 0)),
      row(12, 105, 'x', -0.1, -0.2, seed=10),
  ]
  val = [row(20, 201, 0, 0.0, 0.0, seed=9), row(21, 201, 3, 0.2, 0.7, seed=10)]
  with open(os.path.join(lists, 'training.csv'), 'w') as f:
    f.write('\n'.join(train) + '\n')
  with open(os.path.join(lists, 'validation.csv'), 'w') as f:
    f.write('\n'.join(val) + '\n')


def write_npy_release():
  root = os.path.join(OUT, 'npy', 'AffectNet')

  def item(split, stem, exp, val, aro, *, seed, size=(64, 64), lnd=True, annotate=True,
           truncate=False, as_text=False):
    w, h = size
    face = min(56, h)
    img, lm = face_image(seed, w, h, face, (w - face) // 2, (h - face) // 2)
    save_jpeg(os.path.join(root, split, 'images', f'{stem}.jpg'), img, truncate)
    if not annotate:
      return
    ann = os.path.join(root, split, 'annotations')
    os.makedirs(ann, exist_ok=True)
    for key, v in (('exp', exp), ('val', val), ('aro', aro)):
      np.save(os.path.join(ann, f'{stem}_{key}.npy'), np.array(str(v) if as_text else v))
    if lnd:
      np.save(os.path.join(ann, f'{stem}_lnd.npy'), lm.reshape(-1).astype(np.float32))

  item('train_set', 0, 1, 0.5, 0.25, seed=4, as_text=True)
  item('train_set', 1, 3, -2.0, 0.3, seed=5)
  item('train_set', 2, 0, 0.0, 0.0, seed=9, annotate=False)
  item('train_set', 3, 2, -0.2, 0.1, seed=10, truncate=True)
  item('train_set', 4, 0, 0.1, -0.1, seed=9, size=(64, 48), lnd=False)
  item('train_set', 10, 5, -0.6, 0.4, seed=10)
  item('val_set', 0, 6, -0.4, 0.5, seed=4)


def main():
  shutil.rmtree(OUT, ignore_errors=True)
  write_csv_release()
  write_npy_release()
  total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
  print(f'wrote {OUT} ({total / 1024:.0f} KiB)')


if __name__ == '__main__':
  main()
