"""One input through predict: frames -> faces -> tracks -> crops -> model -> outputs.

Three steps, so that many inputs can share them (vaflax/predict/collection.py): `scan` (decode,
detect, track, crop, preprocess; a decoding thread) hands each processed `Frame` to a callback;
a `Clip` gathers one input's frames and queues its crops on a Batcher (the model thread);
`finish_clip` writes the outputs once the Batcher has its predictions. collection.py schedules
the three for any number of inputs, one included (`collection.predict_file`).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys
import time
from typing import NamedTuple

import numpy as np

from vaflax import calibration, circumplex, media, quality
from vaflax.predict import decode, detection, outputs, overlay, tracking
from vaflax.predict.batching import Batcher
from vaflax.predict.model import Predictor


@dataclasses.dataclass
class Options:
  frame_stride: int = 1  # process every k-th decoded frame
  smooth: str = 'none'  # none | ema | mean (per face track, over processed frames)
  smooth_window: int = 5  # mean: centred window length; ema: span (alpha = 2 / (span + 1))
  min_face: int = 40  # smallest face side in source pixels (smaller ones carry little expression)
  faces: str = 'largest'  # largest: one face per frame; all: every face
  detect_every: int = 10  # full-frame detection period (processed frames); between, near tracks
  detector: str = 'blazeface'  # blazeface (CNN with landmarks) | haar (OpenCV fallback)
  max_age: int = 5  # processed frames a face track survives without being found
  overlay: bool = False  # also write <stem>_overlay.mp4
  plots: bool = True
  save_crops: bool = False  # also write each model-input crop to <stem>_crops/<frame>_<face_id>.png
  progress: bool = True  # predict_file: a line on stderr when its input is done
  max_pixels: int = media.MAX_PIXELS  # larger images and video frames are errors (vaflax/media.py)

  def check(self):
    if self.frame_stride < 1:
      raise ValueError(f'--frame_stride must be >= 1, got {self.frame_stride}')
    if self.smooth not in ('none', 'ema', 'mean'):
      raise ValueError(f'--smooth must be none, ema or mean, got {self.smooth!r}')
    if self.smooth_window < 1:
      raise ValueError(f'--smooth_window must be >= 1, got {self.smooth_window}')
    if self.detector not in detection.DETECTORS:
      raise ValueError(f'--detector must be one of {detection.DETECTORS}, got {self.detector!r}')
    if self.faces not in ('largest', 'all'):
      raise ValueError(f'--faces must be largest or all, got {self.faces!r}')
    if self.detect_every < 1 or self.max_age < 0 or self.min_face < 1:
      raise ValueError('--detect_every and --min_face must be >= 1, --max_age >= 0')
    if self.max_pixels < 1:
      raise ValueError(f'--max_pixels must be >= 1, got {self.max_pixels}')


def _read_audio(path, sample_rate):
  from vaflax.data import video_io  # noqa: PLC0415

  try:
    return video_io.read_audio(path, sample_rate=sample_rate)
  except Exception as e:  # noqa: BLE001 -- a broken audio track leaves the video usable
    print(f'note: {outputs.printable(path)}: audio unreadable ({type(e).__name__}); using '
          'silence', file=sys.stderr)
    return None


# Frames of a video whose faces are detected in one batched call (when the detector sees whole
# frames: FaceFinder.detect_frames). 16 frames of 1080p RGB are 100 MB held at once.
DETECT_BATCH = 16


class Frame(NamedTuple):
  """One processed frame: its faces (face_id, Face, model inputs, quality.measure of the crop)
  and the tracks it ended."""

  index: int
  time_s: float
  faces: list
  dropped: list


def scan(predictor: Predictor, path, opts: Options, emit, crops_dir: str | None = None) -> dict:
  """Decodes `path`, finds, tracks and crops its faces, calls `emit(Frame)` per processed frame;
  returns what the source says of itself (kind, fps, duration, decoded frames, warning) and
  when the scan started. Raises decode.InputError when the input cannot be read at all."""
  started = time.time()
  source = decode.open_input(path, opts.frame_stride, opts.max_pixels)
  is_video = source.kind == 'video'
  audio = _read_audio(path, predictor.sample_rate) if is_video and predictor.uses_audio else None
  tracker = tracking.FaceTracker(max_age=opts.max_age)
  finder = detection.FaceFinder(opts.min_face, opts.detect_every, opts.faces == 'largest',
                                opts.detector)
  try:
    for chunk in itertools.batched(source, DETECT_BATCH if is_video else 1):
      detected = finder.detect_frames([rgb for _, _, rgb in chunk],
                                      pad_to=DETECT_BATCH if is_video else 0)
      for i, (k, t, rgb) in enumerate(chunk):
        emit(process_frame(predictor, finder, tracker, k, t, rgb, audio, crops_dir,
                      None if detected is None else detected[i]))
  finally:
    source.close()
  return {'kind': source.kind, 'fps': source.fps, 'duration_s': source.duration,
          'frames_decoded': source.decoded, 'warning': source.warning, 'note': source.note,
          'started': started}


def process_frame(predictor, finder, tracker, k, t, rgb, audio, crops_dir, detected) -> Frame:
  """One decoded frame: its faces found (or given whole-frame `detected`), tracked and cropped."""
  found = finder(rgb, tracker.live_boxes(), detected)
  assigned, dropped = tracker.update(found)
  faces = []
  for (fid, box), face in zip(assigned, found, strict=True):
    crop, roll = predictor.crop(rgb, box, face.landmarks)  # aligned when the run's spec says
    if crops_dir:
      outputs.write_crop(os.path.join(crops_dir, f'{k}_{fid}.png'), crop)
    inputs = predictor.preprocess(crop, predictor.audio_chunk(audio, t), roll)
    faces.append((fid, face, inputs, quality.measure(crop, face.box, face.landmarks, face.score)))
  return Frame(k, t, faces, dropped)


class Clip:
  """One input's rows as its frames arrive on the model side; `key` tells its tracks apart
  from other clips' on a shared Batcher."""

  def __init__(self, path, stem: str, out_dir: str, key=0):
    self.path, self.stem, self.out_dir, self.key = os.fspath(path), stem, out_dir, key
    self.rows: list[outputs.Row] = []
    self.targets: list[int] = []  # the Batcher row of each face row
    self.difficulty = None  # (face rows, F) a scaled calibration's features (Batcher.take_difficulty)
    self._live: set[int] = set()
    self.processed = self.with_face = 0
    self.t_start = time.time()

  def add(self, batcher: Batcher, frame: Frame):
    self.processed += 1
    self.with_face += bool(frame.faces)
    for fid in frame.dropped:
      self._live.discard(fid)
    for row, target in queue_frame(batcher, frame, self.key):
      self.rows.append(row)
      if target is not None:
        self.targets.append(target)
        self._live.add(row.face_id)

  def end(self, batcher: Batcher):
    """The input is fully scanned: its tracks' partial windows go to the model."""
    for fid in sorted(self._live):
      batcher.end_track((self.key, fid))
    self._live.clear()


