"""Predict over a collection: a folder (recursive) or a list file of images and videos.

Decoding threads run `pipeline.scan` on the next inputs while the model works (PyAV, OpenCV and
XLA release the GIL); one Batcher takes the crops of every clip in flight, so short clips fill
device batches together. Each input's outputs are written atomically, its JSON last: an input
whose JSON exists and matches the file (path, size, mtime) is done, and a rerun skips it
(`overwrite` redoes it). `shard=(K, N)` keeps the inputs whose relative path hashes to K of N.
docs/predict.md ("Collections") describes the whole.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import queue
import sys
import threading
import time
from typing import NamedTuple

from vaflax.predict import pipeline, summary
from vaflax.predict.batching import Batcher
from vaflax.predict.decode import IMAGE_EXTS, VIDEO_EXTS, InputError

LIST_EXTS = ('.txt', '.lst', '.list')  # a file with one input path per line
FLUSH_AFTER_S = 2.0  # longest wait of a scanned clip for a batch to fill while decoders stall


class Input(NamedTuple):
  path: str  # where to read it
  rel: str  # relative to the input folder (or the list file's folder), '/'-separated
  stem: str  # its outputs' name under OUT, without extension (may hold sub-folders)


def _stems(rels: list[str]) -> list[str]:
  """Output names: the relative path without extension, or <stem>_<ext> when two inputs share
  one; '..' parts (list entries outside the list's folder) become '__'."""
  bare = [os.path.splitext(r)[0].replace('..', '__') for r in rels]
  return [b if bare.count(b) == 1 else f'{b}_{os.path.splitext(r)[1].lstrip(".").lower()}'
          for b, r in zip(bare, rels, strict=True)]


def _is_media(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTS + VIDEO_EXTS)


def list_inputs(path, exclude=None) -> tuple[str, list[Input], list[str]]:
  """(root, inputs sorted by relative path, ignored files) of an image or video file, a folder
  (recursive; hidden files and folders and the folder `exclude` are left out) or a list file
  (.txt/.lst/.list: one path per line, relative to the list's folder; blank lines and lines
  starting with '#' skipped; entries are kept even when missing: they get an error row)."""
  path = os.fspath(path)
  if os.path.isfile(path) and path.lower().endswith(LIST_EXTS):
    root = os.path.dirname(os.path.abspath(path))
    with open(path, encoding='utf-8') as f:
      entries = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith('#')]
    rels = sorted({os.path.relpath(os.path.join(root, e), root).replace(os.sep, '/')
                   for e in entries})
    return root, [Input(os.path.join(root, r), r, s) for r, s in zip(rels, _stems(rels),
                                                                     strict=True)], []
  if os.path.isfile(path):
    root, name = os.path.split(os.path.abspath(path))
    return root, [Input(path, name, _stems([name])[0])], []
  if not os.path.isdir(path):
    raise InputError(f'--input={path}: no such file or folder')
  skip = os.path.realpath(exclude) if exclude else None
  if skip == os.path.realpath(path):  # its plots would be the next run's inputs
    raise InputError(f'--output={exclude} is the input folder: write the outputs elsewhere '
                     '(a sub-folder is fine)')
  rels, ignored = [], []
  for dirpath, dirnames, filenames in os.walk(path):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.')
                         and os.path.realpath(os.path.join(dirpath, d)) != skip)
    for name in sorted(filenames):
      if name.startswith('.'):
        continue
      rel = os.path.relpath(os.path.join(dirpath, name), path).replace(os.sep, '/')
      (rels if _is_media(name) else ignored).append(rel)
  rels.sort()
  return (os.path.abspath(path),
          [Input(os.path.join(path, r), r, s) for r, s in zip(rels, _stems(rels), strict=True)],
          [os.path.join(path, r) for r in sorted(ignored)])


# (index, count) variables of the launchers, first match wins: SLURM (launch/slurm_gpu.sbatch),
# the JAX variables that launch/local_multiprocess.sh and slurm_gpu.sbatch export, Cloud TPU VMs.
_SHARD_ENV = (('SLURM_PROCID', 'SLURM_NTASKS'), ('JAX_PROCESS_ID', 'JAX_NUM_PROCESSES'),
              ('TPU_WORKER_ID', 'TPU_WORKER_HOSTNAMES'))


