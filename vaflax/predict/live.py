"""Predict on a live source: a stream on stdin (`--input=-`), a URL PyAV opens, or a camera.

A capture thread decodes frames as they arrive (vaflax/predict/decode.py, VideoFrames with
live=True) into a small bounded queue; the model thread takes them one at a time through
predict's own steps (pipeline.process_frame: detection, tracking, crop, preprocessing;
pipeline.queue_frame and the Batcher: the model) and writes each frame's rows as soon as its
predictions are back, flushed (outputs.csv_lines: the columns of file predict). When the model
falls behind, the queue keeps the newest frames: the oldest is dropped and counted, so memory
and latency stay bounded whatever the input rate. Smoothing is causal only (EMA per track,
`CausalEma`); the centred mean needs later frames and is refused.

Latency is measured per frame from the moment the decoder hands it over (its capture here) to
its rows flushed. SIGINT and SIGTERM end the run between frames: the CSV holds whole rows, the
summary line and DIR/<stem>.json say what was received, processed and dropped.
docs/deploy.md ("Live input") has the limits and measured numbers.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import signal
import sys
import threading
import time
import types

import numpy as np

from vaflax.predict import decode, detection, outputs, pipeline, tracking
from vaflax.predict.batching import Batcher

QUEUE_FRAMES = 4  # frames decoded and waiting for the model; more arriving drop the oldest
_END = object()  # the capture thread's last item: the stream ended (or failed)


class FrameQueue:
  """A bounded FIFO between the capture thread and the model: `put` on a full queue drops the
  oldest frame (newest wins) and counts it. Every frame put is received, and ends processed
  (taken by `get`) or dropped (pushed out, or still queued at `close`)."""

  def __init__(self, size: int = QUEUE_FRAMES):
    self.size = size
    self._items: collections.deque = collections.deque()
    self._cv = threading.Condition()
    self.received = self.dropped = self.peak = 0
    self._closed = self._ended = False

  def put(self, item) -> None:
    with self._cv:
      if self._closed:  # the run is over: frames still arriving are not its frames
        return
      self.received += 1
      if len(self._items) == self.size:
        self._items.popleft()
        self.dropped += 1
      self._items.append(item)
      self.peak = max(self.peak, len(self._items))
      self._cv.notify()

  def end(self) -> None:
    """The source has no more frames: `get` returns _END once the queue is empty."""
    with self._cv:
      self._ended = True
      self._cv.notify()

  def get(self, timeout: float):
    """The oldest queued frame; _END when the source ended and all were taken; None on
    timeout."""
    with self._cv:
      if not self._items and not self._ended:
        self._cv.wait(timeout)
      if self._items:
        return self._items.popleft()
      return _END if self._ended else None

  def close(self) -> None:
    """No more frames are taken: the queued ones count as dropped, later ones are ignored."""
    with self._cv:
      self._closed = True
      self.dropped += len(self._items)
      self._items.clear()


class LatencyHistogram:
  """Per-frame latencies in whole milliseconds (constant memory for a stream of any length;
  60 s and more in the last bin). Percentiles are nearest-rank."""

  def __init__(self, max_ms: int = 60_000):
    self.counts = np.zeros(max_ms + 1, np.int64)

  def add(self, seconds: float) -> None:
    self.counts[min(max(int(round(seconds * 1e3)), 0), len(self.counts) - 1)] += 1

  def percentile(self, p: float) -> float | None:
    n = int(self.counts.sum())
    if not n:
      return None
    rank = max(1, int(np.ceil(p / 100.0 * n)))
    return float(np.searchsorted(np.cumsum(self.counts), rank))


class CausalEma:
  """tracking.smooth_track(track, 'ema', window) one row at a time: each face track's EMA so far
  (alpha = 2 / (window + 1)), its first row as is; 'none' passes values through."""

  def __init__(self, method: str, window: int):
    if method not in ('none', 'ema'):
      raise ValueError(f'--smooth={method} is centred (it waits for later frames): live input '
                       'takes --smooth=ema (causal) or none')
    self.on = method == 'ema' and window >= 2
    self.alpha = 2.0 / (window + 1.0)
    self._last: dict[int, np.ndarray] = {}

  def __call__(self, face_id: int, va_2: np.ndarray) -> np.ndarray:
    if not self.on:
      return va_2
    prev = self._last.get(face_id)
    out = va_2 if prev is None else self.alpha * va_2 + (1 - self.alpha) * prev
    self._last[face_id] = out
    return out

  def end(self, face_id: int) -> None:
    self._last.pop(face_id, None)


def stem_of(source: str) -> str:
  """The outputs' name of a live source: stdin, the device's name (video0), or stream."""
  if source == '-':
    return 'stdin'
  if source.startswith('/dev/'):
    return os.path.basename(source) or 'device'
  return 'stream'


@dataclasses.dataclass
class Result:
  csv: str
  rows: int
  received: int
  processed: int
  dropped: int
  peak_queue: int
  p50_ms: float | None
  p95_ms: float | None
  stopped_by: str | None  # the signal that ended the run; None: the stream ended
  warning: str | None

  def line(self, latency: bool) -> str:
    s = (f'live: {self.received} frames received, {self.processed} processed, '
         f'{self.dropped} dropped')
    if latency:
      ms = lambda v: 'n/a' if v is None else f'{v:.0f} ms'  # noqa: E731
      s += f'; latency p50 {ms(self.p50_ms)}, p95 {ms(self.p95_ms)}'
    return s


def _capture(source, frames: FrameQueue, failed: list):
  """The capture thread: every decoded frame, with the time it arrived, onto the queue."""
  try:
    for k, t, rgb in source:
      frames.put((k, t, rgb, time.monotonic()))
  except Exception as e:  # noqa: BLE001 -- the run ends with what it has and says why
    failed.append(f'{type(e).__name__}: {e}')
  finally:
    frames.end()


class _Writer:
  """The CSV, written and flushed per frame: rows leave in order once their predictions (or, a
  frame without a face, nothing) are back."""

  def __init__(self, path, predictor, batcher: Batcher, opts, has_head: bool):
    import csv  # noqa: PLC0415

    self.predictor, self.batcher, self.has_head = predictor, batcher, has_head
    self.opts = dataclasses.replace(opts, smooth='none')  # smoothed here, causally
    self.ema = CausalEma(opts.smooth, opts.smooth_window)
    self.file = open(path, 'w', newline='')  # noqa: SIM115 -- open for the whole stream
    self.csv = csv.writer(self.file)
    self.csv.writerow(outputs.csv_header(has_head))
    self.file.flush()
    self.pending: collections.deque = collections.deque()  # (row, target, captured at | None)
    self.rows = 0
    self.latency = LatencyHistogram()

  def add(self, frame: pipeline.Frame, captured: float):
    for fid in frame.dropped:
      self.ema.end(fid)
    for j, (row, target) in enumerate(pipeline.queue_frame(self.batcher, frame)):
      self.pending.append((row, target, captured if j == 0 else None))

  def write_ready(self):
    ready = []
    while self.pending and (self.pending[0][1] is None
                            or self.batcher.resolved([self.pending[0][1]])):
      ready.append(self.pending.popleft())
    if not ready:
      return
    rows = [r for r, _, _ in ready]
    targets = [t for _, t, _ in ready if t is not None]
    va, head = self.batcher.take(targets)
    # The rows' arrays through pipeline.resolve, as a file's clip (smoothing done above).
    block = types.SimpleNamespace(rows=rows, difficulty=self.batcher.take_difficulty(targets))
    smoothed = np.array([self.ema(r.face_id, v) for r, v in
                         zip((r for r in rows if r.face_id != outputs.NO_FACE), va, strict=True)],
                        np.float64).reshape(-1, 2)
    res = pipeline.resolve(block, smoothed, head, self.opts, self.predictor.calibration)
    if self.has_head and res.head is None:
      res = res._replace(head=np.full((len(rows),), -1, np.int64))
    self.csv.writerows(outputs.csv_lines(rows, res.va, res.quadrant,
                                         res.head if self.has_head else None, res.lo, res.hi))
    self.file.flush()
    now = time.monotonic()
    for _, _, captured in ready:
      if captured is not None:
        self.latency.add(now - captured)
    self.rows += len(rows)

  def finish(self, live_tracks):
    """The stream is over: the live tracks' partial windows go to the model, every row out."""
    for fid in live_tracks:
      self.batcher.end_track((0, fid))
    self.batcher.flush()
    self.write_ready()
    self.file.close()


