"""The frames of one input, streamed: an image, or a video through vaflax.data.video_io."""

from __future__ import annotations

import os

import numpy as np

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')
VIDEO_EXTS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg', '.wmv', '.flv',
              '.3gp', '.ts')


class InputError(Exception):
  """An input that cannot be read; the message names the file."""


def read_image(path) -> np.ndarray:
  from PIL import Image, ImageOps, UnidentifiedImageError  # noqa: PLC0415

  try:
    with Image.open(path) as im:
      return np.asarray(ImageOps.exif_transpose(im).convert('RGB'))
  except (UnidentifiedImageError, OSError, ValueError) as e:
    raise InputError(f'{path}: cannot read as an image ({type(e).__name__}: {e})') from None


class ImageFrames:
  """One image as a one-frame stream."""

  kind = 'image'
  fps = duration = warning = None
  num_frames = decoded = 1

  def __init__(self, path):
    self._rgb = read_image(path)

  def __iter__(self):
    yield 0, 0.0, self._rgb

  def close(self):
    pass


class VideoFrames:
  """(index, time_s, rgb uint8 HxWx3) of every `stride`-th decoded frame; index in decoding
  order, time from the container's start. A video that breaks after its first frame keeps the
  frames before the break and says where in `warning`, as does one that ends before its
  declared frame count."""

  kind = 'video'

  def __init__(self, path, stride: int = 1):
    import av  # noqa: PLC0415

    from vaflax.data import video_io  # noqa: PLC0415

    self.path, self.stride = os.fspath(path), stride
    try:
      self._video = video_io.Video(self.path)
    except (av.error.FFmpegError, OSError, ValueError) as e:
      raise InputError(f'{path}: cannot open as a video ({type(e).__name__}: {e})') from None
    self.fps, self.num_frames = self._video.fps, self._video.num_frames
    self.duration = self._video.duration
    self.warning = None

  @property
  def decoded(self) -> int:
    return self._video.decoded

  def __iter__(self):
    import av  # noqa: PLC0415

    i = -1
    try:
      for i, (t, frame) in enumerate(self._video.frames()):
        if i % self.stride:
          continue
        t = t if t is not None else i / (self.fps or 1.0)
        yield i, float(t), frame.to_ndarray(format='rgb24')
    except (av.error.FFmpegError, OSError, ValueError) as e:
      if i <= 0:
        raise InputError(f'{self.path}: cannot decode ({type(e).__name__}: {e})') from None
      self.warning = (f'decoding stopped after frame {i} ({type(e).__name__}: {e}); earlier '
                      'frames kept')
      return
    if self._video.truncated:
      self.warning = (f'decoded {self.decoded} of the {self.num_frames} frames the container '
                      'declares: the file is probably truncated; the decoded frames are kept')

  def close(self):
    self._video.close()


def open_input(path, stride: int = 1) -> ImageFrames | VideoFrames:
  """The frame stream of an image (by its extension) or a video (anything else)."""
  is_image = os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTS
  what = 'cannot read as an image' if is_image else 'cannot open as a video'
  try:
    size = os.path.getsize(path)
  except OSError as e:
    raise InputError(f'{path}: {what} ({type(e).__name__}: {e.strerror})') from None
  if size == 0:
    raise InputError(f'{path}: {what} (empty file, 0 bytes)')
  if is_image:
    return ImageFrames(path)
  return VideoFrames(path, stride)