def queue_frame(batcher: Batcher, frame: Frame, key=0) -> list[tuple[outputs.Row, int | None]]:
  """A processed frame's CSV rows, each with its Batcher row (None: the row of a frame without a
  face): the tracks the frame ended send their partial windows, its faces are queued. Every
  processed frame has a row (issue 15)."""
  for fid in frame.dropped:
    batcher.end_track((key, fid))
  if not frame.faces:
    return [(outputs.Row(frame.index, frame.time_s, outputs.NO_FACE), None)]
  return [(outputs.Row(frame.index, frame.time_s, fid, *face.box, float(face.score),
                       face.landmarks, qual), batcher.add((key, fid), inputs))
          for fid, face, inputs, qual in frame.faces]


def source_stat(path) -> dict:
  """What says an input changed since its outputs were written (vaflax/predict/collection.py)."""
  st = os.stat(path)
  return {'size': st.st_size, 'mtime_ns': st.st_mtime_ns}


def error_summary(path, stem: str, out_dir: str, error: str, rel: str | None = None) -> dict:
  """The JSON of an input that gave no frame: status 'error' and the reason."""
  path = os.fspath(path)
  summary = {'input': os.path.abspath(path), 'path': rel or os.path.basename(path),
             'status': 'error', 'error': error, 'frames_processed': 0, 'frames_with_face': 0,
             'duration_s': None, 'valence': None, 'arousal': None, 'quadrant_share': None,
             'dominant_quadrant': None, 'source': source_stat(path) if os.path.exists(path) else None}
  json_path = os.path.join(out_dir, f'{stem}.json')
  summary['files'] = {'json': json_path}
  try:
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    outputs.write_json(json_path, summary)
  except (OSError, ValueError) as e:  # a name too long for the file system, a NUL in a list
    # file's entry: the row still says why
    summary['error'] += (f'; its JSON could not be written ({type(e).__name__}: '
                         f'{getattr(e, "strerror", None) or e})')
    del summary['files']['json']
  return summary


