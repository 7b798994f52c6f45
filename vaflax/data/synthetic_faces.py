"""Procedural talking faces whose expression and voice follow a valence/arousal trajectory.

Each clip has an identity (skin, hair, face shape, eye spacing, voice pitch), a background, a
lighting gradient and a pose path. Its VA trajectory is smooth (sums of slow sinusoids). The
drawing follows VA the way the circumplex literature describes faces:
  valence  -> mouth-corner curvature (smile / frown) and inner-brow angle;
  arousal  -> eye and mouth opening, brow raise and head-motion energy.
The audio track (16 kHz) is a harmonic voice whose pitch and loudness follow arousal and whose
timbre (spectral tilt) follows valence. The 68 iBUG landmarks used to draw the face are returned
with it, so landmark heads can be supervised. Everything is deterministic from the seed.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import itertools
import multiprocessing
import os

import numpy as np
from absl import logging
from PIL import Image, ImageDraw

SAMPLE_RATE = 16000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640


@dataclasses.dataclass(frozen=True)
class Identity:
  skin: tuple
  hair: tuple
  background: tuple
  background2: tuple
  face_w: float  # half-width of the face ellipse in face units
  face_h: float
  eye_dx: float
  f0: float  # base voice pitch, Hz
  light_dir: float  # radians


def sample_identity(rng: np.random.Generator) -> Identity:
  skin_tone = rng.uniform(0.35, 1.0)
  skin = tuple(int(v) for v in (np.array([235, 190, 160]) * skin_tone + rng.uniform(-10, 10, 3)))
  hair = tuple(int(v) for v in rng.uniform(10, 160, 3))
  bg = tuple(int(v) for v in rng.uniform(20, 235, 3))
  bg2 = tuple(int(v) for v in rng.uniform(20, 235, 3))
  return Identity(
      skin=skin, hair=hair, background=bg, background2=bg2,
      face_w=float(rng.uniform(0.75, 0.95)), face_h=float(rng.uniform(1.0, 1.2)),
      eye_dx=float(rng.uniform(0.33, 0.45)), f0=float(rng.uniform(95, 210)),
      light_dir=float(rng.uniform(0, 2 * np.pi)))


def va_trajectory(rng: np.random.Generator, num_frames: int) -> np.ndarray:
  """(T, 2) smooth valence/arousal in [-1, 1]: an offset plus two sinusoids per dimension.

  The sinusoids are fast enough (up to 1 Hz) that one clip sweeps a good part of the plane, so
  a model cannot predict a clip's VA from who is in it.
  """
  t = np.arange(num_frames, dtype=np.float64) / FPS
  out = []
  for _ in range(2):
    x = rng.uniform(-0.9, 0.9) + np.zeros_like(t)
    for _ in range(2):
      amp, freq, ph = rng.uniform(0.1, 0.4), rng.uniform(0.2, 1.0), rng.uniform(0, 2 * np.pi)
      x = x + amp * np.sin(2 * np.pi * freq * t + ph)
    out.append(np.clip(x, -1.0, 1.0))
  return np.stack(out, -1).astype(np.float32)


def face_landmarks(ident: Identity, v: float, a: float) -> np.ndarray:
  """68 iBUG-style points in face units (x right, y down, face centre at 0) for one expression."""
  fw, fh = ident.face_w, ident.face_h
  pts = np.zeros((68, 2), np.float64)
  # Jaw 0-16: lower half of the face ellipse, from the left temple to the right one.
  ang = np.linspace(np.pi * 1.0, 0.0, 17)
  pts[0:17, 0] = fw * np.cos(ang)
  pts[0:17, 1] = -0.1 + (fh + 0.1) * np.sin(np.linspace(0.0, np.pi, 17))
  # Brows 17-21 (image-left) and 22-26: raised with arousal, inner ends down when valence < 0.
  raise_ = 0.08 * a
  for s, idx in ((-1, range(17, 22)), (1, range(22, 27))):
    xs = -np.linspace(0.62, 0.12, 5) if s < 0 else np.linspace(0.12, 0.62, 5)
    for j, i in enumerate(idx):
      inner = (1.0 - abs(xs[j]) / 0.62)
      pts[i] = (xs[j] * fw / 0.85, -0.45 - raise_ + 0.10 * max(0.0, -v) * inner - 0.04 * np.sin(np.pi * j / 4))
  # Nose 27-35.
  for j, i in enumerate(range(27, 31)):
    pts[i] = (0.0, -0.3 + 0.11 * j)
  for j, i in enumerate(range(31, 36)):
    pts[i] = (-0.14 + 0.07 * j, 0.12 + 0.03 * (1 - abs(j - 2) / 2))
  # Eyes 36-41 and 42-47: opening grows with arousal.
  open_ = 0.03 + 0.09 * (a + 1.0) / 2.0
  for s, base in ((-1, 36), (1, 42)):
    cx, cy, hw = s * ident.eye_dx, -0.28, 0.13
    xs = [cx - hw, cx - hw / 3, cx + hw / 3, cx + hw, cx + hw / 3, cx - hw / 3]
    ys = [cy, cy - open_, cy - open_, cy, cy + open_, cy + open_]
    pts[base : base + 6, 0] = xs
    pts[base : base + 6, 1] = ys
  # Mouth 48-59 (outer) and 60-67 (inner): corners up with valence, opening with arousal.
  mw, my = 0.34, 0.5
  curv = 0.22 * v
  mopen = 0.01 + 0.18 * max(0.0, (a + 0.6) / 1.6)
  ox = np.array([-1.0, -0.6, -0.25, 0.0, 0.25, 0.6, 1.0, 0.6, 0.25, 0.0, -0.25, -0.6]) * mw
  bend = lambda x: my - curv * (np.abs(x) / mw) ** 2  # corners move up for positive valence
  upper = np.array([0.0, -0.05, -0.07, -0.06, -0.07, -0.05, 0.0])
  lower = np.array([0.07, 0.10, 0.11, 0.10, 0.07])
  oy = np.concatenate([bend(ox[:7]) + upper - mopen / 2, bend(ox[7:]) + lower + mopen / 2])
  pts[48:60, 0], pts[48:60, 1] = ox, oy
  ix = np.array([-0.8, -0.3, 0.0, 0.3, 0.8, 0.3, 0.0, -0.3]) * mw
  iy = np.concatenate([bend(ix[:5]) - np.array([0, 0.02, 0.02, 0.02, 0]) - mopen / 2,
                       bend(ix[5:]) + np.array([0.02, 0.02, 0.02]) + mopen / 2])
  pts[60:68, 0], pts[60:68, 1] = ix, iy
  return pts


def render_frame(ident: Identity, v: float, a: float, pose: np.ndarray, size: int,
                 supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:
  """Draws one face; returns (uint8 HxWx3 image, (68, 2) landmarks in pixels)."""
  S = size * supersample
  cx, cy, scale, roll, yaw = pose
  scale_px = scale * S * 0.33
  pts = face_landmarks(ident, v, a)

  def to_px(p):
    p = np.asarray(p, np.float64).reshape(-1, 2).copy()
    p[:, 0] = p[:, 0] * (1.0 - 0.25 * abs(yaw)) + yaw * 0.25 * (1.0 - p[:, 0] ** 2)
    c, s = np.cos(roll), np.sin(roll)
    x = p[:, 0] * c - p[:, 1] * s
    y = p[:, 0] * s + p[:, 1] * c
    return np.stack([cx * S + x * scale_px, cy * S + y * scale_px], -1)

  background, gain_SxSx1 = _canvas(ident, S)
  img = Image.fromarray(background)
  d = ImageDraw.Draw(img)
  # Hair cap, then the face ellipse as a polygon.
  th = np.linspace(0, 2 * np.pi, 48, endpoint=False)
  hair = to_px(np.stack([1.08 * ident.face_w * np.cos(th), -0.15 + 1.05 * ident.face_h * np.sin(th) - 0.12], -1))
  d.polygon([tuple(p) for p in hair], fill=ident.hair)
  face = to_px(np.stack([ident.face_w * np.cos(th), 0.1 + ident.face_h * np.sin(th)], -1))
  d.polygon([tuple(p) for p in face], fill=ident.skin)
  lm = to_px(pts)
  dark = (40, 25, 20)
  lw = max(1, int(round(S / 64)))
  for a_, b_ in ((17, 22), (22, 27)):
    d.line([tuple(p) for p in lm[a_:b_]], fill=ident.hair, width=2 * lw)
  d.line([tuple(p) for p in lm[27:31]], fill=dark, width=lw)
  d.line([tuple(p) for p in lm[31:36]], fill=dark, width=lw)
  for base in (36, 42):
    eye = [tuple(p) for p in lm[base : base + 6]]
    d.polygon(eye, fill=(250, 250, 250), outline=dark)
    c = lm[base : base + 6].mean(0)
    r = 0.045 * scale_px
    d.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=(30, 30, 60))
  d.polygon([tuple(p) for p in lm[48:60]], fill=(170, 60, 70))
  d.polygon([tuple(p) for p in lm[60:68]], fill=(60, 10, 20))
  # Lighting: the gain is at least 0.65, so only the top needs clipping.
  lit = np.asarray(img) * gain_SxSx1
  np.minimum(lit, 255, out=lit)
  out = np.asarray(Image.fromarray(lit.astype(np.uint8)).resize((size, size), Image.BILINEAR))
  return out, lm / supersample


@functools.lru_cache(maxsize=8)
def _canvas(ident: Identity, S: int) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 SxSx3 background, float64 SxSx1 lighting gain) of an identity: the same for all of
  its frames (a clip's 24, and the clips that share the identity), so drawn once (the build of
  synthetic_va spent half its time redrawing them)."""
  # Background: two-colour vertical gradient.
  g = np.linspace(0, 1, S)[:, None, None]
  bg = (1 - g) * np.array(ident.background) + g * np.array(ident.background2)
  background = np.broadcast_to(bg, (S, S, 3)).astype(np.uint8)
  # Lighting: a linear gain across the image in the identity's light direction.
  yy, xx = np.mgrid[0:S, 0:S] / S - 0.5
  gain = 1.0 + 0.35 * (np.cos(ident.light_dir) * xx + np.sin(ident.light_dir) * yy)
  background.flags.writeable = False
  gain = gain[..., None]
  gain.flags.writeable = False
  return background, gain


