r"""Valence/arousal of the faces in images and videos, with a trained run.

  python -m vaflax.predict --workdir=W --input=PATH --output=DIR [--frame_stride=1]
      [--smooth=none|ema|mean --smooth_window=5] [--min_face=40] [--faces=largest|all]
      [--overlay] [--flip_tta] [--batch_size=32] [--detect_every=10]

PATH is an image, a video or a folder of them. For each input DIR gets <stem>.csv (one row per
face per processed frame: frame,time_s,face_id,x,y,w,h,valence,arousal,quadrant), <stem>.json
(a per-clip summary) and PNG plots; --overlay adds <stem>_overlay.mp4.

Video is decoded as a stream (PyAV): only the frames of one model batch are alive at a time.
Faces are found with vaflax.detect (OpenCV Haar), followed across frames by IoU/centre matching
(stable `face_id`, a track survives `--max_age` processed frames without a detection), cropped
with `faces.crop_face` at the framing of the training data (margin 0.2 around the Haar box, the
dataset's crop size) and passed through the run's `input.pp_eval` ops, so the model sees what
evaluation saw. Temporal models (config.input.window = T) get windows of T consecutive crops of
one face track (the audio of those frames too when pp_eval has standardize(audio=True)).
docs/predict.md has the formats.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np

from vaflax import circumplex, detect, faces

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')
VIDEO_EXTS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg', '.wmv', '.flv',
              '.3gp', '.ts')
CSV_COLUMNS = ('frame', 'time_s', 'face_id', 'x', 'y', 'w', 'h', 'valence', 'arousal', 'quadrant')
# The framing of every builder that crops Haar boxes (face_folder, mead, omg_emotion, ...) and of
# the synthetic set: crop_face margin 0.2 around the (brows-to-mouth) Haar box.
DEFAULT_MARGIN = 0.2
DEFAULT_CROP_SIZE = 112


class InputError(Exception):
  """An input that cannot be read; the message names the file."""


@dataclasses.dataclass
class Options:
  frame_stride: int = 1  # process every k-th decoded frame
  smooth: str = 'none'  # none | ema | mean (per face track, over processed frames)
  smooth_window: int = 5  # mean: centred window length; ema: span (alpha = 2 / (span + 1))
  min_face: int = 40  # smallest face side in source pixels (smaller ones carry little expression)
  faces: str = 'largest'  # largest: one face per frame; all: every face
  detect_every: int = 10  # full-frame detection period (processed frames); between, near tracks
  max_age: int = 5  # processed frames a face track survives without being found
  overlay: bool = False  # also write <stem>_overlay.mp4
  plots: bool = True
  progress: bool = True

  def check(self):
    if self.frame_stride < 1:
      raise ValueError(f'--frame_stride must be >= 1, got {self.frame_stride}')
    if self.smooth not in ('none', 'ema', 'mean'):
      raise ValueError(f'--smooth must be none, ema or mean, got {self.smooth!r}')
    if self.smooth_window < 1:
      raise ValueError(f'--smooth_window must be >= 1, got {self.smooth_window}')
    if self.faces not in ('largest', 'all'):
      raise ValueError(f'--faces must be largest or all, got {self.faces!r}')
    if self.detect_every < 1 or self.max_age < 0 or self.min_face < 1:
      raise ValueError('--detect_every and --min_face must be >= 1, --max_age >= 0')


# --- Model ----------------------------------------------------------------------------------------


class Predictor:
  """A run's model restored on one device, with the crop and preprocessing of its training data."""

  def __init__(self, workdir: str, *, checkpoint_step: int | None = None, batch_size: int = 32,
               flip: bool = False, crop_size: int | None = None, crop_margin: float = DEFAULT_MARGIN,
               data_dir: str | None = None, overrides=()):
    import jax  # noqa: PLC0415 -- after flag parsing
    from flax import nnx  # noqa: PLC0415

    from vaflax import evaluate, runs, tasks  # noqa: PLC0415
    from vaflax.data import ops as ops_lib  # noqa: PLC0415

    if data_dir:
      overrides = [*overrides, f'input.data_dir={data_dir}']
    # One device: a stream of small batches gains nothing from a mesh.
    overrides = [*overrides, 'mesh.num_devices=1', 'mesh.fsdp=1', 'mesh.data=-1']
    run = runs.load_run(workdir, checkpoint_step, overrides=overrides)
    self.workdir, config, self.step = run.workdir, run.config, run.step
    self.config = config
    self.window = int(config.input.window)
    pp = config.input.pp_eval
    self.uses_audio = any(n == 'standardize' and (kw.get('audio') or (a and a[0]))
                          for n, a, kw in ops_lib.parse(pp, image_size=config.image_size))
    self._pp = ops_lib.build(pp, image_size=config.image_size)
    self.pp_spec = pp.format(image_size=config.image_size)
    self.batch_size = max(1, batch_size // self.window) if self.window else max(1, batch_size)
    self.crop_margin = float(crop_margin)
    self.crop_size, self.sample_rate, self.audio_samples = self._data_spec(crop_size)
    model_def, model_state = run.graphdef, run.state
    predict_fn = tasks.get(config.task).predict_fn
    if flip:
      predict_fn = evaluate.flip_tta(predict_fn)
    self.flip = flip

    def fwd(model_state, batch):
      m = nnx.merge(model_def, model_state)
      m.eval()
      out = predict_fn(m, batch, config)
      res = {'va': out['va']}
      if 'quadrant_logits' in out:
        res['quadrant'] = jax.numpy.argmax(out['quadrant_logits'], -1)
      return res

    self._state = model_state
    self._fwd = jax.jit(fwd)

  def _data_spec(self, crop_size):
    """(crop size, audio sample rate, samples per frame) of the run's (first) dataset."""
    from vaflax.data import pipeline  # noqa: PLC0415

    name = pipeline.parse_mixture(self.config.input.dataset)[0][0]
    md, feats = {}, {}
    try:
      info = pipeline.dataset_info(name, self.config.input.data_dir)
      md, feats = dict(info.metadata or {}), info.features
    except Exception as e:  # noqa: BLE001 -- builder code or data dir unavailable: use defaults
      print(f'note: no dataset info for {name} ({type(e).__name__}); using defaults',
            file=sys.stderr)
    if not crop_size:
      crop_size = int(md.get('crop_size') or 0)
      if not crop_size:
        crop_size = DEFAULT_CROP_SIZE
        # The framing (margin and pp_eval crops) does not depend on it; only the resampling does.
        print(f'note: crop size of {name} unknown; using {crop_size} (set --crop_size)',
              file=sys.stderr)
    sr, spf = int(md.get('sample_rate') or 16000), 0
    if self.uses_audio:
      try:
        spf = int(feats['audio'].shape[0])
      except (KeyError, TypeError, IndexError):
        spf = sr // int(md.get('fps') or 25)
    return int(crop_size), sr, spf

  def preprocess(self, crop_HxWx3: np.ndarray, audio=None) -> dict:
    """A uint8 face crop (and its audio chunk) -> the model inputs of one frame, via pp_eval."""
    ex = {'image': crop_HxWx3, 'valence': np.float32(0), 'arousal': np.float32(0),
          'va_mask': np.zeros((2,), np.float32), 'valence_raw': np.float32(np.nan),
          'arousal_raw': np.float32(np.nan), 'emotion': np.int32(-1),
          'landmarks': np.zeros((68, 2), np.float32), 'landmarks_mask': np.float32(0),
          'index': -1, 'video': -1}
    if self.uses_audio:
      ex['audio'] = np.zeros((self.audio_samples,), np.float32) if audio is None else audio
    out = self._pp(ex, np.random.default_rng(0))
    res = {'image': np.asarray(out['image'], np.float32)}
    if self.uses_audio:
      res['audio'] = np.asarray(out['audio'], np.float32)
    return res

  def crop(self, rgb, box) -> np.ndarray:
    return faces.crop_face(rgb, box=box, margin=self.crop_margin, size=self.crop_size)[0]

  def dispatch(self, items: list[dict]):
    """Starts the model on a batch of inputs (padded to batch_size); returns a handle for `result`."""
    n = len(items)
    batch = {}
    for k in items[0]:
      arr = np.stack([it[k] for it in items])
      if n < self.batch_size:
        arr = np.concatenate([arr, np.zeros((self.batch_size - n,) + arr.shape[1:], arr.dtype)])
      batch['frames' if (k == 'image' and self.window) else k] = arr
    return self._fwd(self._state, batch), n

  @staticmethod
  def result(handle) -> dict:
    out, n = handle
    return {k: np.asarray(v)[:n] for k, v in out.items()}


# --- Tracking -------------------------------------------------------------------------------------


def iou(a, b) -> float:
  ax, ay, aw, ah = a[:4]
  bx, by, bw, bh = b[:4]
  iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
  ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
  inter = iw * ih
  union = aw * ah + bw * bh - inter
  return inter / union if union > 0 else 0.0


class FaceTracker:
  """Gives detections stable ids: greedy matching by IoU, else by centre distance.

  A detection matches a track when their IoU is >= `min_iou`, or when its centre lies within
  `max_centre` track sides of the track's centre and the sizes differ by less than 1.5x (fast
  motion). A track not matched for more than `max_age` updates is dropped.
  """

  def __init__(self, max_age: int = 5, min_iou: float = 0.3, max_centre: float = 0.5):
    self.max_age, self.min_iou, self.max_centre = max_age, min_iou, max_centre
    self.tracks: dict[int, dict] = {}  # id -> {'box', 'last'}
    self._next = 0
    self._t = -1

  def _score(self, box, det) -> float:
    s = iou(box, det)
    if s >= self.min_iou:
      return 1.0 + s
    side = max(box[2], box[3])
    ratio = max(det[2], det[3]) / side
    d = math.hypot(det[0] + det[2] / 2 - box[0] - box[2] / 2, det[1] + det[3] / 2 - box[1] - box[3] / 2)
    if d < self.max_centre * side and 1 / 1.5 < ratio < 1.5:
      return 1.0 - d / (self.max_centre * side)  # in (0, 1]: below any IoU match
    return 0.0

  def update(self, detections) -> tuple[list[tuple[int, tuple]], list[int]]:
    """(face_id, box) per detection, and the ids of the tracks dropped by this update."""
    self._t += 1
    cands = sorted(((self._score(tr['box'], d), tid, i)
                    for tid, tr in self.tracks.items() for i, d in enumerate(detections)),
                   reverse=True)
    used_t, ids = set(), [None] * len(detections)
    for score, tid, i in cands:
      if score <= 0:
        break
      if tid in used_t or ids[i] is not None:
        continue
      used_t.add(tid)
      ids[i] = tid
    for i, d in enumerate(detections):
      if ids[i] is None:
        ids[i] = self._next
        self._next += 1
      self.tracks[ids[i]] = {'box': tuple(d[:4]), 'last': self._t}
    dropped = [tid for tid, tr in self.tracks.items() if self._t - tr['last'] > self.max_age]
    for tid in dropped:
      del self.tracks[tid]
    return [(ids[i], tuple(float(v) for v in d[:4])) for i, d in enumerate(detections)], dropped

  def live_boxes(self) -> list[tuple]:
    return [tr['box'] for tr in self.tracks.values()]


class FaceFinder:
  """Full-frame Haar detection every `detect_every` frames; in between, Haar inside a window
  around each live track (a few pyramid levels on a small image: ~10x cheaper), and a full
  detection on the next frame whenever a track was not found."""

  def __init__(self, min_face: int, detect_every: int, largest_only: bool):
    self.min_face, self.every, self.largest = min_face, detect_every, largest_only
    self._n = 0
    self._force = True

  def __call__(self, rgb, live_boxes) -> list[tuple]:
    full = self._force or self._n % self.every == 0 or not live_boxes
    self._n += 1
    if full:
      dets = _detect(rgb, self.min_face)
      self._force = False
    else:
      dets = []
      h, w = rgb.shape[:2]
      for box in live_boxes:
        side = max(box[2], box[3])
        cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
        x0, y0 = int(max(0, cx - side)), int(max(0, cy - side))
        x1, y1 = int(min(w, cx + side)), int(min(h, cy + side))
        if x1 - x0 < self.min_face or y1 - y0 < self.min_face:
          continue
        found = _detect(rgb[y0:y1, x0:x1], max(self.min_face, int(0.6 * side)))
        if found:
          best = max(found, key=lambda d: iou(box, (d[0] + x0, d[1] + y0, d[2], d[3])))
          dets.append((best[0] + x0, best[1] + y0, best[2], best[3], best[4]))
        else:
          self._force = True
      dets = _dedupe(dets)
    # Whole pixels: the CSV then holds the exact box the crop was cut from.
    dets = [tuple(float(round(v)) for v in d[:4]) + (d[4],) for d in dets
            if min(d[2], d[3]) >= self.min_face]
    dets.sort(key=lambda d: -d[2] * d[3])
    return dets[:1] if self.largest else dets


# Faces are searched on a copy scaled so that the smallest wanted face is this many pixels: the
# same faces as at full size at a fraction of the cost. Not the cascade's own 24 px window: at
# that size it misses some faces (astronaut test video: 29/30 frames at 24 px, 30/30 at 32).
DETECT_SIDE = 32


def _detect(rgb, min_size: int):
  """Haar faces of side >= min_size (source pixels), largest first."""
  side = max(rgb.shape[:2])
  scale = min(1.0, DETECT_SIDE / min_size)
  return detect.detect_faces(rgb, min_size=min_size, max_side=max(24, math.ceil(side * scale)))


def _dedupe(dets, thr: float = 0.5):
  out = []
  for d in sorted(dets, key=lambda d: -d[2] * d[3]):
    if all(iou(d, o) < thr for o in out):
      out.append(d)
  return out


# --- Reading inputs -------------------------------------------------------------------------------


def read_image(path) -> np.ndarray:
  from PIL import Image, ImageOps, UnidentifiedImageError  # noqa: PLC0415

  try:
    with Image.open(path) as im:
      return np.asarray(ImageOps.exif_transpose(im).convert('RGB'))
  except (UnidentifiedImageError, OSError, ValueError) as e:
    raise InputError(f'{path}: cannot read as an image ({type(e).__name__}: {e})') from None


class VideoStream:
  """Frames of a video decoded one at a time, with their times in seconds (PyAV)."""

  def __init__(self, path, stride: int = 1):
    import av  # noqa: PLC0415

    self.path, self.stride = os.fspath(path), stride
    try:
      self._c = av.open(self.path)
    except (av.error.FFmpegError, OSError, ValueError) as e:
      raise InputError(f'{path}: cannot open as a video ({type(e).__name__}: {e})') from None
    if not self._c.streams.video:
      self._c.close()
      raise InputError(f'{path}: has no video stream')
    s = self._c.streams.video[0]
    s.thread_type = 'AUTO'
    self._s = s
    self.fps = float(s.average_rate or s.guessed_rate or 0.0) or None
    self.num_frames = int(s.frames or 0) or None
    self.origin = float(self._c.start_time) / 1e6 if self._c.start_time is not None else 0.0
    dur = s.duration * s.time_base if s.duration is not None else (
        self._c.duration / 1e6 if self._c.duration else None)
    self.duration = float(dur) if dur is not None else None
    self.decoded = 0
    self.error = None

  def __iter__(self):
    import av  # noqa: PLC0415

    i = -1
    try:
      for frame in self._c.decode(self._s):
        i += 1
        self.decoded = i + 1
        if i % self.stride:
          continue
        t = frame.time - self.origin if frame.time is not None else i / (self.fps or 1.0)
        yield i, float(t), frame.to_ndarray(format='rgb24')
    except (av.error.FFmpegError, OSError, ValueError) as e:
      if i <= 0:
        raise InputError(f'{self.path}: cannot decode ({type(e).__name__}: {e})') from None
      self.error = f'decoding stopped after frame {i} ({type(e).__name__}: {e}); earlier frames kept'
      return
    if self.num_frames and self.decoded < self.num_frames:
      # The index is intact but the data ends early (a download cut short): FFmpeg just stops.
      self.error = (f'decoded {self.decoded} of the {self.num_frames} frames the container '
                    'declares: the file is probably truncated; the decoded frames are kept')

  def close(self):
    self._c.close()


# --- One input ------------------------------------------------------------------------------------


class _Feeder:
  """Turns face crops into model batches (frames, or windows of one track) and keeps dispatched
  batches in flight while the next frames are decoded (jax dispatch is asynchronous)."""

  def __init__(self, predictor: Predictor, va_rows: list, q_rows: list):
    self.p, self.va, self.q = predictor, va_rows, q_rows
    self.T = predictor.window
    self.items, self.targets = [], []  # inputs and their rows
    self.tracks: dict[int, list] = {}
    self.inflight = []

  def add(self, face_id, row, inputs):
    if not self.T:
      self._queue([row], inputs)
      return
    buf = self.tracks.setdefault(face_id, [])
    buf.append((row, inputs))
    if len(buf) == self.T:
      self.end_track(face_id)

  def end_track(self, face_id):
    buf = self.tracks.pop(face_id, None)
    if not buf:
      return
    rows = [r for r, _ in buf]
    frames = [x for _, x in buf] + [buf[-1][1]] * (self.T - len(buf))  # pad: repeat the last
    self._queue(rows, {k: np.stack([f[k] for f in frames]) for k in frames[0]})

  def _queue(self, rows, inputs):
    self.items.append(inputs)
    self.targets.append(rows)
    if len(self.items) == self.p.batch_size:
      self._dispatch()

  def _dispatch(self):
    if self.items:
      self.inflight.append((self.p.dispatch(self.items), self.targets))
      self.items, self.targets = [], []
    while len(self.inflight) > 2:  # bounded: at most two batches wait on the device
      self._collect()

  def _collect(self):
    handle, targets = self.inflight.pop(0)
    out = self.p.result(handle)
    for j, rows in enumerate(targets):
      va = out['va'][j].reshape(-1, 2)
      q = out['quadrant'][j].reshape(-1) if 'quadrant' in out else None
      for k, r in enumerate(rows):
        self.va[r] = va[k]
        if q is not None:
          self.q[r] = int(q[k])

  def finish(self):
    for fid in list(self.tracks):
      self.end_track(fid)
    self._dispatch()
    while self.inflight:
      self._collect()


def smooth_track(values_Nx2: np.ndarray, method: str, window: int) -> np.ndarray:
  """EMA (causal, alpha = 2 / (window + 1)) or centred moving average (shrinking at the ends)."""
  v = np.asarray(values_Nx2, np.float64)
  if method == 'none' or len(v) < 2 or window < 2:
    return v
  if method == 'ema':
    alpha = 2.0 / (window + 1.0)
    out = np.empty_like(v)
    out[0] = v[0]
    for i in range(1, len(v)):
      out[i] = alpha * v[i] + (1 - alpha) * out[i - 1]
    return out
  half_lo, half_hi = (window - 1) // 2, window // 2
  c = np.concatenate([np.zeros((1, 2)), np.cumsum(v, 0)])
  idx = np.arange(len(v))
  lo, hi = np.maximum(idx - half_lo, 0), np.minimum(idx + half_hi + 1, len(v))
  return (c[hi] - c[lo]) / (hi - lo)[:, None]


class _ProgressLine:
  def __init__(self, name, total, enabled):
    self.name, self.total, self.enabled = name, total, enabled
    self.tty = sys.stderr.isatty()
    self.t0 = self.last = time.time()

  def update(self, n, final=False):
    now = time.time()
    if not self.enabled or (not final and now - self.last < (0.5 if self.tty else 10.0)):
      return
    self.last = now
    rate = n / max(now - self.t0, 1e-9)
    tot = f'/{self.total}' if self.total else ''
    end = '\n' if final or not self.tty else ''
    print(f'\r{self.name}: {n}{tot} frames, {rate:.1f} frames/s', end=end, file=sys.stderr,
          flush=True)


def _stats(x) -> dict:
  x = np.asarray(x, np.float64)
  return {'mean': float(x.mean()), 'std': float(x.std()), 'min': float(x.min()),
          'max': float(x.max())}


def predict_file(predictor: Predictor, path: str, out_dir: str, opts: Options, stem: str | None = None
                 ) -> dict:
  """Predicts one image or video; writes DIR/<stem>.csv, .json and plots; returns the summary."""
  from vaflax import plots  # noqa: PLC0415

  opts.check()
  path = os.fspath(path)
  stem = stem or os.path.splitext(os.path.basename(path))[0]
  ext = os.path.splitext(path)[1].lower()
  t_start = time.time()
  is_image = ext in IMAGE_EXTS
  stream, audio = None, None
  if is_image:
    frames_iter = iter([(0, 0.0, read_image(path))])
    fps, total = None, 1
  else:
    stream = VideoStream(path, opts.frame_stride)
    fps, total = stream.fps, stream.num_frames
    frames_iter = iter(stream)
    if predictor.uses_audio:
      audio = _read_audio(path, predictor.sample_rate)

  cols = {k: [] for k in ('frame', 'time_s', 'face_id', 'x', 'y', 'w', 'h')}
  va_rows, q_rows = [], []
  feeder = _Feeder(predictor, va_rows, q_rows)
  tracker = FaceTracker(max_age=opts.max_age)
  finder = FaceFinder(opts.min_face, opts.detect_every, opts.faces == 'largest')
  progress = _ProgressLine(stem, (total // opts.frame_stride + (total % opts.frame_stride > 0))
                           if total else None, opts.progress and not is_image)
  processed = with_face = 0
  try:
    for k, t, rgb in frames_iter:
      processed += 1
      found = finder(rgb, tracker.live_boxes())
      assigned, dropped = tracker.update(found)
      for fid in dropped:
        feeder.end_track(fid)
      with_face += bool(assigned)
      for fid, box in assigned:
        chunk = None
        if predictor.uses_audio:
          chunk = (audio.chunk(t, predictor.audio_samples)[0] if audio is not None
                   else np.zeros((predictor.audio_samples,), np.float32))
        inputs = predictor.preprocess(predictor.crop(rgb, box), chunk)
        row = len(va_rows)
        va_rows.append(None)
        q_rows.append(None)
        for name, v in zip(('frame', 'time_s', 'face_id', 'x', 'y', 'w', 'h'),
                           (k, t, fid) + box, strict=True):
          cols[name].append(v)
        feeder.add(fid, row, inputs)
      progress.update(processed)
    feeder.finish()
  finally:
    if stream is not None:
      stream.close()
  progress.update(processed, final=True)

  va = np.array(va_rows, np.float64).reshape(-1, 2)
  fid = np.asarray(cols['face_id'], np.int64)
  if opts.smooth != 'none':
    for f in np.unique(fid):
      sel = np.nonzero(fid == f)[0]  # rows are in frame order within a track
      va[sel] = smooth_track(va[sel], opts.smooth, opts.smooth_window)
  va = np.clip(va, -1.0, 1.0)
  quad = circumplex.va_to_quadrant(va) if len(va) else np.zeros((0,), np.int32)
  has_head = bool(q_rows) and q_rows[0] is not None

  os.makedirs(out_dir, exist_ok=True)
  files = {'csv': os.path.join(out_dir, f'{stem}.csv')}
  with open(files['csv'], 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(list(CSV_COLUMNS) + (['quadrant_head'] if has_head else []))
    for i in range(len(va)):
      row = [cols['frame'][i], f'{cols["time_s"][i]:.4f}', cols['face_id'][i]]
      row += [f'{cols[c][i]:g}' for c in ('x', 'y', 'w', 'h')]
      row += [f'{va[i, 0]:.4f}', f'{va[i, 1]:.4f}', circumplex.QUADRANT_NAMES[quad[i]]]
      if has_head:
        row.append(circumplex.QUADRANT_NAMES[q_rows[i]])
      w.writerow(row)

  names = circumplex.QUADRANT_NAMES[:circumplex.NUM_QUADRANTS]
  elapsed = time.time() - t_start
  summary = {
      'input': os.path.abspath(path), 'kind': 'image' if is_image else 'video',
      'workdir': predictor.workdir, 'checkpoint_step': predictor.step,
      'model_name': predictor.config.model_name,
      'window': predictor.window, 'audio': predictor.uses_audio, 'flip_tta': predictor.flip,
      'fps': fps, 'duration_s': stream.duration if stream is not None else None,
      'frames_decoded': stream.decoded if stream is not None else 1,
      'frame_stride': opts.frame_stride, 'frames_processed': processed,
      'frames_with_face': with_face, 'frames_without_face': processed - with_face,
      'faces': opts.faces, 'num_rows': len(va), 'num_face_ids': len(np.unique(fid)),
      'smoothing': {'method': opts.smooth, 'window': opts.smooth_window},
      'crop': {'margin': predictor.crop_margin, 'size': predictor.crop_size,
               'pp_eval': predictor.pp_spec},
      'seconds': elapsed, 'frames_per_second': processed / max(elapsed, 1e-9),
  }
  if len(va):
    share = np.bincount(quad, minlength=len(names))[: len(names)] / len(quad)
    summary.update({
        'valence': _stats(va[:, 0]), 'arousal': _stats(va[:, 1]),
        'quadrant_share': {n: float(s) for n, s in zip(names, share, strict=True)},
        'dominant_quadrant': names[int(np.argmax(share))],
        'per_face': [{'face_id': int(f), 'frames': int(np.sum(fid == f)),
                      'valence_mean': float(va[fid == f, 0].mean()),
                      'arousal_mean': float(va[fid == f, 1].mean())} for f in np.unique(fid)],
    })
  else:
    summary.update({'valence': None, 'arousal': None, 'quadrant_share': None,
                    'dominant_quadrant': None, 'per_face': [],
                    'note': f'no face found in any of the {processed} processed frames'})
  if stream is not None and stream.error:
    summary['warning'] = stream.error

  if len(va) and opts.plots:
    main_id = int(np.bincount(fid).argmax())  # the face seen in the most frames
    sel = fid == main_id
    times = np.asarray(cols['time_s'], np.float64)[sel]
    label = f'{stem}, face {main_id}'
    files['trajectory_png'] = plots.circumplex_trajectory(
        os.path.join(out_dir, f'{stem}_trajectory.png'), va[sel], times, title=label)
    if not is_image:
      files['va_time_png'] = plots.va_over_time(
          os.path.join(out_dir, f'{stem}_va_time.png'), times, va[sel], title=label)
  if opts.overlay and not is_image:
    files['overlay_mp4'] = write_overlay(path, os.path.join(out_dir, f'{stem}_overlay.mp4'),
                                         cols, va, quad, fps)
  summary['files'] = files
  files['json'] = os.path.join(out_dir, f'{stem}.json')
  with open(files['json'], 'w') as f:
    json.dump(summary, f, indent=2)
  return summary


def _read_audio(path, sample_rate):
  from vaflax.data import video_io  # noqa: PLC0415

  try:
    return video_io.read_audio(path, sample_rate=sample_rate)
  except Exception as e:  # noqa: BLE001 -- a broken audio track leaves the video usable
    print(f'note: {path}: audio unreadable ({type(e).__name__}); using silence', file=sys.stderr)
    return None


_COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60)]


def write_overlay(path, out_path, cols, va, quad, fps) -> str:
  """Re-decodes the video and draws each face box with its VA and quadrant (last values held
  on frames skipped by --frame_stride)."""
  import av  # noqa: PLC0415
  import cv2  # noqa: PLC0415

  by_frame: dict[int, list[int]] = {}
  for i, k in enumerate(cols['frame']):
    by_frame.setdefault(int(k), []).append(i)
  current: list[int] = []
  with av.open(os.fspath(path)) as src, av.open(out_path, 'w') as out:
    vs = None
    for k, frame in enumerate(src.decode(video=0)):
      rgb = np.ascontiguousarray(frame.to_ndarray(format='rgb24'))
      if vs is None:
        vs = out.add_stream('libx264', rate=int(round(fps or 25)))
        vs.width, vs.height = rgb.shape[1] // 2 * 2, rgb.shape[0] // 2 * 2
        vs.pix_fmt = 'yuv420p'
        vs.options = {'crf': '23', 'preset': 'veryfast'}
      if k in by_frame:
        current = by_frame[k]
      elif cols['frame'] and k - max(cols['frame'][i] for i in current or [0]) > 30:
        current = []
      for i in current:
        x, y, w, h = (int(round(cols[c][i])) for c in ('x', 'y', 'w', 'h'))
        colour = _COLOURS[int(cols['face_id'][i]) % len(_COLOURS)]
        cv2.rectangle(rgb, (x, y), (x + w, y + h), colour, 2)
        text = f'#{cols["face_id"][i]} V {va[i, 0]:+.2f} A {va[i, 1]:+.2f}'
        cv2.putText(rgb, text, (x, max(12, y - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1,
                    cv2.LINE_AA)
        cv2.putText(rgb, circumplex.QUADRANT_NAMES[quad[i]], (x, y + h + 14),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
      rgb = rgb[: vs.height, : vs.width]
      for p in vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format='rgb24')):
        out.mux(p)
    if vs is not None:
      for p in vs.encode():
        out.mux(p)
  return out_path


# --- Inputs, CLI ----------------------------------------------------------------------------------


def list_inputs(path) -> tuple[list[str], list[str]]:
  """(media files, ignored files) of a file or a folder (not recursive), sorted."""
  path = os.fspath(path)
  if os.path.isfile(path):
    return [path], []
  if not os.path.isdir(path):
    raise InputError(f'--input={path}: no such file or folder')
  media, ignored = [], []
  for name in sorted(os.listdir(path)):
    p = os.path.join(path, name)
    if not os.path.isfile(p) or name.startswith('.'):
      continue
    (media if name.lower().endswith(IMAGE_EXTS + VIDEO_EXTS) else ignored).append(p)
  return media, ignored


def _stems(files) -> list[str]:
  """Output names: the file stem, or stem_ext when two inputs share a stem."""
  stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
  return [s if stems.count(s) == 1 else f'{s}_{os.path.splitext(f)[1].lstrip(".").lower()}'
          for s, f in zip(stems, files, strict=True)]


def run(predictor: Predictor, input_path, out_dir, opts: Options) -> tuple[list[dict], list[str]]:
  """Predicts every input; returns the summaries and one 'path: reason' per input that failed."""
  files, ignored = list_inputs(input_path)
  if os.path.isdir(input_path) and not files:
    raise InputError(f'--input={input_path}: no image or video file in this folder')
  for p in ignored:
    print(f'skipped {p}: not an image or video extension', file=sys.stderr)
  summaries, errors = [], []
  for path, stem in zip(files, _stems(files), strict=True):
    try:
      summaries.append(predict_file(predictor, path, out_dir, opts, stem=stem))
    except InputError as e:
      errors.append(str(e))
      print(f'error: {e}', file=sys.stderr)
  return summaries, errors


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  overrides = [a[len('--config.'):] for a in argv if a.startswith('--config.')]
  rest = [a for a in argv if not a.startswith('--config.')]
  d = Options()
  ap = argparse.ArgumentParser(prog='python -m vaflax.predict', description=__doc__.split('\n')[0])
  ap.add_argument('--workdir', required=True, help='the trained run')
  ap.add_argument('--input', required=True, help='an image, a video or a folder of them')
  ap.add_argument('--output', required=True, help='output folder')
  ap.add_argument('--frame_stride', type=int, default=d.frame_stride)
  ap.add_argument('--smooth', default=d.smooth, choices=('none', 'ema', 'mean'))
  ap.add_argument('--smooth_window', type=int, default=d.smooth_window)
  ap.add_argument('--min_face', type=int, default=d.min_face, help='smallest face side (pixels)')
  ap.add_argument('--faces', default=d.faces, choices=('largest', 'all'))
  ap.add_argument('--detect_every', type=int, default=d.detect_every)
  ap.add_argument('--max_age', type=int, default=d.max_age)
  ap.add_argument('--overlay', action='store_true', help='also write <stem>_overlay.mp4')
  ap.add_argument('--no_plots', action='store_true')
  ap.add_argument('--flip_tta', action='store_true')
  ap.add_argument('--batch_size', type=int, default=32)
  ap.add_argument('--checkpoint_step', type=int, default=None)
  ap.add_argument('--crop_size', type=int, default=0, help="0: the training dataset's")
  ap.add_argument('--crop_margin', type=float, default=DEFAULT_MARGIN)
  ap.add_argument('--data_dir', default=None, help="TFDS data dir (for the dataset's crop size)")
  ap.add_argument('--quiet', action='store_true', help='no progress line')
  a = ap.parse_args(rest)
  opts = Options(frame_stride=a.frame_stride, smooth=a.smooth, smooth_window=a.smooth_window,
                 min_face=a.min_face, faces=a.faces, detect_every=a.detect_every,
                 max_age=a.max_age, overlay=a.overlay, plots=not a.no_plots,
                 progress=not a.quiet)
  try:
    opts.check()
    list_inputs(a.input)  # fail on a missing input before loading the model
    predictor = Predictor(a.workdir, checkpoint_step=a.checkpoint_step, batch_size=a.batch_size,
                          flip=a.flip_tta, crop_size=a.crop_size or None, crop_margin=a.crop_margin,
                          data_dir=a.data_dir, overrides=overrides)
    summaries, errors = run(predictor, a.input, a.output, opts)
  except (InputError, FileNotFoundError, PermissionError, ValueError, KeyError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  for s in summaries:
    what = (f"dominant {s['dominant_quadrant']}, V {s['valence']['mean']:+.3f} "
            f"A {s['arousal']['mean']:+.3f}" if s['num_rows'] else s['note'])
    print(f"{s['input']}: {s['frames_with_face']}/{s['frames_processed']} frames with a face, "
          f"{what} -> {s['files']['csv']}")
  if errors:
    print(f'{len(errors)} of {len(summaries) + len(errors)} inputs failed:', file=sys.stderr)
    for e in errors:
      print(f'  {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
