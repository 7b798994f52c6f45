"""Streamed video/audio decoding (PyAV) and face frames for the video-dataset builders.

Used by omg_emotion, mead and celebv_hq. Frames are put on a fixed-rate grid: frame k of a clip
is the source frame nearest in time to `clip_start + k / fps`, so every builder emits frames at
its metadata fps whatever the source rate, and the audio chunk of frame k is exactly the
interval [k / fps, (k + 1) / fps) of the clip, `sample_rate // fps` mono samples.

Times are seconds on the container's timeline counted from the container's start time (what
`ffmpeg -ss` means), so video and audio stay in sync when their streams start at different
timestamps.
"""

from __future__ import annotations

import dataclasses
import fractions
import os
from collections.abc import Iterator

import av
import cv2
import numpy as np

from vaflax import faces
from vaflax.data import builder_utils as bu


def _origin(container) -> float:
  st = container.start_time  # microseconds (AV_TIME_BASE) or None
  return float(st) / 1e6 if st is not None else 0.0


def _seek(container, stream, start: float) -> None:
  if start > 0 and stream.time_base is not None:
    target = start + _origin(container)
    container.seek(max(0, int(target / stream.time_base)), stream=stream, backward=True)


@dataclasses.dataclass(frozen=True)
class Audio:
  """Mono waveform whose sample 0 sits at time `t0` (seconds on the container timeline)."""

  samples: np.ndarray  # float32 (N,)
  sample_rate: int
  t0: float

  def chunk(self, t: float, n: int) -> tuple[np.ndarray, float]:
    """n samples from time t (zero-padded outside the decoded audio) and the covered fraction."""
    i0 = int(round((t - self.t0) * self.sample_rate))
    out = np.zeros((n,), np.float32)
    a, b = max(i0, 0), min(i0 + n, len(self.samples))
    if b > a:
      out[a - i0 : b - i0] = self.samples[a:b]
    return out, max(0, b - a) / n


def read_audio(path, *, sample_rate: int, start: float = 0.0, end: float | None = None
               ) -> Audio | None:
  """Decodes the first audio stream of [start, end] to mono float32; None if there is none."""
  with av.open(os.fspath(path)) as container:
    if not container.streams.audio:
      return None
    stream = container.streams.audio[0]
    origin = _origin(container)
    # Seek well before `start`: audio packets need not begin exactly there; Audio.t0 records
    # where the decoded samples really begin.
    _seek(container, stream, start - 0.5)
    resampler = av.AudioResampler(format='flt', layout='mono', rate=sample_rate)
    parts, t0 = [], None
    for frame in container.decode(stream):
      if frame.time is None:
        continue
      t = frame.time - origin
      if end is not None and t > end + 1.0:
        break
      if t0 is None:
        t0 = t
      for out in resampler.resample(frame):
        parts.append(out.to_ndarray().reshape(-1))
    for out in resampler.resample(None):
      parts.append(out.to_ndarray().reshape(-1))
  if t0 is None:
    return None
  samples = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0,), np.float32)
  return Audio(samples, sample_rate, t0)


NO_VIDEO_STREAM = 'no video stream'  # the ValueError of a file without one


class Video:
  """A video file opened for streamed decoding: the one PyAV decoding path of the builders
  (`iter_frames`) and predict (vaflax/predict/decode.py).

  Raises av.error.FFmpegError or OSError when the file cannot be opened, ValueError when it has
  no video stream. After `frames()` has run out, `decoded` counts the frames it gave and
  `truncated` says whether fewer came than the container declares (data cut short: FFmpeg
  just stops).
  """

  def __init__(self, path, live: bool = False):
    self.path = os.fspath(path)
    self.container = _open_live(self.path) if live else av.open(self.path)
    if not self.container.streams.video:
      self.container.close()
      raise ValueError(NO_VIDEO_STREAM)
    self.stream = self.container.streams.video[0]
    # Frame and slice threads: FFmpeg's H.264 decoder is bit-exact whatever the thread timing
    # (30 decodes of the predict test video under CPU contention gave identical frames). Frame
    # threads hold back one frame per thread: a live stream gets slice threads only.
    self.stream.thread_type = 'SLICE' if live else 'AUTO'
    self.origin = _origin(self.container)
    self.fps = float(self.stream.average_rate or self.stream.guessed_rate or 0.0) or None
    self.num_frames = int(self.stream.frames or 0) or None
    s = self.stream
    dur = s.duration * s.time_base if s.duration is not None else (
        self.container.duration / 1e6 if self.container.duration else None)
    self.duration = float(dur) if dur is not None else None
    self.decoded = 0

  def seek(self, start: float) -> None:
    _seek(self.container, self.stream, start)

  @property
  def first_frame_time(self) -> float:
    """When the video stream starts on the container timeline, from the container's start (0
    when the stream does not say): the time of annotation frame 1 (Aff-Wild2's builder)."""
    s = self.stream
    if s.start_time is None or s.time_base is None:
      return 0.0
    return float(s.start_time * s.time_base) - self.origin

  def frames(self) -> Iterator[tuple[float | None, av.VideoFrame]]:
    """(time, frame) in decoding order; time on the container timeline, None if unknown.

    The two meanings of "frame k" in vaflax both come from here: predict, face_folder and
    Aff-Wild2 count frames in decoding order (`enumerate(frames())`); the builders of
    datasets labelled per time sample them on a fixed-rate time grid (`iter_frames`)."""
    for frame in self.container.decode(self.stream):
      self.decoded += 1
      yield (frame.time - self.origin if frame.time is not None else None), frame

  @property
  def truncated(self) -> bool:
    return bool(self.num_frames) and self.decoded < self.num_frames

  def close(self) -> None:
    self.container.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


