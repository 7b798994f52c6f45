"""Writes dummy_data/ for omg_emotion in the real layout (prepare_data.py's cut utterances).

  python -m tfds_builders.omg_emotion.make_dummy_data

Faces are drawn with vaflax.data.synthetic_faces (identities whose drawn face OpenCV's Haar
cascade finds in every frame), 64 px, on a 96x64 frame whose other 32 columns are a green marker
strip; audio is a sine whose frequency tells the videos apart. Bad items: a row with a wrong
field count, a row without any valid label, a row with arousal NaN, a missing utterance, a
zero-byte and a truncated mp4, and frames without a face.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from vaflax.data import synthetic_faces as sf
from vaflax.data import video_io

OUT = os.path.join(os.path.dirname(__file__), 'dummy_data')
SR = 16000
GREEN = (0, 220, 0)
HEADER = 'link,start,end,video,utterance,arousal,valence,EmotionMaxVote\n'
# Synthetic identities (seeds) whose faces the default Haar cascade detects in every frame at
# 64 px, also after libx264 compression (checked when this script was written).
FACE_SEEDS = (4, 5, 9, 10)


def face_frames(seed, n, *, left=True, blank=()):
  """n frames 64x96: the face in the left (or right) 64 columns, a green strip in the rest."""
  rng = np.random.default_rng(seed)
  ident = sf.sample_identity(rng)
  out = np.zeros((n, 64, 96, 3), np.uint8)
  for t in range(n):
    out[t] = GREEN
    x0 = 0 if left else 32
    if t in blank:  # background only: no face
      g = np.linspace(0, 1, 64)[:, None, None]
      out[t, :, x0 : x0 + 64] = ((1 - g) * np.array(ident.background) + g * 80).astype(np.uint8)
      continue
    f, _ = sf.render_frame(ident, 0.6 * np.sin(t / 3), 0.6 * np.cos(t / 4),
                           np.array([0.5, 0.5, 1.0, 0.0, 0.0]), 64)
    out[t, :, x0 : x0 + 64] = f
  return out


def tone(freq, seconds, amp=0.5):
  t = np.arange(int(round(seconds * SR))) / SR
  return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write(rel, frames, fps, audio=None):
  path = os.path.join(OUT, 'omg_videos', rel)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  video_io.write_mp4(path, frames, fps, audio=audio, sample_rate=SR)
  return path


def row(vid, utt, a, v, e, start=0.0, end=1.0):
  return f'https://www.youtube.com/watch?v=x{vid[:10]},{start},{end},{vid},{utt},{a},{v},{e}\n'


def main():
  shutil.rmtree(OUT, ignore_errors=True)
  ann = os.path.join(OUT, 'OMGEmotionChallenge')
  os.makedirs(ann)
  # Train.
  write('5b44393ed/utterance_1.mp4', face_frames(4, 12, left=True), 25, tone(440, 12 / 25))
  write('5b44393ed/utterance_3.mp4', face_frames(5, 15, left=False, blank=(12, 13, 14)), 30,
        tone(880, 15 / 30))
  # An utterance only present as the full YouTube video: no face in the first 0.4 s, so a wrong
  # cut shows up as skipped frames; the audio switches from 220 Hz to 660 Hz at the cut.
  full = face_frames(9, 25, left=True, blank=range(10))
  write('youtube_videos_temp/9a1c0e77b.mp4', full, 25,
        np.concatenate([tone(220, 0.4), tone(660, 0.6)]))
  write('2f0d6c1aa_1/utterance_1.mp4', face_frames(10, 8, left=False), 25, tone(330, 8 / 25))
  bad = write('7e3b2d901/utterance_2.mp4', face_frames(4, 8), 25, tone(440, 8 / 25))
  with open(bad, 'rb') as f:
    data = f.read()
  with open(bad, 'wb') as f:
    f.write(data[: len(data) // 2])  # truncated download
  open(os.path.join(os.path.dirname(bad), 'utterance_1.mp4'), 'wb').close()  # zero-byte
  with open(os.path.join(ann, 'omg_TrainVideos.csv'), 'w') as f:
    f.write(HEADER)
    f.write(row('5b44393ed', 'utterance_1.mp4', 0.75, -0.5, 3))
    f.write(row('5b44393ed', 'utterance_3.mp4', 0.2, 0.3, 5))
    f.write(row('c0ffee123', 'utterance_5.mp4', 0.4, 0.1, 4))  # video never downloaded
    f.write('https://www.youtube.com/watch?v=xyz,0.0,1.0,5b44393ed,utterance_9.mp4,0.5\n')
    f.write(row('9a1c0e77b', 'utterance_2.mp4', 0.5, 0.9, 6, start=0.4, end=0.8))
    f.write(row('7e3b2d901', 'utterance_1.mp4', 0.1, 0.1, 0))  # zero-byte file
    f.write(row('7e3b2d901', 'utterance_2.mp4', 0.1, 0.1, 0))  # truncated file
    f.write(row('2f0d6c1aa_1', 'utterance_1.mp4', 'nan', 0.1, 2))  # arousal missing
    f.write(row('2f0d6c1aa_1', 'utterance_7.mp4', 1.7, 'nan', 9))  # nothing valid
  # Validation and test (the test csv with labels, released after the challenge).
  write('b7d2e4f60/utterance_1.mp4', face_frames(5, 8, left=True), 25, tone(550, 8 / 25))
  write('e1a9f3c27/utterance_2.mp4', face_frames(10, 8, left=True), 25, tone(770, 8 / 25))
  with open(os.path.join(ann, 'omg_ValidationVideos.csv'), 'w') as f:
    f.write(HEADER + row('b7d2e4f60', 'utterance_1.mp4', 0.9, 0.8, 3))
  with open(os.path.join(ann, 'omg_TestVideos_WithLabels.csv'), 'w') as f:
    f.write(HEADER + row('e1a9f3c27', 'utterance_2.mp4', 0.0, -1.0, 1))
  with open(os.path.join(ann, 'omg_TestVideos_WithoutLabels.csv'), 'w') as f:
    f.write('link,start,end,video,utterance\n')
    f.write('https://www.youtube.com/watch?v=xe1a9f3c27,0.0,1.0,e1a9f3c27,utterance_2.mp4\n')
  # Per-annotator folders are named like the videos (directories, not mp4 files).
  det = os.path.join(ann, 'DetailedAnnotation', 'Train', '5b44393ed', 'utterance_1.mp4')
  os.makedirs(det)
  with open(os.path.join(det, '1.txt'), 'w') as f:
    f.write('arousal,valence,emotion\n45.5,24.7,Neutral\n')


if __name__ == '__main__':
  main()
