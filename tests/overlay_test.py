"""predict --overlay: the source's exact frame rate and audio, text scaled to the frame and kept
inside it (vaflax/predict/overlay.py)."""

import fractions

import av
import numpy as np
import pytest

from vaflax.predict import overlay
from vaflax.predict.outputs import Row

RATE = fractions.Fraction(24000, 1001)  # 23.976 fps


def _clip(path, n, size, audio_codec):
  """n frames of a mid-grey clip at 23.976 fps with a 440 Hz tone (or no audio)."""
  w, h = size
  with av.open(str(path), 'w') as out:
    vs = out.add_stream('libx264', rate=RATE)
    vs.width, vs.height, vs.pix_fmt = w, h, 'yuv420p'
    as_ = out.add_stream(audio_codec, rate=48000, layout='mono') if audio_codec else None
    rgb = np.full((h, w, 3), 128, np.uint8)
    for _ in range(n):
      for p in vs.encode(av.VideoFrame.from_ndarray(rgb, format='rgb24')):
        out.mux(p)
    for p in vs.encode():
      out.mux(p)
    if as_ is not None:
      t = np.arange(int(48000 * n / RATE)) / 48000
      wav = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
      step = as_.codec_context.frame_size or 1024
      for i in range(0, wav.shape[1], step):
        f = av.AudioFrame.from_ndarray(np.ascontiguousarray(wav[:, i:i + step]), format='fltp',
                                       layout='mono')
        f.sample_rate, f.pts = 48000, i
        for p in as_.encode(f):
          out.mux(p)
      for p in as_.encode():
        out.mux(p)


def _read(path):
  with av.open(str(path)) as c:
    v = c.streams.video[0]
    rate = v.average_rate
    audio = c.streams.audio[0].codec_context.name if c.streams.audio else None
    samples = sum(f.samples for f in c.decode(audio=0)) if audio else 0
  with av.open(str(path)) as c:
    frames = [f.to_ndarray(format='rgb24') for f in c.decode(video=0)]
  return rate, audio, samples, frames


@pytest.mark.parametrize('audio_codec', ['aac', 'pcm_s16le', None])
def test_overlay_keeps_the_frame_rate_and_the_audio(tmp_path, audio_codec):
  src = tmp_path / ('src.mov' if audio_codec == 'pcm_s16le' else 'src.mp4')
  _clip(src, 24, (320, 240), audio_codec)
  # A face near the bottom-right corner: its labels must be moved inside the frame.
  rows = [Row(frame=k, time_s=k / RATE, face_id=0, x=230.0, y=150.0, w=80.0, h=80.0)
          for k in range(0, 24, 2)]
  va = np.tile([[0.5, -0.25]], (len(rows), 1))
  out = overlay.write_overlay(str(src), str(tmp_path / 'o.mp4'), rows, va,
                              np.zeros(len(rows), int), float(RATE))
  rate, audio, samples, frames = _read(out)
  src_rate, _, src_samples, _ = _read(src)
  assert rate == RATE == src_rate  # 24000/1001, not 24
  assert len(frames) == 24
  if audio_codec is None:
    assert audio is None
  else:
    assert audio == 'aac'  # AAC copied; the .mov's PCM re-encoded (MP4 does not hold PCM)
    assert abs(samples - src_samples) <= 2048  # the whole track (AAC pads a frame or two)
  f = frames[0].astype(int)
  box = np.all(np.abs(f - overlay.COLOURS[0]) < 40, -1)  # face 0's colour: box and labels
  rows_, cols = np.nonzero(box)
  assert box.sum() > 1500  # filled label boxes, not only the outline (~600 px)
  assert rows_.min() > 100 and cols.min() > 100  # by the face
  # Too wide for the space right of the box and below it: moved left and up to the frame's edges.
  assert box[232:240].sum() > 100 and box[:, 312:].sum() > 100


def test_text_scales_with_the_frame():
  assert overlay.text_scale(240) == (0.5, 1)
  s720, s2160 = overlay.text_scale(720), overlay.text_scale(2160)
  assert s2160[0] == pytest.approx(3 * s720[0]) and s2160[1] > s720[1]
