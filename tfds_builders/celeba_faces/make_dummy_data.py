"""Writes dummy_data/ (official CelebA layout) and dummy_data_kaggle/ (Kaggle re-release).

  python -m tfds_builders.celeba_faces.make_dummy_data

Nine 178x218 "aligned" images drawn with vaflax.data.synthetic_faces; the 5 landmarks written to
the lists are the drawn eye centres, nose tip and mouth corners, and a pure green 5x5 marker sits
on the nose tip so the test can find it in the crop. Smiling is 1 for odd image numbers.
Partition: 000001-000003, 000006, 000007 train; 000004, 000005 validation; 000008, 000009 test.
Bad items (both layouts): 000006 has an attribute row with 39 values, 000007.jpg is truncated,
000008.jpg is missing. The official layout also has a partition row without a partition value.
"""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
from PIL import Image

from tfds_builders.celeba_faces import celeba_faces_dataset_builder as cb
from vaflax.data import synthetic_faces as sf

HERE = os.path.dirname(__file__)
W, H = 178, 218
IDS = [f'{i:06d}.jpg' for i in range(1, 10)]
PARTITION = {1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 6: 0, 7: 0, 8: 2, 9: 2}
GREEN = (0, 255, 0)


def draw(i: int) -> tuple[np.ndarray, np.ndarray]:
  """A 178x218 image with one face and its 5 points (x, y) as the integers CelebA stores."""
  rng = np.random.default_rng(100 + i)
  ident = sf.sample_identity(rng)
  pose = np.array([0.5, 0.5, 1.0, rng.uniform(-0.1, 0.1), 0.0])
  face, lm68 = sf.render_frame(ident, 0.8 if i % 2 else -0.3, 0.0, pose, 160)
  img = np.zeros((H, W, 3), np.uint8)
  img[:] = ident.background
  ox, oy = 9, 40  # where the 160 px face goes in the aligned frame
  img[oy : oy + 160, ox : ox + 160] = face
  lm68 = lm68 + np.array([ox, oy])
  five = np.stack([lm68[36:42].mean(0), lm68[42:48].mean(0), lm68[30], lm68[48], lm68[54]])
  five = np.round(five).astype(int)
  nx, ny = five[2]
  img[ny - 2 : ny + 3, nx - 2 : nx + 3] = GREEN
  return img, five


def attributes(i: int) -> list[int]:
  rng = np.random.default_rng(i)
  vals = rng.choice([-1, 1], size=len(cb.ATTRIBUTE_NAMES))
  vals[cb.ATTRIBUTE_NAMES.index('Smiling')] = 1 if i % 2 else -1
  return [int(v) for v in vals]


def jpeg(img) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format='JPEG', quality=80)
  return buf.getvalue()


def write_images(img_dir: str, faces: dict) -> None:
  os.makedirs(img_dir, exist_ok=True)
  for i, (img, _) in faces.items():
    if i == 8:
      continue  # missing file
    data = jpeg(img)
    if i == 7:
      data = data[: len(data) // 3]  # truncated
    with open(os.path.join(img_dir, IDS[i - 1]), 'wb') as f:
      f.write(data)


def official(faces: dict) -> None:
  root = os.path.join(HERE, 'dummy_data', 'CelebA')
  write_images(os.path.join(root, 'Img', 'img_align_celeba'), faces)
  anno = os.path.join(root, 'Anno')
  os.makedirs(anno, exist_ok=True)
  os.makedirs(os.path.join(root, 'Eval'), exist_ok=True)
  n = len(IDS)
  with open(os.path.join(anno, 'list_attr_celeba.txt'), 'w') as f:
    f.write(f'{n}\n' + ' '.join(cb.ATTRIBUTE_NAMES) + ' \n')
    for i, name in enumerate(IDS, 1):
      vals = attributes(i)[:-1] if i == 6 else attributes(i)
      f.write(name + ''.join(f' {v:2d}' for v in vals) + '\n')
  with open(os.path.join(anno, 'list_landmarks_align_celeba.txt'), 'w') as f:
    f.write(f'{n}\n' + ' '.join(cb.LANDMARK_COLUMNS) + '\n')
    for i, name in enumerate(IDS, 1):
      f.write(name + ''.join(f' {v:4d}' for v in faces[i][1].ravel()) + '\n')
  with open(os.path.join(anno, 'list_bbox_celeba.txt'), 'w') as f:
    f.write(f'{n}\nimage_id x_1 y_1 width height\n')
    for i, name in enumerate(IDS, 1):
      f.write(f'{name} {10 * i:5d} {20 * i:4d} {100 + i:4d} {150 + i:4d}\n')
  with open(os.path.join(root, 'Eval', 'list_eval_partition.txt'), 'w') as f:
    for i, name in enumerate(IDS, 1):
      f.write(f'{name} {PARTITION[i]}\n')
    f.write('000010.jpg\n')  # a row without a partition value


def kaggle(faces: dict) -> None:
  root = os.path.join(HERE, 'dummy_data_kaggle')
  write_images(os.path.join(root, 'img_align_celeba', 'img_align_celeba'), faces)
  with open(os.path.join(root, 'list_attr_celeba.csv'), 'w') as f:
    f.write('image_id,' + ','.join(cb.ATTRIBUTE_NAMES) + '\n')
    for i, name in enumerate(IDS, 1):
      vals = attributes(i)[:-1] if i == 6 else attributes(i)
      f.write(name + ',' + ','.join(str(v) for v in vals) + '\n')
  with open(os.path.join(root, 'list_landmarks_align_celeba.csv'), 'w') as f:
    f.write('image_id,' + ','.join(cb.LANDMARK_COLUMNS) + '\n')
    for i, name in enumerate(IDS, 1):
      f.write(name + ',' + ','.join(str(v) for v in faces[i][1].ravel()) + '\n')
  with open(os.path.join(root, 'list_bbox_celeba.csv'), 'w') as f:
    f.write('image_id,x_1,y_1,width,height\n')
    for i, name in enumerate(IDS, 1):
      f.write(f'{name},{10 * i},{20 * i},{100 + i},{150 + i}\n')
  with open(os.path.join(root, 'list_eval_partition.csv'), 'w') as f:
    f.write('image_id,partition\n')
    for i, name in enumerate(IDS, 1):
      f.write(f'{name},{PARTITION[i]}\n')


def main():
  for d in ('dummy_data', 'dummy_data_kaggle'):
    shutil.rmtree(os.path.join(HERE, d), ignore_errors=True)
  faces = {i: draw(i) for i in range(1, 10)}
  official(faces)
  kaggle(faces)


if __name__ == '__main__':
  main()
