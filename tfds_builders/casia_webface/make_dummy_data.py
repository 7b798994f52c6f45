"""Writes dummy_data/ (CASIA-WebFace folder layout) and dummy_data_record/ (a record-file one).

  python -m tfds_builders.casia_webface.make_dummy_data

Faces are windows of skimage's astronaut photo (a real face OpenCV's Haar cascade finds),
shifted, scaled and mirrored per image, 100x100 (the real images are 250x250); FACES lists where
the face is in each file, mapped from the astronaut's Haar box (177, 66, 95, 95). Bad and odd
items: a gradient image without a face (centre fallback), a truncated JPEG and a Thumbs.db.
dummy_data_record/ mimics insightface's faces_webface_112x112 (train.rec, train.idx, property,
lfw.bin) with a few bytes each: the builder must refuse it with a clear message.
"""

from __future__ import annotations

import io
import os
import shutil

import cv2
import numpy as np
import skimage.data
from PIL import Image

HERE = os.path.dirname(__file__)
ASTRONAUT_BOX = (177, 66, 95, 95)
SIZE = 100
# file -> (x0, y0, side, mirror): the astronaut window drawn into a SIZE x SIZE image.
WINDOWS = {
    '0000045/001.jpg': (130, 20, 190, False),
    '0000045/002.jpg': (110, 10, 220, True),
    '0000099/001.jpg': (150, 30, 160, False),
    '0000100/001.jpg': (120, 0, 250, False),
}


def face_box(x0, y0, side, mirror):
  """Where the astronaut's Haar box lands in the SIZE x SIZE image."""
  x, y, w, h = ASTRONAUT_BOX
  if mirror:
    x = 2 * x0 + side - x - w
  s = SIZE / side
  return ((x - x0) * s, (y - y0) * s, w * s, h * s)


FACES = {f: face_box(*win) for f, win in WINDOWS.items()}


def render(x0, y0, side, mirror):
  win = skimage.data.astronaut()[y0 : y0 + side, x0 : x0 + side]
  if mirror:
    win = win[:, ::-1]
  return cv2.resize(np.ascontiguousarray(win), (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def jpeg(img) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format='JPEG', quality=80)
  return buf.getvalue()


def write(path, data: bytes):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(data)


def main():
  for d in ('dummy_data', 'dummy_data_record'):
    shutil.rmtree(os.path.join(HERE, d), ignore_errors=True)
  root = os.path.join(HERE, 'dummy_data', 'CASIA-WebFace')
  for rel, win in WINDOWS.items():
    write(os.path.join(root, rel), jpeg(render(*win)))
  g = np.linspace(60, 200, SIZE, dtype=np.uint8)
  write(os.path.join(root, '0000099', '002.jpg'),
        jpeg(np.stack([np.tile(g[:, None], (1, SIZE))] * 3, -1)))  # no face
  data = jpeg(render(130, 20, 190, False))
  write(os.path.join(root, '0000099', '003.jpg'), data[: len(data) // 3])  # truncated
  write(os.path.join(root, '0000045', 'Thumbs.db'), b'\x00' * 16)
  rec = os.path.join(HERE, 'dummy_data_record', 'faces_webface_112x112')
  write(os.path.join(rec, 'train.rec'), b'\x0a\x23\xd7\xce' + b'\x00' * 12)  # RecordIO magic
  write(os.path.join(rec, 'train.idx'), b'0\t0\n')
  write(os.path.join(rec, 'property'), b'10572,112,112\n')
  write(os.path.join(rec, 'lfw.bin'), b'\x80\x02' + b'\x00' * 8)


if __name__ == '__main__':
  main()
