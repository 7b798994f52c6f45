"""predict --overlay: the source video with each face's box, VA and quadrant drawn on it.

The text is scaled to the frame (readable on a phone clip and on 4K alike) and drawn in black
or white on a box of the face's colour, so it contrasts with any background; every label is kept
inside the frame. The output has
the source's exact frame rate (23.976 fps stays 24000/1001) and its audio track, copied as it is
when MP4 can hold the codec, else re-encoded to AAC.
"""

from __future__ import annotations

import fractions

import numpy as np

from vaflax import circumplex
from vaflax.predict.outputs import Row, atomic

COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60)]
# Audio codecs FFmpeg's MP4 muxer takes as they are; others (e.g. a .mov's PCM) become AAC.
MP4_AUDIO = ('aac', 'mp3', 'ac3', 'eac3', 'opus', 'alac', 'flac')
HOLD_FRAMES = 30  # a face's last values stay drawn this many frames after its last scored frame


def text_scale(height: int) -> tuple[float, int]:
  """(OpenCV font scale, stroke thickness) for a frame `height` pixels tall: text ~1/40 of it
  (cap height), never below 12 px."""
  scale = max(0.5, height / 900)
  return scale, max(1, int(round(scale * 1.6)))


def draw_label(rgb, text: str, x: int, y: int, colour, *, below: bool = False) -> None:
  """`text` on a box of `colour` whose top-left is near (x, y) (above it unless `below`), moved
  as needed to lie inside the frame; black text on a light colour, white on a dark one."""
  import cv2  # noqa: PLC0415

  h, w = rgb.shape[:2]
  scale, thick = text_scale(h)
  font = cv2.FONT_HERSHEY_SIMPLEX
  (tw, th), base = cv2.getTextSize(text, font, scale, thick)
  pad = max(2, thick * 2)
  bw, bh = tw + 2 * pad, th + base + 2 * pad
  x0 = int(np.clip(x, 0, max(0, w - bw)))
  y0 = y if below else y - bh
  y0 = int(np.clip(y0, 0, max(0, h - bh)))
  luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]  # ITU-R BT.601
  ink = (0, 0, 0) if luma > 140 else (255, 255, 255)
  cv2.rectangle(rgb, (x0, y0), (x0 + bw, y0 + bh), colour, -1)
  cv2.putText(rgb, text, (x0 + pad, y0 + pad + th), font, scale, ink, thick, cv2.LINE_AA)


def draw_faces(rgb, faces: list[tuple[Row, float, float, int]]) -> None:
  """Draws each (row, valence, arousal, quadrant) on `rgb` in place."""
  import cv2  # noqa: PLC0415

  _, thick = text_scale(rgb.shape[0])
  for r, v, a, q in faces:
    x, y, w, h = (int(round(c)) for c in (r.x, r.y, r.w, r.h))
    colour = COLOURS[r.face_id % len(COLOURS)]
    cv2.rectangle(rgb, (x, y), (x + w, y + h), colour, max(2, thick))
    draw_label(rgb, f'#{r.face_id} V {v:+.2f} A {a:+.2f}', x, y, colour)
    draw_label(rgb, circumplex.QUADRANT_NAMES[q], x, y + h, colour, below=True)


def _audio_stream(src, out):
  """(input audio stream, output stream, copy?) of the source's first audio track, or None."""
  if not src.streams.audio:
    return None
  a_in = src.streams.audio[0]
  if a_in.codec_context.name in MP4_AUDIO:
    return a_in, out.add_stream_from_template(a_in), True
  layout = a_in.codec_context.layout.name if a_in.codec_context.layout else 'stereo'
  return a_in, out.add_stream('aac', rate=a_in.codec_context.sample_rate or 48000,
                              layout=layout), False


def _mux_audio(path, out, stream, copy: bool) -> None:
  """Every audio packet (or re-encoded frame) of the source into `out`."""
  import av  # noqa: PLC0415

  with av.open(path) as src:
    a_in = src.streams.audio[0]
    for packet in src.demux(a_in):
      if copy:
        if packet.dts is None:  # the demuxer's final flush packet
          continue
        packet.stream = stream
        out.mux(packet)
      else:
        for frame in packet.decode():
          frame.pts = None  # the encoder numbers its own samples
          for p in stream.encode(frame):
            out.mux(p)
    if not copy:
      for p in stream.encode():
        out.mux(p)


def write_overlay(path, out_path, rows: list[Row], va_Nx2, quadrant_N, fps) -> str:
  """Re-decodes the video and draws each face box with its VA and quadrant (last values held on
  frames skipped by --frame_stride); `rows` are the rows with a face. `fps`: used only when the
  container gives no rate of its own."""
  import av  # noqa: PLC0415

  from vaflax.data import video_io  # noqa: PLC0415

  by_frame: dict[int, list[int]] = {}
  for i, r in enumerate(rows):
    by_frame.setdefault(int(r.frame), []).append(i)
  current: list[int] = []
  with atomic(out_path) as tmp, video_io.Video(path) as src, av.open(tmp, 'w', format='mp4') as out:
    r = src.stream.average_rate or src.stream.guessed_rate  # PyAV's own rational type
    rate = (fractions.Fraction(r.numerator, r.denominator) if r
            else fractions.Fraction(fps or 25).limit_denominator(1001))
    audio = _audio_stream(src.container, out)
    vs = None
    for k, (_, frame) in enumerate(src.frames()):
      rgb = np.ascontiguousarray(frame.to_ndarray(format='rgb24'))
      if vs is None:
        vs = video_io.add_video_stream(out, rate, rgb.shape[1] // 2 * 2, rgb.shape[0] // 2 * 2,
                                       crf=23, preset='veryfast')
      if k in by_frame:
        current = by_frame[k]
      elif rows and k - max(rows[i].frame for i in current or [0]) > HOLD_FRAMES:
        current = []
      draw_faces(rgb, [(rows[i], float(va_Nx2[i, 0]), float(va_Nx2[i, 1]), int(quadrant_N[i]))
                       for i in current])
      for p in video_io.encode_rgb(vs, rgb[: vs.height, : vs.width]):
        out.mux(p)
    if vs is not None:
      for p in vs.encode():
        out.mux(p)
    if audio is not None and vs is not None:
      _mux_audio(path, out, audio[1], audio[2])
  return out_path
