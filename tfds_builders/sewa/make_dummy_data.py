"""Writes dummy_data/ for sewa in the AVEC CES layout (labels/, audio/, video/).

  python -m tfds_builders.sewa.make_dummy_data

Recordings (96x64 frames, a 64 px synthetic face from vaflax.data.synthetic_faces in the middle,
chosen identities OpenCV's Haar cascade finds):
  Train_DE_01  20 fps .avi (mpeg4) without sound + audio/Train_DE_01.wav (8 kHz: resampled);
               no face in source frames 0-1 (grid frame 0: before any detection) and 6-9
               (grid frames 3-4: the last box is held); labels with a header, one arousal NaN,
               one row with a wrong field count, two rows after the end of the video.
  Train_HU_01  25 fps .mp4 with its own audio track, labels without a header row.
  Train_DE_02  labels only (no video: skipped).
  Devel_DE_01  25 fps .mp4, labels with a header.
The audio is a 1 kHz tone of amplitude 0.1 before 0.5 s and 0.4 after it.
"""

from __future__ import annotations

import os
import shutil
import wave

import numpy as np

from vaflax.data import synthetic_faces as sf
from vaflax.data import video_io

OUT = os.path.join(os.path.dirname(__file__), 'dummy_data', 'avec2019')
SR = 16000


def frames(seed, n, blank=()):
  ident = sf.sample_identity(np.random.default_rng(seed))
  out = np.zeros((n, 64, 96, 3), np.uint8)
  out[:] = ident.background
  for t in range(n):
    if t in blank:
      continue
    f, _ = sf.render_frame(ident, 0.6 * np.sin(t / 3), 0.6 * np.cos(t / 4),
                           np.array([0.5, 0.5, 1.0, 0.0, 0.0]), 64)
    out[t, :, 16:80] = f
  return out


def tone(seconds, sr=SR):
  t = np.arange(int(round(seconds * sr))) / sr
  amp = np.where(t < 0.5, 0.1, 0.4)
  return (amp * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)


def write_wav(path, samples, sr):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pcm = np.round(np.clip(samples, -1, 1) * 32767).astype('<i2')
  with wave.open(path, 'wb') as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(sr)
    w.writeframes(pcm.tobytes())


def write_labels(name, rows, header=True):
  path = os.path.join(OUT, 'labels', f'{name}.csv')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    if header:
      f.write('name;timestamp;arousal;valence;liking\n')
    for r in rows:
      f.write(r + '\n')


def rows(name, n, a0, v0):
  return [f"'{name}';{k / 10:.6f};{a0 + 0.01 * k:.6f};{v0 - 0.02 * k:.6f};{0.05 * k:.6f}"
          for k in range(n)]


def main():
  shutil.rmtree(os.path.dirname(OUT), ignore_errors=True)
  video_dir = os.path.join(OUT, 'video')
  os.makedirs(video_dir)
  # Train_DE_01: 1.5 s at 20 fps -> grid frames 0..14.
  video_io.write_mp4(os.path.join(video_dir, 'Train_DE_01.avi'),
                     frames(4, 30, blank=(0, 1, 6, 7, 8, 9)), 20, codec='mpeg4')
  write_wav(os.path.join(OUT, 'audio', 'Train_DE_01.wav'), tone(1.5, 8000), 8000)
  r = rows('Train_DE_01', 17, -0.3, 0.5)
  r[7] = "'Train_DE_01';0.700000;nan;0.2;0.1"
  r[9] = "'Train_DE_01';0.900000;0.1"
  write_labels('Train_DE_01', r)
  # Train_HU_01: 0.8 s at 25 fps with the audio inside the mp4; no header row.
  video_io.write_mp4(os.path.join(video_dir, 'Train_HU_01.mp4'), frames(5, 20), 25,
                     audio=tone(0.8), sample_rate=SR)
  write_labels('Train_HU_01', rows('Train_HU_01', 8, 0.2, -0.1), header=False)
  write_labels('Train_DE_02', rows('Train_DE_02', 3, 0.0, 0.0))
  video_io.write_mp4(os.path.join(video_dir, 'Devel_DE_01.mp4'), frames(9, 15), 25,
                     audio=tone(0.6), sample_rate=SR)
  write_labels('Devel_DE_01', rows('Devel_DE_01', 6, 0.4, 0.4))
  total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
  print(f'wrote {OUT} ({total / 1024:.0f} KiB)')


if __name__ == '__main__':
  main()