def warm_up(predictor, finder: detection.FaceFinder, min_face: int) -> bool:
  """Compiles the model and the detector before the stream starts (a compile mid-stream would
  drop seconds of frames); returns whether the model has a quadrant head (a CSV column)."""
  crop = np.zeros((predictor.crop_size, predictor.crop_size, 3), np.uint8)
  b = Batcher(predictor)
  b.add(('warm-up', 0), predictor.preprocess(crop, None))
  b.end_track(('warm-up', 0))
  b.flush()
  finder.detector(np.zeros((360, 640, 3), np.uint8), min_face)
  return b.has_quadrant


def run(predictor, source: str, out_dir: str, opts: pipeline.Options, *, overwrite: bool = False,
        log=None, stop: threading.Event | None = None) -> Result:
  """Predicts a live source until it ends or `stop` is set (SIGINT and SIGTERM set it when this
  runs in the main thread); writes OUT/<stem>.csv per frame and OUT/<stem>.json at the end.
  Raises decode.InputError when the source cannot be opened, ValueError for options live input
  cannot honour."""
  opts.check()
  log = log or (lambda msg: None)
  CausalEma(opts.smooth, opts.smooth_window)  # refuses --smooth=mean
  if opts.overlay:
    raise ValueError('--overlay re-reads the input file: not available for live input')
  stem = stem_of(source)
  path = os.path.join(out_dir, f'{stem}.csv')
  if os.path.exists(path) and not overwrite:
    raise ValueError(f'{path} exists (an earlier live run): pass --overwrite or another --output')
  os.makedirs(out_dir, exist_ok=True)
  if predictor.uses_audio:
    log('note: live input reads no audio: this audio-visual run gets silence for every frame')
  finder = detection.FaceFinder(opts.min_face, opts.detect_every, opts.faces == 'largest',
                                opts.detector)
  has_head = warm_up(predictor, finder, opts.min_face)
  stop = stop or threading.Event()
  stopped_by: list[str] = []
  handlers = {}

  def on_signal(signum, _frame):
    stopped_by.append(signal.Signals(signum).name)
    stop.set()

  log(f'live: ready, reading {outputs.printable("stdin" if source == "-" else source)}')
  # Opening waits for the stream's first bytes: until then a signal ends the process as usual.
  frames_src = decode.VideoFrames(source, opts.frame_stride, opts.max_pixels, live=True)
  if threading.current_thread() is threading.main_thread():
    for sig in (signal.SIGINT, signal.SIGTERM):
      handlers[sig] = signal.signal(sig, on_signal)
  try:
    frames, failed = FrameQueue(), []
    thread = threading.Thread(target=_capture, args=(frames_src, frames, failed),
                              name='capture', daemon=True)
    batcher = Batcher(predictor)
    tracker = tracking.FaceTracker(max_age=opts.max_age)
    crops = pipeline.crops_dir(out_dir, stem, opts)
    writer = _Writer(path, predictor, batcher, opts, has_head)
    processed = 0
    thread.start()
    while not stop.is_set():
      item = frames.get(timeout=0.1)
      if item is None:
        continue
      if item is _END:
        break
      k, t, rgb, captured = item
      frame = pipeline.process_frame(predictor, finder, tracker, k, t, rgb, None, crops, None)
      processed += 1
      writer.add(frame, captured)
      batcher.flush()  # this frame's crops to the model (windows wait for their frames)
      writer.write_ready()
    frames.close()
    writer.finish(list(tracker.tracks))
    if not thread.is_alive():  # a blocked read of a stopped stream is left to the exit
      frames_src.close()
  finally:
    for sig, h in handlers.items():
      signal.signal(sig, h)
  warning = '; '.join(filter(None, [frames_src.warning, *failed])) or None
  res = Result(path, writer.rows, frames.received, processed, frames.dropped, frames.peak,
               writer.latency.percentile(50), writer.latency.percentile(95),
               stopped_by[0] if stopped_by else None, warning)
  outputs.write_json(os.path.join(out_dir, f'{stem}.json'), {
      'input': source, 'status': 'partial' if warning else 'ok', 'error': warning or '',
      'kind': 'live', 'workdir': predictor.workdir, 'checkpoint_step': predictor.step,
      'csv_rows': res.rows, 'frames_received': res.received, 'frames_processed': res.processed,
      'frames_dropped': res.dropped, 'queue_frames': frames.size, 'queue_peak': res.peak_queue,
      'latency_ms': {'p50': res.p50_ms, 'p95': res.p95_ms,
                     'from': 'frame decoded to its rows flushed'},
      'stopped_by': res.stopped_by, 'frame_stride': opts.frame_stride, 'faces': opts.faces,
      'smoothing': {'method': opts.smooth, 'window': opts.smooth_window},
      'files': {'csv': path}})
  return res


