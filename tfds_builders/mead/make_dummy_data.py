"""Writes dummy_data/ for mead in the per-actor layout (datasets.md section 7).

  python -m tfds_builders.mead.make_dummy_data

Clips are 12 frames at 30 fps of synthetic faces (vaflax.data.synthetic_faces identities that
OpenCV's Haar cascade detects in every frame), 64x96 with a green marker strip. Actors M005,
W011 and M012 fall in the train, validation and test pseudo-splits. Covered: a separate .m4a
audio file (660 Hz, the video's own track is 440 Hz), audio only in the video, no audio at all,
two views, the 'surprise' spelling, contempt (no VA point), a faceless frame, an unknown emotion
folder, a clip outside the level_<k> layout and a truncated mp4.
"""

from __future__ import annotations

import os
import shutil

import av
import numpy as np

from tfds_builders.omg_emotion.make_dummy_data import face_frames, tone
from vaflax.data import video_io

OUT = os.path.join(os.path.dirname(__file__), 'dummy_data')
SR = 16000
N, FPS = 12, 30


def video(rel, seed, *, freq=None, blank=(), left=True):
  path = os.path.join(OUT, 'MEAD', rel)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  audio = tone(freq, N / FPS) if freq else None
  video_io.write_mp4(path, face_frames(seed, N, left=left, blank=blank), FPS, audio=audio,
                     sample_rate=SR)
  return path


def m4a(rel, freq):
  path = os.path.join(OUT, 'MEAD', rel)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  wav = tone(freq, N / FPS).reshape(1, -1)
  with av.open(path, 'w', format='ipod') as out:
    s = out.add_stream('aac', rate=SR, layout='mono')
    n = s.codec_context.frame_size or 1024
    for i in range(0, wav.shape[1], n):
      f = av.AudioFrame.from_ndarray(np.ascontiguousarray(wav[:, i : i + n]), format='fltp',
                                     layout='mono')
      f.sample_rate, f.pts = SR, i
      for p in s.encode(f):
        out.mux(p)
    for p in s.encode():
      out.mux(p)


def main():
  shutil.rmtree(OUT, ignore_errors=True)
  # Train actor.
  video('M005/video/front/angry/level_1/001.mp4', 4, freq=440)
  m4a('M005/audio/angry/level_1/001.m4a', 660)
  video('M005/video/left_30/angry/level_1/001.mp4', 5, freq=440, left=False)
  video('M005/video/front/neutral/level_1/001.mp4', 9, freq=330, blank=(5,))
  video('M005/video/front/contempt/level_2/003.mp4', 10, freq=440, left=False)
  bad = video('M005/video/front/sad/level_1/002.mp4', 4, freq=440)
  with open(bad, 'rb') as f:
    data = f.read()
  with open(bad, 'wb') as f:
    f.write(data[: len(data) // 2])
  for rel in ('M005/video/front/bored/level_1/001.mp4', 'M005/video/front/sad/001.mp4'):
    os.makedirs(os.path.dirname(os.path.join(OUT, 'MEAD', rel)), exist_ok=True)
    open(os.path.join(OUT, 'MEAD', rel), 'wb').close()
  # Validation and test actors.
  video('W011/video/front/happy/level_3/002.mp4', 5, freq=440, left=False)
  m4a('W011/audio/happy/level_3/002.m4a', 550)
  video('M012/video/front/surprised/level_2/001.mp4', 10)  # no audio anywhere
  video('M012/video/down/surprise/level_1/004.mp4', 4)


if __name__ == '__main__':
  main()