def pose_path(rng: np.random.Generator, va_Tx2: np.ndarray) -> np.ndarray:
  """(T, 5) pose per frame: centre x, y (fraction of image), scale, roll, yaw.

  Head motion energy grows with arousal: a calm face barely moves, an excited one jitters.
  """
  T = len(va_Tx2)
  base = np.array([rng.uniform(0.45, 0.55), rng.uniform(0.45, 0.55), rng.uniform(0.85, 1.05),
                   rng.uniform(-0.15, 0.15), rng.uniform(-0.3, 0.3)])
  energy = 0.5 * (va_Tx2[:, 1] + 1.0)
  noise = np.cumsum(rng.normal(0, 1, (T, 5)), 0) * 0.15
  noise = noise - noise.mean(0)
  jitter = rng.normal(0, 1, (T, 5)) * energy[:, None]
  amp = np.array([0.012, 0.012, 0.01, 0.03, 0.05])
  return base + (0.5 * noise + jitter) * amp


def voice(ident: Identity, va_Tx2: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """(T, SAMPLES_PER_FRAME) waveform: pitch/loudness follow arousal, spectral tilt follows valence."""
  T = len(va_Tx2)
  n = T * SAMPLES_PER_FRAME
  # Per-sample controls, linearly interpolated between frame centres so nothing clicks.
  fc = (np.arange(T) + 0.5) * SAMPLES_PER_FRAME
  s = np.arange(n)
  v = np.interp(s, fc, va_Tx2[:, 0])
  a = np.interp(s, fc, va_Tx2[:, 1])
  f0 = ident.f0 * 2.0 ** (0.8 * a)  # up to +/- 0.8 octave with arousal
  phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
  tilt = 1.6 - 0.9 * v  # bright (slow roll-off) for positive valence, dull for negative
  wave = np.zeros(n)
  for k in range(1, 9):
    wave += np.sin(k * phase) * k ** (-tilt)
  # Syllable-like amplitude modulation at 4 Hz, loudness from arousal.
  syll = 0.6 + 0.4 * np.sin(2 * np.pi * 4.0 * s / SAMPLE_RATE + rng.uniform(0, 2 * np.pi)) ** 2
  loud = 0.05 + 0.25 * (a + 1.0) / 2.0
  wave = wave / 2.0 * loud * syll + rng.normal(0, 0.005, n)
  return wave.reshape(T, SAMPLES_PER_FRAME).astype(np.float32)


def make_clip(seed: int, num_frames: int, size: int, identity_seed: int | None = None,
              keep=None):
  """Returns (frames uint8 (T,S,S,3), landmarks (T,68,2) px, va (T,2), audio (T,640)).

  `identity_seed` (default: `seed`) picks who is in the clip; `seed` picks the VA trajectory,
  pose path and noise, so one identity can appear in several clips with unrelated VA.
  `keep` (frame indices, default all) draws only those frames of the same num_frames clip: the
  trajectory, pose and voice are those of the whole clip, so kept frames are identical to the
  whole clip's (synthetic_va_heldout keeps every 4th frame to draw more clips for the cost).
  """
  ident = sample_identity(np.random.default_rng([7, seed if identity_seed is None else identity_seed]))
  rng = np.random.default_rng(seed)
  va = va_trajectory(rng, num_frames)
  poses = pose_path(rng, va)
  audio = voice(ident, va, rng)
  keep = np.arange(num_frames) if keep is None else np.asarray(keep)
  frames, lms = [], []
  for t in keep:
    f, lm = render_frame(ident, float(va[t, 0]), float(va[t, 1]), poses[t], size)
    frames.append(f)
    lms.append(lm)
  return np.stack(frames), np.stack(lms).astype(np.float32), va[keep], audio[keep]


def make_clips(jobs, workers: int | None = None):
  """make_clip(*job) for each job of `jobs`, in order, drawn by `workers` processes (default: one
  per core, at most 8) at most two clips each ahead of the consumer (memory stays bounded).

  Drawing is numpy and PIL in Python: one process draws synthetic_va's 5k frames in about 14 s
  of its build's 18. Workers are spawned, not forked: the caller may hold JAX's threads. A
  spawned worker imports the caller's main module; where that fails (a script that builds at
  its top level, without `if __name__ == '__main__':`) the clips are drawn here, with a warning.
  """
  workers = min(os.cpu_count() or 1, 8) if workers is None else workers
  jobs = iter(jobs)
  if workers <= 1:
    yield from (make_clip(*job) for job in jobs)
    return
  pool = concurrent.futures.ProcessPoolExecutor(workers,
                                                mp_context=multiprocessing.get_context('spawn'))
  try:
    ahead = collections.deque((job, pool.submit(make_clip, *job))
                              for job in itertools.islice(jobs, 2 * workers))
    while ahead:
      job, future = ahead.popleft()
      try:
        clip = future.result()
      except concurrent.futures.process.BrokenProcessPool:
        logging.warning('drawing clips in worker processes failed (a script that builds without '
                        "`if __name__ == '__main__':`?); drawing them in this process")
        yield make_clip(*job)
        yield from (make_clip(*j) for j, _ in ahead)
        yield from (make_clip(*j) for j in jobs)
        return
      nxt = next(jobs, None)
      if nxt is not None:
        ahead.append((nxt, pool.submit(make_clip, *nxt)))
      yield clip
  finally:  # also when the consumer stops early: clips not begun are not drawn
    pool.shutdown(cancel_futures=True)
