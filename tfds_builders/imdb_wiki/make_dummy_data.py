"""Writes dummy_data/ in the IMDB-WIKI "faces only" layout (imdb_crop/, wiki_crop/, .mat files).

  python -m tfds_builders.imdb_wiki.make_dummy_data

"Original" photos are skimage's astronaut at 256 px (and 200 px, and 256 px cut so that the face
is 18 px from the left border). Each gets a face_location (MATLAB 1-based [x1 y1 x2 y2]) and a
green 5x5 marker at the box centre, and is cut with 40 % of the box size added on each side,
clipped at the border, the way the *_crop release was made. The .mat files are written with
scipy.io.savemat as 1xN struct fields (cells for full_path, name and face_location), like the
real ones. Rows: see ROWS (kept, no face, low score, second face, missing/truncated file, NaN box).
"""

from __future__ import annotations

import datetime
import io
import os
import shutil

import cv2
import numpy as np
import scipy.io
import skimage.data
from PIL import Image

HERE = os.path.dirname(__file__)
OUT = os.path.join(HERE, 'dummy_data')
GREEN = (0, 255, 0)
MARGIN = 0.4


def original(size: int, cut_left: int = 0):
  """(image, 0-based face box x, y, w, h) of the astronaut at `size` px, left columns cut."""
  img = cv2.resize(skimage.data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
  s = size / 512
  x, y, w = round(177 * s) - cut_left, round(66 * s), round(95 * s)
  img = np.ascontiguousarray(img[:, cut_left:])
  cx, cy = x + w // 2, y + w // 2
  img[cy - 2 : cy + 3, cx - 2 : cx + 3] = GREEN
  return img, (x, y, w, w)


def crop_release(img, box):
  """The 40 %-margin crop, clipped at the image border, and the box inside it."""
  x, y, w, h = box
  x0, y0 = max(0, int(x - MARGIN * w)), max(0, int(y - MARGIN * h))
  x1 = min(img.shape[1], int(np.ceil(x + w + MARGIN * w)))
  y1 = min(img.shape[0], int(np.ceil(y + h + MARGIN * h)))
  return img[y0:y1, x0:x1], (x - x0, y - y0, w, h)


def matlab_box(box):
  x, y, w, h = box
  return np.array([[x + 1, y + 1, x + w, y + h]], np.float64)  # 1-based, inclusive


def datenum(y, m, d):
  return float(datetime.date(y, m, d).toordinal() + 366)


def jpeg(img) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format='JPEG', quality=85)
  return buf.getvalue()


GREY = np.full((32, 32, 3), 128, np.uint8)
O1, O2, O3 = original(256), original(256, cut_left=70), original(200)
# (path, what is on disk, face_location box in the original, face_score, second_face_score,
#  dob, photo_taken, gender, name, celeb_id)
ROWS = {
    'wiki': [
        ('17/10000217_1981-05-05_2009.jpg', O1, 4.3, np.nan, (1981, 5, 5), 2009, 1.0, 'A', None),
        ('48/10000548_1925-04-04_1964.jpg', 'grey', -np.inf, np.nan, (1925, 4, 4), 1964, 1.0,
         'B', None),
        ('12/100012_1948-07-03_2008.jpg', O1, 0.5, np.nan, (1948, 7, 3), 2008, 0.0, 'C', None),
        ('16/10002116_1971-05-31_2012.jpg', 'grey', 3.0, 2.0, (1971, 5, 31), 2012, 0.0, 'D',
         None),
        ('02/10002702_1960-11-09_2012.jpg', None, 3.5, np.nan, (1960, 11, 9), 2012, 0.0, 'E',
         None),
        ('41/10003541_1937-09-27_1971.jpg', O2, 2.5, np.nan, (1937, 9, 27), 1971, 1.0, 'F', None),
    ],
    'imdb': [
        ('01/nm0000001_rm124825600_1899-5-10_1968.jpg', O3, 1.9, np.nan, (1899, 5, 10), 1968,
         1.0, 'Fred Astaire', 1),
        ('01/nm0000001_rm3343756032_1899-5-10_1970.jpg', 'truncated', 3.1, np.nan,
         (1899, 5, 10), 1970, 1.0, 'Fred Astaire', 1),
        ('02/nm0000002_rm1346607872_1924-9-16_2004.jpg', O1, 2.2, np.nan, (1924, 9, 16), 2004,
         np.nan, '', 2),
        ('02/nm0000002_rm221957120_1924-9-16_1974.jpg', 'nan_box', 5.0, np.nan, (1924, 9, 16),
         1974, 0.0, 'Lauren Bacall', 2),
    ],
}


def cell(items):
  a = np.empty((1, len(items)), dtype=object)
  for i, x in enumerate(items):
    a[0, i] = x
  return a


def write_source(src: str) -> None:
  folder = os.path.join(OUT, f'{src}_crop')
  locs = []
  for path, what, *_ in ROWS[src]:
    data, loc = None, np.array([[1.0, 1.0, 32.0, 32.0]])  # whole image, as for no face
    if isinstance(what, tuple):
      img, box = what
      crop, _ = crop_release(img, box)
      data, loc = jpeg(crop), matlab_box(box)
    elif what == 'grey':
      data = jpeg(GREY)
    elif what == 'truncated':
      data = jpeg(crop_release(*O1)[0])
      data = data[: len(data) // 3]
    elif what == 'nan_box':
      data, loc = jpeg(GREY), np.full((1, 4), np.nan)
    locs.append(loc)
    if data is not None:
      os.makedirs(os.path.join(folder, os.path.dirname(path)), exist_ok=True)
      with open(os.path.join(folder, path), 'wb') as f:
        f.write(data)
  rows = ROWS[src]
  struct = {
      'dob': np.array([[datenum(*r[4]) for r in rows]]),
      'photo_taken': np.array([[r[5] for r in rows]], np.uint16),
      'full_path': cell([r[0] for r in rows]),
      'gender': np.array([[r[6] for r in rows]]),
      'name': cell([r[7] if r[7] else np.zeros((0,), '<U1') for r in rows]),
      'face_location': cell(locs),
      'face_score': np.array([[r[2] for r in rows]]),
      'second_face_score': np.array([[r[3] for r in rows]]),
  }
  if src == 'imdb':
    struct['celeb_names'] = cell(['Fred Astaire', 'Lauren Bacall'])
    struct['celeb_id'] = np.array([[r[8] for r in rows]], np.float64)
  scipy.io.savemat(os.path.join(folder, f'{src}.mat'), {src: struct})


def main():
  shutil.rmtree(OUT, ignore_errors=True)
  for src in ('imdb', 'wiki'):
    write_source(src)


if __name__ == '__main__':
  main()
