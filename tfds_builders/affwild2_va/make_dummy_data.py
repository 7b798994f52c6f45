"""Writes dummy_data/ for affwild2_va in the real layouts of two ABAW editions.

  python -m tfds_builders.affwild2_va.make_dummy_data

dummy_data/abaw6/Aff-Wild2/ (ABAW 2022+ layout):
  6th ABAW Annotations/VA_Estimation_Challenge/{Train_Set,Validation_Set}/<video>.txt
  5th_ABAW_Annotations/VA_Estimation_Challenge/...   (an older edition: must be ignored)
  cropped_aligned/<video>/<00001>.jpg, cropped_aligned_new_50_vids/<video>/...
  batch1/1-30-64x48.mp4, batch2/7-25-64x48.mp4       (raw videos with audio)
  Train: 1-30-64x48 (crop 00003 missing = no face, 00005 truncated, 00008 beyond the last
  line, line 1 is -5, line 6 is a bad line), 7-25-64x48_left and _right (one video, two people;
  one crop is 96 px and gets resized), 99-30-64x48 (no crop folder).
  Validation: video5 (no raw video, crops in cropped_aligned_new_50_vids).
dummy_data/abaw2020/: annotations/VA_Set/{Training_Set,Validation_Set,Test_Set}/ with crops
(Validation_Set/112.txt without its header line).

Crops are synthetic faces (vaflax.data.synthetic_faces) whose background colour encodes the
frame number (red channel = 30 * k), so the test can check that record i shows frame i.
Audio of 7-25-64x48: a 1 kHz tone of amplitude 0.1 during frames 0-2 and 0.4 during 3-11.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
from PIL import Image

from vaflax.data import synthetic_faces as sf
from vaflax.data import video_io

OUT = os.path.join(os.path.dirname(__file__), 'dummy_data')
SR = 16000


def crop(seed, k, size=112):
  ident = sf.sample_identity(np.random.default_rng(seed))
  f, _ = sf.render_frame(ident, 0.2, 0.1, np.array([0.5, 0.55, 1.1, 0.0, 0.0]), size)
  f = f.copy()
  f[:6, :, :] = (min(255, 30 * k), 0, 0)  # frame number in the top strip's red channel
  return f


def write_crops(folder, seed, frames, *, truncate=(), size=None):
  os.makedirs(folder, exist_ok=True)
  for k in frames:
    path = os.path.join(folder, f'{k:05d}.jpg')
    Image.fromarray(crop(seed, k, (size or {}).get(k, 112))).save(path, quality=75)
    if k in truncate:
      data = open(path, 'rb').read()
      open(path, 'wb').write(data[: len(data) // 3])


def write_txt(path, lines, header='valence,arousal'):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write('\n'.join(([header] if header else []) + lines) + '\n')


def tone(amplitudes, fps):
  """1 kHz tone whose amplitude is amplitudes[k] during frame k."""
  n = int(round(len(amplitudes) * SR / fps))
  t = np.arange(n) / SR
  amp = np.asarray(amplitudes)[np.minimum((t * fps).astype(int), len(amplitudes) - 1)]
  return (amp * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)


def video(path, n, fps, amplitudes):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  frames = np.full((n, 48, 64, 3), 90, np.uint8)
  video_io.write_mp4(path, frames, fps, audio=tone(amplitudes, fps), sample_rate=SR)


def abaw6():
  root = os.path.join(OUT, 'abaw6', 'Aff-Wild2')
  ann = os.path.join(root, '6th ABAW Annotations', 'VA_Estimation_Challenge')
  write_txt(os.path.join(ann, 'Train_Set', '1-30-64x48.txt'),
            ['-5,-5', '0.183,0.241', '0.175,0.233', '0.170,0.230', '-0.5,0.9', '0.3', '0.1,-5'])
  write_txt(os.path.join(ann, 'Train_Set', '7-25-64x48_left.txt'),
            [f'{0.1 * k:.1f},{-0.05 * k:.2f}' for k in range(6)])
  write_txt(os.path.join(ann, 'Train_Set', '7-25-64x48_right.txt'),
            [f'{-0.1 * k:.1f},{0.05 * k:.2f}' for k in range(4)])
  write_txt(os.path.join(ann, 'Train_Set', '99-30-64x48.txt'), ['0.1,0.1'])
  write_txt(os.path.join(ann, 'Validation_Set', 'video5.txt'), ['0.9,-0.9', '0.8,-0.8'])
  # Sibling task folder and an older edition: neither may be read.
  write_txt(os.path.join(root, '6th ABAW Annotations', 'EXPR_Recognition_Challenge', 'Train_Set',
                         '1-30-64x48.txt'), ['1', '2'], header='Neutral,Anger')
  old = os.path.join(root, '5th_ABAW_Annotations', 'VA_Estimation_Challenge')
  write_txt(os.path.join(old, 'Train_Set', '1-30-64x48.txt'), ['0.0,0.0'])
  write_txt(os.path.join(old, 'Validation_Set', 'video5.txt'), ['0.0,0.0'])

  crops = os.path.join(root, 'cropped_aligned')
  write_crops(os.path.join(crops, '1-30-64x48'), 4, [1, 2, 4, 5, 6, 7, 8], truncate=(5,))
  write_crops(os.path.join(crops, '7-25-64x48_left'), 5, range(1, 7), size={2: 96})
  write_crops(os.path.join(crops, '7-25-64x48_right'), 9, range(1, 5))
  write_crops(os.path.join(root, 'cropped_aligned_new_50_vids', 'video5'), 10, [1, 2])
  video(os.path.join(root, 'batch1', '1-30-64x48.mp4'), 7, 30, [0.3] * 7)
  video(os.path.join(root, 'batch2', '7-25-64x48.mp4'), 12, 25, [0.1] * 3 + [0.4] * 9)


def abaw2020():
  root = os.path.join(OUT, 'abaw2020')
  ann = os.path.join(root, 'annotations', 'VA_Set')
  write_txt(os.path.join(ann, 'Training_Set', 'video10_1_left.txt'), ['0.5,0.5', '0.4,0.4'])
  write_txt(os.path.join(ann, 'Validation_Set', '112.txt'), ['-0.2,0.3'], header=None)
  write_txt(os.path.join(ann, 'Test_Set', '288.txt'), ['0.7,0.1'])
  crops = os.path.join(root, 'cropped_aligned')
  write_crops(os.path.join(crops, 'video10_1_left'), 4, [1, 2])
  write_crops(os.path.join(crops, '112'), 5, [1])
  write_crops(os.path.join(crops, '288'), 9, [1])


def main():
  shutil.rmtree(OUT, ignore_errors=True)
  abaw6()
  abaw2020()
  total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
  print(f'wrote {OUT} ({total / 1024:.0f} KiB)')


if __name__ == '__main__':
  main()