# Live sources (vaflax/predict/live.py): FFmpeg probes 5 MB or 5 s of a stream before its first
# frame (a whole short clip on a pipe); 128 kB and 0.5 s find an H.264 stream's parameters in
# MPEG-TS and Matroska at once. Network reads time out instead of blocking for ever.
LIVE_OPTIONS = {'probesize': '131072', 'analyzeduration': '500000'}
LIVE_TIMEOUT_S = (20.0, 10.0)  # (open, each read) of a URL


def _open_live(path: str):
  """The container of a live source (vaflax/predict/decode.py `is_live`): '-' is stdin, through
  FFmpeg's pipe protocol; /dev/video* a camera, through v4l2 (Linux); anything else (a URL,
  /dev/stdin, a named pipe) as FFmpeg opens it."""
  if path == '-':
    return av.open('pipe:0', options=LIVE_OPTIONS)
  if path.startswith('/dev/video'):
    return av.open(path, format='v4l2', options=LIVE_OPTIONS)
  return av.open(path, options=LIVE_OPTIONS, timeout=LIVE_TIMEOUT_S)


def iter_frames(path, *, fps: float, start: float | None = None, end: float | None = None,
                stride: int = 1, ended: dict | None = None
                ) -> Iterator[tuple[int, float, np.ndarray]]:
  """Yields (k, time, rgb uint8 HxWx3) for grid frames k = 0, stride, 2*stride, ... of a clip.

  `time` is the grid time on the container timeline; the clip time of frame k is k / fps.

  The clip starts at `start` (default: the first decoded frame) and ends at `end` (default: the
  end of the stream). Decoding streams: at most two source frames are held at a time.
  `ended`, when given, receives {'truncated', 'decoded', 'declared'} once the stream ran out
  before `end`: truncated is True when fewer frames decoded than the container declares.
  """
  with Video(path) as video:
    half = 0.5 / (video.fps or fps)  # half a source frame: the time span a frame stands for
    if start is not None:
      video.seek(start)
    t0 = start
    k = 0
    prev = None  # (time, av.VideoFrame)
    stop = np.inf if end is None else end

    def grid(k):
      return t0 + k / fps

    for t, frame in video.frames():
      if t is None:
        continue
      if t0 is None:
        t0 = t
      if prev is not None:
        # Every grid time before the midpoint between prev and this frame is nearest to prev.
        mid = min(0.5 * (prev[0] + t), stop)
        while grid(k) < mid:
          if grid(k) >= prev[0] - half and k % stride == 0:
            yield k, grid(k), prev[1].to_ndarray(format='rgb24')
          k += 1
      prev = (t, frame)
      if t >= stop:
        break
    else:
      if ended is not None:
        ended.update(_ran_out(video, start, stop, prev, half))
    if prev is not None:
      last = min(prev[0] + half, stop)
      while grid(k) < last:
        if grid(k) >= prev[0] - half and k % stride == 0:
          yield k, grid(k), prev[1].to_ndarray(format='rgb24')
        k += 1


def _ran_out(video: Video, start, stop, prev, half) -> dict:
  """Whether a stream that ran out before `stop` ended early. From the start of the file the
  decoded frames are counted against the declared ones; after a seek (their count then starts
  mid-file) the last frame's time is compared with the declared duration, to 1.5 frames."""
  declared = video.num_frames or 0
  if start is None:
    return {'truncated': video.truncated, 'decoded': video.decoded, 'declared': declared}
  dur = min(video.duration or 0.0, stop)
  last = prev[0] if prev is not None else start
  fps = 0.5 / half
  short = bool(video.duration) and last + 1.5 / fps < dur
  return {'truncated': short, 'decoded': int(round((last - start) * fps)) + (prev is not None),
          'declared': int(round((dur - start) * fps))}


def add_video_stream(container, fps: float, width: int, height: int, *, codec: str = 'libx264',
                     crf: int = 18, preset: str = 'veryslow'):
  """A yuv420p video stream of `container` (opened for writing); feed it with `encode_rgb`.
  `fps`: a Fraction is kept exactly (a source's 24000/1001), a float is rounded."""
  vs = container.add_stream(codec, rate=fps if isinstance(fps, fractions.Fraction)
                            else int(round(fps)))
  vs.width, vs.height = width, height
  vs.pix_fmt = 'yuv420p'
  if codec == 'libx264':
    vs.options = {'crf': str(crf), 'preset': preset}
  return vs


