"""Writes dummy_data/ (fer2013.csv + FER+ fer2013new.csv) and dummy_data_icml/ (Kaggle's
icml_face_data.csv, whose column names carry leading spaces) for the fer2013 builder.

  python -m tfds_builders.fer2013.make_dummy_data

Images are 48x48 grayscale faces drawn with vaflax.data.synthetic_faces. Bad rows: too few
pixels, a pixel value of 300, a wrong field count, an unknown Usage, an emotion code 7 (kept
only where FER+ votes exist). FER+ rows include a 'not a face' row, a tie and a single-vote
outlier that decides the majority.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from vaflax.data import synthetic_faces as sf

HERE = os.path.dirname(__file__)


def face(seed) -> np.ndarray:
  rng = np.random.default_rng(seed)
  ident = sf.sample_identity(rng)
  img, _ = sf.render_frame(ident, float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1)),
                           np.array([0.5, 0.5, 1.0, 0.0, 0.0]), 48)
  return (img.astype(np.float32) @ np.array([0.299, 0.587, 0.114])).round().astype(np.uint8)


def pix(seed) -> str:
  return ' '.join(str(v) for v in face(seed).reshape(-1))


# (emotion, pixels, Usage, FER+ votes in fer2013new.csv column order) per fer2013.csv row.
ROWS = [
    ('0', pix(0), 'Training', [0, 0, 0, 0, 9, 1, 0, 0, 0, 0]),     # FER+ anger
    ('3', pix(1), 'Training', [5, 4, 1, 0, 0, 0, 0, 0, 0, 0]),     # single vote dropped: neutral
    ('6', pix(2), 'Training', [5, 5, 0, 0, 0, 0, 0, 0, 0, 0]),     # tie: no majority
    ('4', pix(3), 'Training', [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),    # FER+ says not a face
    ('7', pix(4), 'Training', [0, 2, 8, 0, 0, 0, 0, 0, 0, 0]),     # bad code, FER+ surprise
    ('2', pix(5)[:-4], 'Training', [3, 0, 0, 0, 0, 0, 7, 0, 0, 0]),  # 2303 pixels
    ('1', '300 ' + pix(6)[pix(6).index(' ') + 1:], 'Training', [0] * 9 + [10]),  # value 300
    ('2', pix(12), None, [0, 0, 0, 0, 0, 0, 10, 0, 0, 0]),        # row lost its Usage field
    ('5', pix(7), 'Bogus', [0, 0, 10, 0, 0, 0, 0, 0, 0, 0]),       # unknown Usage
    ('5', pix(8), 'PublicTest', [0, 0, 7, 0, 0, 0, 0, 0, 3, 0]),   # surprise
    ('1', pix(9), 'PublicTest', [0, 0, 0, 0, 0, 6, 0, 4, 0, 0]),   # disgust
    ('4', pix(10), 'PrivateTest', [1, 0, 0, 9, 0, 0, 0, 0, 0, 0]),  # sadness
    ('3', pix(11), 'PrivateTest', [0, 0, 0, 0, 0, 0, 0, 2, 8, 0]),  # unknown wins: none
]
FERPLUS_HEADER = ('Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,'
                  'contempt,unknown,NF\n')


def main():
  out = os.path.join(HERE, 'dummy_data')
  shutil.rmtree(out, ignore_errors=True)
  os.makedirs(os.path.join(out, 'fer2013'))
  os.makedirs(os.path.join(out, 'FERPlus'))
  with open(os.path.join(out, 'fer2013', 'fer2013.csv'), 'w') as f:
    f.write('emotion,pixels,Usage\n')
    for e, p, u, _ in ROWS:
      if u is None:
        f.write(f'{e},"{p}"\n')
      else:
        f.write(f'{e},"{p}",{u}\n')
  with open(os.path.join(out, 'FERPlus', 'fer2013new.csv'), 'w') as f:
    f.write(FERPLUS_HEADER)
    for i, (_, _, u, votes) in enumerate(ROWS):
      name = '' if votes[-1] == 10 else f'fer{i:07d}.png'  # not-a-face rows have no name
      f.write(f'{u or "Training"},{name},' + ','.join(map(str, votes)) + '\n')
  # Kaggle's icml_face_data.csv: other column order, names with a leading space.
  out = os.path.join(HERE, 'dummy_data_icml')
  shutil.rmtree(out, ignore_errors=True)
  os.makedirs(out)
  with open(os.path.join(out, 'icml_face_data.csv'), 'w') as f:
    f.write('emotion, Usage, pixels\n')
    for e, p, u in (('3', pix(20), 'Training'), ('0', pix(21), 'PublicTest'),
                    ('6', pix(22), 'PrivateTest')):
      f.write(f'{e},{u},"{p}"\n')


if __name__ == '__main__':
  main()
