"""The frames of one input, streamed: an image (vaflax.media, the one image reader), or a video
through vaflax.data.video_io. Both hold to the pixel limit (`max_pixels`, vaflax/media.py)."""

from __future__ import annotations

import os

from vaflax.media import IMAGE_EXTS, MAX_PIXELS, VIDEO_EXTS, InputError, check_pixels, read_image

__all__ = ['IMAGE_EXTS', 'VIDEO_EXTS', 'ImageFrames', 'InputError', 'VideoFrames', 'open_input',
           'read_image']


class ImageFrames:
  """One image as a one-frame stream."""

  kind = 'image'
  fps = duration = warning = None
  num_frames = decoded = 1

  def __init__(self, path, max_pixels: int = MAX_PIXELS):
    self._rgb = read_image(path, max_pixels)

  def __iter__(self):
    yield 0, 0.0, self._rgb

  def close(self):
    pass


class VideoFrames:
  """(index, time_s, rgb uint8 HxWx3) of every `stride`-th decoded frame; index in decoding
  order, time from the container's start. A video that breaks after its first frame keeps the
  frames before the break and says where in `warning`, as does one that ends before its
  declared frame count. A frame over `max_pixels` is not decoded to RGB: at the first frame the
  video is an InputError, later (the size changed mid-stream) decoding stops there."""

  kind = 'video'

  def __init__(self, path, stride: int = 1, max_pixels: int = MAX_PIXELS):
    import av  # noqa: PLC0415

    from vaflax.data import video_io  # noqa: PLC0415

    self.path, self.stride, self.max_pixels = os.fspath(path), stride, max_pixels
    try:
      self._video = video_io.Video(self.path)
    except (av.error.FFmpegError, OSError, ValueError) as e:
      raise InputError(f'{path}: cannot open as a video ({type(e).__name__}: {e})') from None
    ctx = self._video.stream.codec_context
    try:
      check_pixels(path, ctx.width or 0, ctx.height or 0, max_pixels, 'cannot open as a video')
    except InputError:
      self._video.close()
      raise
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
        if frame.width * frame.height > self.max_pixels:
          check_pixels(self.path, frame.width, frame.height, self.max_pixels,
                       f'frame {i} cannot be decoded')
        t = t if t is not None else i / (self.fps or 1.0)
        yield i, float(t), frame.to_ndarray(format='rgb24')
    except (av.error.FFmpegError, OSError, ValueError, InputError) as e:
      if i <= 0 and isinstance(e, InputError):
        raise
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


def open_input(path, stride: int = 1, max_pixels: int = MAX_PIXELS) -> ImageFrames | VideoFrames:
  """The frame stream of an image (by its extension) or a video (anything else); images and
  frames over `max_pixels` (vaflax/media.py) are InputErrors."""
  is_image = os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTS
  what = 'cannot read as an image' if is_image else 'cannot open as a video'
  try:
    size = os.path.getsize(path)
  except OSError as e:
    raise InputError(f'{path}: {what} ({type(e).__name__}: {e.strerror})') from None
  if size == 0:
    raise InputError(f'{path}: {what} (empty file, 0 bytes)')
  if is_image:
    return ImageFrames(path, max_pixels)
  return VideoFrames(path, stride, max_pixels)
