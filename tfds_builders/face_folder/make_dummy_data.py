"""Writes dummy_data/: a user's folder of photos and videos with faces OpenCV's Haar finds.

  python -m tfds_builders.face_folder.make_dummy_data

Faces are windows of skimage's astronaut photo (a real face), shifted, scaled and mirrored;
FACES gives where each face is, mapped from the astronaut's Haar box (177, 66, 95, 95). The group
photo holds two astronauts of different sizes. The video has 20 frames of a slowly moving face,
frames 10 and 11 show only background. Bad and odd items: a gradient photo without a face, a
truncated JPEG, a zero-byte .mp4, a notes.txt and a hidden folder (ignored).
"""

from __future__ import annotations

import io
import os
import shutil

import av
import cv2
import numpy as np
import skimage.data
from PIL import Image

HERE = os.path.dirname(__file__)
OUT = os.path.join(HERE, 'dummy_data')
ASTRONAUT_BOX = (177, 66, 95, 95)
VIDEO = 'clips/talk.mp4'
VIDEO_FRAMES = 20
VIDEO_BLANK = (10, 11)


def window(x0, y0, side, out, mirror=False):
  """The astronaut window [y0:y0+side, x0:x0+side] at out x out px and where its face lands."""
  win = skimage.data.astronaut()[y0 : y0 + side, x0 : x0 + side]
  x, y, w, h = ASTRONAUT_BOX
  if mirror:
    win, x = win[:, ::-1], 2 * x0 + side - x - w
  s = out / side
  img = cv2.resize(np.ascontiguousarray(win), (out, out), interpolation=cv2.INTER_AREA)
  return img, ((x - x0) * s, (y - y0) * s, w * s, h * s)


def group_photo():
  big, bbox = window(130, 20, 190, 100)
  small, sbox = window(130, 20, 190, 70)
  img = np.full((100, 180, 3), 210, np.uint8)
  img[:, :100] = big
  img[15:85, 105:175] = small
  return img, [bbox, (sbox[0] + 105, sbox[1] + 15, sbox[2], sbox[3])]


def video_frames():
  frames, boxes = [], []
  for t in range(VIDEO_FRAMES):
    img, box = window(125 + t, 20, 190, 96)
    if t in VIDEO_BLANK:
      img = np.full_like(img, 180)
      box = None
    frames.append(img)
    boxes.append(box)
  return np.stack(frames), boxes


def write_mp4(path, frames, fps=25):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with av.open(path, 'w') as out:
    vs = out.add_stream('libx264', rate=fps)
    vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], 'yuv420p'
    vs.options = {'crf': '26', 'preset': 'veryslow'}
    for f in frames:
      for p in vs.encode(av.VideoFrame.from_ndarray(f, format='rgb24')):
        out.mux(p)
    for p in vs.encode():
      out.mux(p)


def encode(img, fmt='JPEG') -> bytes:
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format=fmt, **({'quality': 85} if fmt == 'JPEG' else {}))
  return buf.getvalue()


def write(rel, data: bytes):
  path = os.path.join(OUT, rel)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(data)


A1, A1_BOX = window(130, 20, 190, 100)
A2, A2_BOX = window(110, 10, 220, 110, mirror=True)
GROUP, GROUP_BOXES = group_photo()
# Relative path -> expected face boxes (largest first) of the photos with faces.
FACES = {'holiday/astro.jpg': [A1_BOX], 'holiday/group.jpg': GROUP_BOXES,
         'holiday/mirror.png': [A2_BOX]}


def main():
  shutil.rmtree(OUT, ignore_errors=True)
  write('holiday/astro.jpg', encode(A1))
  write('holiday/mirror.png', encode(A2, 'PNG'))
  write('holiday/group.jpg', encode(GROUP))
  g = np.linspace(40, 220, 100, dtype=np.uint8)
  write('wall.jpg', encode(np.stack([np.tile(g[None], (80, 1))] * 3, -1)))  # no face
  data = encode(A1)
  write('broken.jpg', data[: len(data) // 3])
  write('notes.txt', b'holiday photos\n')
  write('.thumbnails/astro.jpg', encode(A1))
  write('clips/empty.mp4', b'')
  write_mp4(os.path.join(OUT, VIDEO), video_frames()[0])


if __name__ == '__main__':
  main()
