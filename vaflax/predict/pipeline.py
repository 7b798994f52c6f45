"""One input through predict: frames -> faces -> tracks -> crops -> model -> outputs."""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import numpy as np

from vaflax import circumplex
from vaflax.predict import decode, detection, outputs, tracking
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
  progress: bool = True

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


def _read_audio(path, sample_rate):
  from vaflax.data import video_io  # noqa: PLC0415

  try:
    return video_io.read_audio(path, sample_rate=sample_rate)
  except Exception as e:  # noqa: BLE001 -- a broken audio track leaves the video usable
    print(f'note: {path}: audio unreadable ({type(e).__name__}); using silence', file=sys.stderr)
    return None


def predict_file(predictor: Predictor, path, out_dir: str, opts: Options, stem: str | None = None
                 ) -> dict:
  """Predicts one image or video; writes DIR/<stem>.csv, .json and plots; returns the summary."""
  opts.check()
  path = os.fspath(path)
  stem = stem or os.path.splitext(os.path.basename(path))[0]
  t_start = time.time()
  source = decode.open_input(path, opts.frame_stride)
  is_video = source.kind == 'video'
  audio = _read_audio(path, predictor.sample_rate) if is_video and predictor.uses_audio else None

  rows: list[outputs.Row] = []
  batcher = Batcher(predictor)
  tracker = tracking.FaceTracker(max_age=opts.max_age)
  finder = detection.FaceFinder(opts.min_face, opts.detect_every, opts.faces == 'largest',
                                opts.detector)
  total = source.num_frames
  progress = _ProgressLine(stem, -(-total // opts.frame_stride) if total else None,
                           opts.progress and is_video)
  processed = with_face = 0
  try:
    for k, t, rgb in source:
      processed += 1
      found = finder(rgb, tracker.live_boxes())
      assigned, dropped = tracker.update(found)
      for fid in dropped:
        batcher.end_track(fid)
      with_face += bool(assigned)
      for fid, box in assigned:
        inputs = predictor.preprocess(predictor.crop(rgb, box), predictor.audio_chunk(audio, t))
        batcher.add(fid, inputs)
        rows.append(outputs.Row(k, t, fid, *box))
      progress.update(processed)
    va, head = batcher.finish()
  finally:
    source.close()
  progress.update(processed, final=True)

  face_id = np.array([r.face_id for r in rows], np.int64)
  va = np.clip(tracking.smooth_tracks(va, face_id, opts.smooth, opts.smooth_window), -1.0, 1.0)
  quad = circumplex.va_to_quadrant(va) if len(va) else np.zeros((0,), np.int32)

  os.makedirs(out_dir, exist_ok=True)
  files = {'csv': outputs.write_csv(os.path.join(out_dir, f'{stem}.csv'), rows, va, quad, head)}
  elapsed = time.time() - t_start
  summary = {
      'input': os.path.abspath(path), 'kind': source.kind,
      'workdir': predictor.workdir, 'checkpoint_step': predictor.step,
      'model_name': predictor.config.model_name,
      'window': predictor.window, 'audio': predictor.uses_audio, 'flip_tta': predictor.flip,
      'fps': source.fps, 'duration_s': source.duration, 'frames_decoded': source.decoded,
      'frame_stride': opts.frame_stride, 'frames_processed': processed,
      'frames_with_face': with_face, 'frames_without_face': processed - with_face,
      'faces': opts.faces, 'num_rows': len(va), 'num_face_ids': len(np.unique(face_id)),
      'smoothing': {'method': opts.smooth, 'window': opts.smooth_window},
      'crop': {'margin': predictor.crop_margin, 'size': predictor.crop_size,
               'pp_eval': predictor.pp_spec},
      'seconds': elapsed, 'frames_per_second': processed / max(elapsed, 1e-9),
  }
  summary.update(outputs.va_summary(va, quad, face_id, processed))
  if source.warning:
    summary['warning'] = source.warning
  if len(va) and opts.plots:
    files.update(outputs.write_plots(out_dir, stem, rows, va, is_video))
  if opts.overlay and is_video:
    files['overlay_mp4'] = outputs.write_overlay(
        path, os.path.join(out_dir, f'{stem}_overlay.mp4'), rows, va, quad, source.fps)
  summary['files'] = files
  files['json'] = os.path.join(out_dir, f'{stem}.json')
  outputs.write_json(files['json'], summary)
  return summary