def parse_shard(spec: str, env=None) -> tuple[int, int]:
  """(K, N), 1 <= K <= N, of `--shard=K/N`; 'auto' reads the launcher's process index (0-based)
  and count from the environment (TPU: the number of TPU_WORKER_HOSTNAMES), else (1, 1)."""
  env = os.environ if env is None else env
  if spec == 'auto':
    for idx, cnt in _SHARD_ENV:
      if env.get(idx, '').strip().isdigit() and env.get(cnt, '').strip():
        n = env[cnt].strip()
        n = len(n.split(',')) if idx == 'TPU_WORKER_ID' else int(n)
        return int(env[idx]) + 1, n
    return 1, 1
  try:
    k, n = (int(x) for x in spec.split('/'))
  except ValueError:
    raise ValueError(f'--shard must be K/N (e.g. 2/8) or auto; got {spec!r}') from None
  if not 1 <= k <= n:
    raise ValueError(f'--shard={spec}: need 1 <= K <= N')
  return k, n


def in_shard(rel: str, shard: tuple[int, int]) -> bool:
  """Whether an input belongs to shard K of N: the first 8 bytes of SHA-1 of its relative path,
  modulo N, equal K - 1. The same on every machine, and adding an input moves no other one."""
  k, n = shard
  return int.from_bytes(hashlib.sha1(rel.encode('utf-8')).digest()[:8], 'big') % n == k - 1


def completed(inp: Input, out_dir: str) -> dict | None:
  """The input's JSON summary when its outputs are complete for the file as it is now, else None."""
  json_path = os.path.join(out_dir, f'{inp.stem}.json')
  try:
    with open(json_path) as f:
      s = json.load(f)
  except (OSError, ValueError):
    return None
  try:
    now = pipeline.source_stat(inp.path)
  except OSError:
    now = None
  return s if s.get('path') == inp.rel and s.get('source') == now else None


class _Stopped(Exception):
  pass


def predict_many(predictor, inputs: list[Input], out_dir: str, opts: pipeline.Options,
                 workers: int = 2, on_done=None) -> list[dict]:
  """Predicts `inputs` with `workers` decoding threads and one shared Batcher; writes each
  input's outputs as soon as its predictions are back and calls `on_done(summary)`. An input
  that fails gets an error JSON; the others go on."""
  q: queue.Queue = queue.Queue(maxsize=8 * predictor.batch_size)  # frames waiting for the model
  stop = threading.Event()

  def put(item):
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return
      except queue.Full:
        pass
    raise _Stopped

  def work(i, inp):
    try:
      info = pipeline.scan(predictor, inp.path, opts, lambda f: put(('frame', i, f)),
                           pipeline.crops_dir(out_dir, inp.stem, opts))
      put(('end', i, info))
    except _Stopped:
      pass
    except InputError as e:
      put(('error', i, str(e)))
    except Exception as e:  # noqa: BLE001 -- one input's failure is that input's error row
      put(('error', i, f'{inp.path}: {type(e).__name__}: {e}'))

  batcher = Batcher(predictor)
  clips: dict[int, pipeline.Clip] = {}
  waiting: dict[int, tuple[pipeline.Clip, object]] = {}  # scanned, waiting for predictions
  since: dict[int, float] = {}  # when each waiting clip was scanned
  done: list[dict] = []

  def clip(i):
    if i not in clips:
      clips[i] = pipeline.Clip(inputs[i].path, inputs[i].stem, out_dir, key=i)
    return clips[i]

  def finish(i, c, info):
    va, head = batcher.take(c.targets)
    inp = inputs[i]
    try:
      if isinstance(info, str):
        s = pipeline.error_summary(inp.path, inp.stem, out_dir, info, inp.rel)
      else:
        s = pipeline.finish_clip(predictor, c, info, va, head, opts, inp.rel)
    except (OSError, ValueError) as e:  # e.g. a plot or the overlay failed: the input's row says so
      s = pipeline.error_summary(inp.path, inp.stem, out_dir,
                                 f'{inp.path}: writing outputs: {type(e).__name__}: {e}', inp.rel)
    done.append(s)
    if on_done:
      on_done(s)

  def finish_ready():
    for i in [i for i, (c, _) in waiting.items() if batcher.resolved(c.targets)]:
      since.pop(i)
      finish(i, *waiting.pop(i))

  pool = concurrent.futures.ThreadPoolExecutor(max(1, workers), thread_name_prefix='decode')
  ended = 0
  try:
    for i, inp in enumerate(inputs):
      pool.submit(work, i, inp)
    while ended < len(inputs) or waiting:
      if ended == len(inputs):  # nothing more to come: send what is queued
        batcher.flush()
        finish_ready()
        if waiting:
          raise RuntimeError(f'predictions missing after the last batch: {sorted(waiting)}')
        continue
      try:
        kind, i, x = q.get(timeout=0.2)
      except queue.Empty:
        # The decoders are behind. A scanned clip whose last crops wait for a full batch gets
        # them sent after FLUSH_AFTER_S: its outputs are not held back for long, and short
        # stalls do not cost padded batches.
        if waiting and time.time() - min(since.values()) > FLUSH_AFTER_S:
          batcher.flush()
          finish_ready()
        continue
      if kind == 'frame':
        clip(i).add(batcher, x)
      else:
        ended += 1
        c = clips.pop(i, None) or pipeline.Clip(inputs[i].path, inputs[i].stem, out_dir, key=i)
        c.end(batcher)
        waiting[i] = (c, x)
        since[i] = time.time()
      finish_ready()
  finally:
    stop.set()
    pool.shutdown(wait=True, cancel_futures=True)
  return done