class Resolved(NamedTuple):
  """A clip's per-row arrays once the model has spoken; rows without a face: NaN VA, -1 ids."""

  va: np.ndarray  # (rows, 2), smoothed per track and clipped to [-1, 1]
  quadrant: np.ndarray  # (rows,) circumplex.va_to_quadrant of va
  head: np.ndarray | None  # (rows,) the model's quadrant head, when it has one
  face_id: np.ndarray  # (rows,)
  has_face: np.ndarray  # (rows,) bool
  lo: np.ndarray | None = None  # (rows, 2) calibrated interval around va (NaN without a face);
  hi: np.ndarray | None = None  # None when the run has no calibration


def resolve(clip: Clip, va_face, head_face, opts: Options,
            cal: calibration.Calibration | None = None) -> Resolved:
  """The clip's rows with the Batcher's predictions of its face rows (`Batcher.take`), and with
  `cal` each face row's interval at its coverage around the reported (smoothed) VA."""
  n = len(clip.rows)
  face_id = np.array([r.face_id for r in clip.rows], np.int64).reshape(-1)
  has_face = face_id != outputs.NO_FACE
  va = np.full((n, 2), np.nan)
  if has_face.any():
    va[has_face] = np.clip(tracking.smooth_tracks(np.asarray(va_face).reshape(-1, 2),
                                                  face_id[has_face], opts.smooth,
                                                  opts.smooth_window), -1.0, 1.0)
  quad = circumplex.va_to_quadrant(va).astype(np.int64).reshape(-1)  # -1 where no face
  head = None
  if head_face is not None:
    head = np.full((n,), -1, np.int64)
    head[has_face] = head_face
  lo = hi = None
  if cal is not None:
    lo, hi = np.full((n, 2), np.nan), np.full((n, 2), np.nan)
    if has_face.any():
      lo[has_face], hi[has_face] = cal.intervals(va[has_face], clip.difficulty,
                                                 feature_names=quality.DIFFICULTY_FEATURES)
  return Resolved(va, quad, head, face_id, has_face, lo, hi)


def calibration_summary(cal: calibration.Calibration | None):
  """What the summary JSON says of the intervals: 'none', or where they come from."""
  if cal is None:
    return 'none'
  return {'method': cal.method, 'coverage': cal.coverage, 'split': cal.split, 'n': cal.n,
          'dataset': cal.dataset, 'checkpoint_step': cal.checkpoint_step}


def clip_confidence(res: Resolved, dominant: str | None) -> dict:
  """calibration.clip_quadrant of the clip's face rows for its reported quadrant; NaN / None
  without a calibration or a face."""
  f = res.has_face
  if res.lo is None or dominant is None or not f.any():
    return {'quadrant_confidence': None, 'uncertain': None}
  q = circumplex.QUADRANT_NAMES.index(dominant)
  return calibration.clip_quadrant(res.lo[f], res.hi[f], q)


