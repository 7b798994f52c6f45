"""Writes dummy_data/ for afew_va in the real layout.

  python -m tfds_builders.afew_va.make_dummy_data

dummy_data/parts/: the 12-part layout `AFEW-VA/01/001/...` with three clips (one per split),
Kaggle `*_cropped` copies (a sibling and a nested one, both ignored) and bad items: a truncated
PNG, an annotated frame whose PNG is missing, a PNG without annotation, a valence that is not a
number, an arousal of 12 (outside [-10, 10]), a frame with 67 landmarks and a clip folder
without json. dummy_data/flat/: three clips directly under manual_dir.

Frames are 72x60 with a 48 px synthetic face (vaflax.data.synthetic_faces) at a per-frame offset
and a 3x3 blue marker on landmark 30 (nose tip), so the test can check the landmark crop.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
from PIL import Image

from tfds_builders.afew_va.afew_va_dataset_builder import split_of
from vaflax.data import synthetic_faces as sf

HERE = os.path.dirname(__file__)
OUT = os.path.join(HERE, 'dummy_data')
W, H, FACE = 72, 60, 48
BLUE = (0, 0, 255)
MARKER = 30  # nose tip


def actor_for(split: str, start: int = 0) -> str:
  """The first made-up actor name (from `start`) that the hash puts in `split`."""
  i = start
  while split_of(f'Dummy Actor {i}', '') != split:
    i += 1
  return f'Dummy Actor {i}'


def frame(seed: int, t: int, dx: int, dy: int):
  """(uint8 HxWx3 frame, (68, 2) landmarks in frame pixels) with the face at offset (dx, dy)."""
  ident = sf.sample_identity(np.random.default_rng(seed))
  face, lm = sf.render_frame(ident, 0.5 * np.sin(t), 0.5 * np.cos(t),
                             np.array([0.5, 0.5, 1.0, 0.0, 0.0]), FACE)
  img = np.zeros((H, W, 3), np.uint8)
  img[:] = ident.background
  # Paste the face square at (dx, dy), clipped to the frame.
  x0, y0 = max(dx, 0), max(dy, 0)
  x1, y1 = min(dx + FACE, W), min(dy + FACE, H)
  img[y0:y1, x0:x1] = face[y0 - dy : y1 - dy, x0 - dx : x1 - dx]
  lm = lm + np.array([dx, dy], np.float32)
  cx, cy = np.round(lm[MARKER]).astype(int)
  img[cy - 1 : cy + 2, cx - 1 : cx + 2] = BLUE
  return img, np.round(lm, 2)


def write_clip(folder, clip_id, actor, labels, *, seed, offsets, drop=(), truncate=(),
               extra_png=(), bad_landmarks=()):
  """labels: per frame (valence, arousal) as written to json (any JSON value)."""
  os.makedirs(folder, exist_ok=True)
  frames = {}
  for t, (v, a) in enumerate(labels):
    img, lm = frame(seed, t, *offsets[t])
    key = f'{t:05d}'
    lms = lm.tolist()
    if t in bad_landmarks:
      lms = lms[:-1]
    frames[key] = {'arousal': a, 'landmarks': lms, 'valence': v}
    if t in drop:
      continue
    path = os.path.join(folder, f'{key}.png')
    Image.fromarray(img).save(path, optimize=True)
    if t in truncate:
      data = open(path, 'rb').read()
      open(path, 'wb').write(data[: len(data) // 2])
  for t in extra_png:
    img, _ = frame(seed, t, *offsets[0])
    Image.fromarray(img).save(os.path.join(folder, f'{t:05d}.png'), optimize=True)
  with open(os.path.join(folder, f'{clip_id}.json'), 'w') as f:
    json.dump({'actor': actor, 'frames': frames, 'video_id': clip_id}, f)


def tiny_png(path, seed=0):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  img, _ = frame(seed, 0, 12, 6)
  Image.fromarray(img[::2, ::2]).save(path, optimize=True)


def main():
  shutil.rmtree(OUT, ignore_errors=True)
  parts = os.path.join(OUT, 'parts', 'AFEW-VA')
  # 001 (train): 4 frames, the last with the face half outside the left border (zero padding).
  write_clip(os.path.join(parts, '01', '001'), '001', actor_for('train'),
             [(-2, 3), (-1, 4), (0.0, 5), (7, -10)], seed=4,
             offsets=[(12, 6), (14, 8), (10, 4), (-20, 6)])
  tiny_png(os.path.join(parts, '01', '001_cropped', '00000.png'))
  # 002 (validation): frame 1 truncated, frame 2 missing, valence 'x' on 3, arousal 12 on 4.
  write_clip(os.path.join(parts, '01', '002'), '002', actor_for('validation'),
             [(5, 5), (1, 1), (2, 2), ('x', -3), (-6, 12)], seed=5,
             offsets=[(12, 6)] * 5, truncate=(1,), drop=(2,))
  # 051 (test, part 02): a frame with 67 landmarks, a PNG without annotation, a nested copy.
  write_clip(os.path.join(parts, '02', '051'), '051', actor_for('test'),
             [(10, -10), (-10, 10), (3, 3)], seed=9, offsets=[(8, 2), (12, 6), (16, 10)],
             bad_landmarks=(2,), extra_png=(3,))
  tiny_png(os.path.join(parts, '02', '051', '051_cropped', '00000.png'))
  # 052: frames but no annotation json.
  tiny_png(os.path.join(parts, '02', '052', '00000.png'))

  flat = os.path.join(OUT, 'flat')
  for clip_id, split, seed in (('101', 'train', 10), ('102', 'validation', 4), ('103', 'test', 5)):
    write_clip(os.path.join(flat, clip_id), clip_id, actor_for(split, 20), [(1, -1), (2, -2)],
               seed=seed, offsets=[(12, 6), (13, 7)])
  total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
  print(f'wrote {OUT} ({total / 1024:.0f} KiB)')


if __name__ == '__main__':
  main()