class Result(NamedTuple):
  table: str  # the summary CSV written
  rows: list[dict]  # its rows (every input of the shard)
  skipped: int  # inputs already complete
  ignored: list[str]  # files that are not images or videos


def run(predictor, input_path, out_dir: str, opts: pipeline.Options, *, shard=(1, 1),
        overwrite: bool = False, workers: int = 2, log=None) -> Result:
  """Predicts every input of the shard that is not complete yet (all with `overwrite`) and
  writes the shard's summary table (summary.csv, or summary-KofN.csv)."""
  opts.check()
  log = log or (lambda msg: None)
  root, inputs, ignored = list_inputs(input_path, exclude=out_dir)
  if os.path.isdir(input_path) and not inputs:
    raise InputError(f'--input={input_path}: no image or video file in this folder')
  mine = [inp for inp in inputs if in_shard(inp.rel, shard)]
  todo = mine if overwrite else [inp for inp in mine if completed(inp, out_dir) is None]
  os.makedirs(out_dir, exist_ok=True)
  log(f'{len(inputs)} inputs under {root}; shard {shard[0]}/{shard[1]}: {len(mine)}, '
      f'{len(mine) - len(todo)} already complete, {len(todo)} to do')
  t0, frames = time.time(), [0]

  def on_done(s):
    frames[0] += s.get('frames_processed') or 0
    rate = frames[0] / max(time.time() - t0, 1e-9)
    log(f"{s['path']}: {s['status']}{' (' + s['error'] + ')' if s['error'] else ''}, "
        f"{s.get('frames_with_face', 0)}/{s.get('frames_processed', 0)} frames with a face "
        f'[{frames[0]} frames, {rate:.1f} frames/s]')

  predict_many(predictor, todo, out_dir, opts, workers, on_done)
  rows = []
  for inp in mine:
    s = completed(inp, out_dir)
    if s is None:  # only if the file changed while it was processed
      s = pipeline.error_summary(inp.path, inp.stem, out_dir, 'changed during the run', inp.rel)
    rows.append(summary.row(s))
  table = summary.write_table(os.path.join(out_dir, summary.table_name(shard)), rows)
  return Result(table, rows, len(mine) - len(todo), ignored)


def main_line(rows: list[dict], skipped: int) -> str:
  """The run's last line: counts by status."""
  n = {st: sum(r['status'] == st for r in rows) for st in ('ok', 'partial', 'error')}
  return (f"{len(rows)} inputs: {n['ok']} ok, {n['partial']} partial, {n['error']} error "
          f'({skipped} already done)')


def log_stderr(msg: str):
  print(msg, file=sys.stderr, flush=True)