def summarize(predictor: Predictor, clip: Clip, info: dict, res: Resolved, opts: Options,
              rel: str | None = None) -> dict:
  """The clip's JSON summary (without 'files')."""
  # The input's wall time, from the start of its decoding to its outputs (frames/s as a user
  # sees them; the first input's includes the compiles).
  elapsed = time.time() - info.get('started', clip.t_start)
  f = res.has_face
  status = 'partial' if info.get('warning') else 'no_face' if not clip.with_face else 'ok'
  summary = {
      'input': os.path.abspath(clip.path), 'path': rel or os.path.basename(clip.path),
      'status': status, 'error': info.get('warning') or '',
      'kind': info['kind'], 'source': source_stat(clip.path),
      'workdir': predictor.workdir, 'checkpoint_step': predictor.step,
      'model_name': predictor.config.model_name,
      'window': predictor.window, 'audio': predictor.uses_audio, 'flip_tta': predictor.flip,
      'fps': info['fps'], 'duration_s': info['duration_s'],
      'frames_decoded': info['frames_decoded'],
      'frame_stride': opts.frame_stride, 'frames_processed': clip.processed,
      'frames_with_face': clip.with_face, 'frames_without_face': clip.processed - clip.with_face,
      'faces': opts.faces, 'num_rows': int(f.sum()), 'csv_rows': len(clip.rows),
      'num_face_ids': len(np.unique(res.face_id[f])),
      'smoothing': {'method': opts.smooth, 'window': opts.smooth_window},
      'crop': {'margin': predictor.crop_margin, 'size': predictor.crop_size,
               'pp_eval': predictor.pp_spec},
      'seconds': elapsed, 'frames_per_second': clip.processed / max(elapsed, 1e-9),
  }
  summary.update(outputs.va_summary(res.va[f], res.quadrant[f], res.face_id[f], clip.processed))
  summary['calibration'] = calibration_summary(predictor.calibration)
  summary.update(clip_confidence(res, summary['dominant_quadrant']))
  if info.get('note'):  # e.g. the last frames of a whole clip missing (decode.py)
    summary['note'] = '; '.join(filter(None, (summary.get('note'), info['note'])))
  if info.get('warning'):
    summary['warning'] = info['warning']
  return summary


def finish_clip(predictor: Predictor, clip: Clip, info: dict, va_face, head_face, opts: Options,
                rel: str | None = None) -> dict:
  """Writes the clip's CSV, plots, overlay and, last, its JSON (the mark that it is complete);
  returns the summary. `va_face`, `head_face`: the Batcher's predictions of the face rows."""
  if not clip.processed:
    return error_summary(clip.path, clip.stem, clip.out_dir,
                         info.get('warning') or 'no frame could be decoded', rel)
  res = resolve(clip, va_face, head_face, opts, predictor.calibration)
  base = os.path.join(clip.out_dir, clip.stem)
  os.makedirs(os.path.dirname(base), exist_ok=True)
  files = {'csv': outputs.write_csv(base + '.csv', clip.rows, res.va, res.quadrant, res.head,
                                       res.lo, res.hi)}
  summary = summarize(predictor, clip, info, res, opts, rel)
  f = res.has_face
  face_rows = [r for r in clip.rows if r.face_id != outputs.NO_FACE]
  if face_rows and opts.plots:
    files.update(outputs.write_plots(clip.out_dir, clip.stem, face_rows, res.va[f],
                                     info['kind'] == 'video', clip_rows=clip.rows,
                                     duration_s=info.get('duration_s')))
  if opts.overlay and info['kind'] == 'video':
    files['overlay_mp4'] = overlay.write_overlay(clip.path, base + '_overlay.mp4', face_rows,
                                                 res.va[f], res.quadrant[f], info['fps'])
  if opts.save_crops and face_rows:
    files['crops_dir'] = base + '_crops'
  summary['files'] = files
  files['json'] = base + '.json'
  outputs.write_json(files['json'], summary)
  return summary


def crops_dir(out_dir: str, stem: str, opts: Options) -> str | None:
  return os.path.join(out_dir, f'{stem}_crops') if opts.save_crops else None