def main(a, opts: pipeline.Options, overrides) -> int:
  """`python -m vaflax.predict --input=- | URL | /dev/videoN` (vaflax/predict/cli.py)."""
  from vaflax.predict.model import Predictor  # noqa: PLC0415

  # One frame at a time: with --faces=largest a batch holds one crop (more would be padding).
  batch = 1 if opts.faces == 'largest' else min(a.batch_size, 8)
  # A bad source or option: one error line and exit 2 from predict's cli.entry_point.
  CausalEma(opts.smooth, opts.smooth_window)  # refuses --smooth=mean before the model loads
  decode.check_live(a.input)
  predictor = Predictor(a.workdir, checkpoint_step=a.checkpoint_step, batch_size=batch,
                        crop_size=a.crop_size or None, crop_margin=a.crop_margin,
                        data_dir=a.data_dir, overrides=overrides)
  res = run(predictor, a.input, a.output, opts, overwrite=a.overwrite, log=_logger(a.quiet))
  if res.warning:
    print(f'warning: {outputs.printable(res.warning)}', file=sys.stderr)
  print(f'table: {outputs.printable(res.csv)} ({res.rows} rows)')
  print(res.line(a.latency), flush=True)
  return 0


def _logger(quiet: bool):
  from vaflax.predict import collection  # noqa: PLC0415

  return (lambda msg: None) if quiet else collection.log_stderr