def encode_rgb(stream, rgb_HxWx3: np.ndarray) -> list:
  """The packets of one uint8 RGB frame (even width and height), converted to yuv420p here.

  The conversion is OpenCV's (BT.601, limited range, as FFmpeg's default) and not PyAV's: x264
  fed frames that PyAV converted with swscale wrote a different file on repeated runs when the
  CPU was contended (the predict test video, 15 writes while another process kept a core busy:
  10 different files, decoded pixels up to 67 apart, and in 3 of 30 writes Haar missed the
  face in frame 6), while the same frames converted by OpenCV gave 15 identical files.
  """
  yuv = cv2.cvtColor(np.ascontiguousarray(rgb_HxWx3, np.uint8), cv2.COLOR_RGB2YUV_I420)
  return stream.encode(av.VideoFrame.from_ndarray(yuv, format='yuv420p'))


def write_mp4(path, frames_TxHxWx3: np.ndarray, fps: int, *, audio: np.ndarray | None = None,
              sample_rate: int = 16000, codec: str = 'libx264') -> None:
  """Writes uint8 RGB frames (and optional mono float audio) as an mp4 (dummy data, tests)."""
  frames = np.asarray(frames_TxHxWx3, np.uint8)
  with av.open(os.fspath(path), 'w') as out:
    vs = add_video_stream(out, fps, frames.shape[2], frames.shape[1], codec=codec)
    as_ = None
    if audio is not None:
      as_ = out.add_stream('aac', rate=sample_rate, layout='mono')
    for f in frames:
      for p in encode_rgb(vs, f):
        out.mux(p)
    for p in vs.encode():
      out.mux(p)
    if as_ is not None:
      wav = np.asarray(audio, np.float32).reshape(1, -1)
      n = as_.codec_context.frame_size or 1024
      for i in range(0, wav.shape[1], n):
        af = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(wav[:, i : i + n]), format='fltp', layout='mono')
        af.sample_rate = sample_rate
        af.pts = i
        for p in as_.encode(af):
          out.mux(p)
      for p in as_.encode():
        out.mux(p)


def face_frames(path, *, fps: float, sample_rate: int, spec: faces.CropSpec, box_fn, skips,
                start: float | None = None, end: float | None = None, stride: int = 1,
                item: str | None = None, audio_path=None) -> Iterator[dict]:
  """Face-crop examples of one clip: image (JPEG), frame, audio, audio_mask (labels: caller).

  The crops are `faces.crop_face(rgb, box=box_fn(rgb), spec=spec)`. A clip whose data ends
  before the frames its container declares (a truncated download) keeps the frames that decode
  and is counted in `skips` ('clip shorter than its container declares: ...').

  The audio comes from `audio_path` (a separate audio file on the same timeline) when given,
  else from the video file itself.
  `box_fn(rgb)` returns the face box (x, y, w, h) in pixels or None: a frame without a face is
  counted in `skips` ('no face found in frame'). A video that cannot be opened or breaks while
  decoding is counted too; the frames decoded before the break are kept (they are valid). A clip
  without (readable) audio keeps its frames with zero audio and audio_mask 0.
  """
  item = item or os.fspath(path)
  spf = int(sample_rate // fps)
  audio, audio_error = None, None
  try:
    audio = read_audio(audio_path or path, sample_rate=sample_rate, start=start or 0.0, end=end)
  except (av.error.FFmpegError, OSError, ValueError) as e:
    audio_error = e
  n = 0
  ended = {}
  try:
    for k, t, rgb in iter_frames(path, fps=fps, start=start, end=end, stride=stride,
                                 ended=ended):
      if n == 0 and audio_error is not None:
        skips.skip(f'audio unreadable, frames kept with audio_mask 0 '
                   f'({type(audio_error).__name__})', item)
      n += 1
      box = box_fn(rgb)
      if box is None:
        skips.skip('no face found in frame', f'{item}#{k}')
        continue
      crop, _ = faces.crop_face(rgb, box=box, spec=spec)
      if audio is not None:
        chunk, covered = audio.chunk(t, spf)
      else:
        chunk, covered = np.zeros((spf,), np.float32), 0.0
      yield dict(image=bu.encode_image(crop, 'jpeg'), frame=k, audio=chunk,
                 audio_mask=np.float32(covered >= 0.5))
  except (av.error.FFmpegError, OSError, ValueError) as e:
    reason = 'unreadable video' if n == 0 else 'video breaks while decoding (earlier frames kept)'
    skips.skip(f'{reason} ({type(e).__name__})', item)
    return
  if ended.get('truncated'):
    skips.skip('clip shorter than its container declares: decoded frames kept (truncated file?)',
               f"{item} ({ended['decoded']} of {ended['declared']} frames)")
  if n == 0:
    skips.skip('video has no frame in the clip span', item)
