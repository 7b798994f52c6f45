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
import re
import sys
import threading
import time
from typing import NamedTuple

from vaflax.predict import outputs, pipeline, summary
from vaflax.predict.batching import Batcher
from vaflax.predict.decode import IMAGE_EXTS, VIDEO_EXTS, InputError

LIST_EXTS = ('.txt', '.lst', '.list')  # a file with one input path per line
FLUSH_AFTER_S = 2.0  # longest wait of a scanned clip for a batch to fill while decoders stall


class Input(NamedTuple):
  path: str  # where to read it
  rel: str  # relative to the input folder (or the list file's folder), '/'-separated
  stem: str  # its outputs' name under OUT, without extension (may hold sub-folders)


# What the run writes under OUT beside the inputs' outputs (summary.py, cropped.py): no input's
# output may take one of these names.
_RESERVED = re.compile(r'^(summary(-\d+of\d+)?(\.csv|_circumplex\.png)|cropped\.csv)$')
# The files and folders of one input <stem> (pipeline.finish_clip, outputs.write_plots).
_FILE_SUFFIXES = ('.csv', '.json', '_trajectory.png', '_va_time.png', '_overlay.mp4')
_DIR_SUFFIXES = ('_crops',)


def _digest(rel: str) -> str:
  return hashlib.sha1(os.fsencode(rel)).hexdigest()


def _conflicts(stems: list[str]) -> tuple[set[int], set[str]]:
  """(inputs whose outputs would take a name that another input's outputs, one of their
  folders or the run's own files take; top-level folders named like the run's own files).
  Names compare case-folded: the outputs may land on a case-insensitive file system."""
  files: dict[str, list[int]] = {}
  dirs: dict[str, list[int]] = {}
  for i, st in enumerate(stems):
    for suf in _FILE_SUFFIXES:
      files.setdefault((st + suf).casefold(), []).append(i)
    parts = st.split('/')
    for k in range(1, len(parts)):
      dirs.setdefault('/'.join(parts[:k]).casefold(), []).append(i)
    for suf in _DIR_SUFFIXES:
      dirs.setdefault((st + suf).casefold(), []).append(i)
  bad = {i for name, own in files.items() if len(own) > 1 or name in dirs or _RESERVED.match(name)
         for i in own}
  bad_dirs = {name for name in dirs if '/' not in name and _RESERVED.match(name)}
  return bad, bad_dirs


def _stems(rels: list[str]) -> list[str]:
  """Output names, one per input and never the same for two (docs/predict.md, "Outputs"): the
  relative path without its extension, with '..' folders (list entries outside the list's
  folder) as '__'; when that name is taken (x.png and x.jpg; x.png and x_png.jpg; an input
  named summary.png), <name>_<ext>_<first hex digits of SHA-1 of the relative path>."""
  base = []
  for r in rels:
    parts = os.path.splitext(r)[0].split('/')
    base.append('/'.join('__' if p == '..' else p for p in parts))
  stems = list(base)
  for n in (8, 16, 40):
    bad, bad_dirs = _conflicts(stems)
    if not bad and not bad_dirs:
      return stems
    for i, r in enumerate(rels):
      top, _, rest = stems[i].partition('/')
      if rest and top.casefold() in bad_dirs:  # a folder named like summary.csv
        stems[i] = f'{top}_{_digest(top)[:n]}/{rest}'
      if i in bad:
        ext = os.path.splitext(r)[1].lstrip('.').lower()
        stems[i] = f"{base[i]}_{ext + '_' if ext else ''}{_digest(r)[:n]}"
  raise AssertionError(f'output names still collide: {sorted(_conflicts(stems)[0])[:5]}')


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
    # Entries that are not UTF-8 keep their bytes as surrogate escapes, as os.walk's names do.
    with open(path, encoding='utf-8', errors='surrogateescape') as f:
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
  and count from the environment (TPU: the number of TPU_WORKER_HOSTNAMES), else (1, 1). A
  launcher's values that make no shard (count 0, index past the count, not numbers) raise
  ValueError naming the variables."""
  env = os.environ if env is None else env
  if spec == 'auto':
    for idx, cnt in _SHARD_ENV:
      k, n = env.get(idx, '').strip(), env.get(cnt, '').strip()
      if not k and not n:
        continue
      if idx == 'TPU_WORKER_ID' and n:
        n = str(len([h for h in n.split(',') if h.strip()]))
      if not (k.isdigit() and n.isdigit() and k.isascii() and n.isascii()
              and 0 <= int(k) < int(n)):
        raise ValueError(f'--shard=auto: {idx}={env.get(idx, "")!r} and {cnt}='
                         f'{env.get(cnt, "")!r} make no shard (need 0 <= {idx} < the count); '
                         'pass --shard=K/N')
      return int(k) + 1, int(n)
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
  k, n = shard  # os.fsencode: UTF-8, and the original bytes of a name that is not UTF-8
  return int.from_bytes(hashlib.sha1(os.fsencode(rel)).digest()[:8], 'big') % n == k - 1


def completed(inp: Input, out_dir: str, warn=None) -> dict | None:
  """The input's JSON summary when its outputs are complete for the file as it is now, else None.
  A file there that is not a summary (not JSON, not an object, no known status, fields that do
  not make a table row) is "not complete": `warn` says so and the input is redone (its outputs
  replace the file)."""
  json_path = os.path.join(out_dir, f'{inp.stem}.json')
  try:
    with open(json_path, 'rb') as f:
      s = json.loads(f.read(1 << 24))  # a summary is a few kB; 16 MB bounds a stray file
  except (FileNotFoundError, ValueError) as e:
    if isinstance(e, FileNotFoundError) or 'null' in str(e):  # absent (a NUL: cannot exist)
      return None
    s, why = None, type(e).__name__
  except OSError as e:
    s, why = None, type(e).__name__
  else:
    why = None if isinstance(s, dict) else f'JSON {type(s).__name__}, not an object'
  if why is None and s.get('status') not in STATUSES:
    why = f"status {s.get('status')!r}"
  if why is None:
    try:
      summary.row(s)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
      why = f'{type(e).__name__}: {e}'
  if why is not None:
    if warn:
      warn(f'warning: {json_path} is not a completion record ({why}); redoing its input')
    return None
  try:
    now = pipeline.source_stat(inp.path)
  except OSError:
    now = None
  return s if s.get('path') == inp.rel and s.get('source') == now else None


class _Stopped(Exception):
  pass


def predict_many(predictor, inputs: list[Input], out_dir: str, opts: pipeline.Options,
                 workers: int = 2, on_done=None, finish_clip=pipeline.finish_clip) -> list[dict]:
  """Predicts `inputs` with `workers` decoding threads and one shared Batcher; writes each
  input's outputs as soon as its predictions are back and calls `on_done(summary)`. An input
  that fails gets an error JSON; the others go on. `finish_clip` makes an input's outputs once
  its predictions are back (vaflax.api's keeps them in memory instead of writing files).

  The one predict scheduler: the CLI (`run`), `predict_file`, vaflax.api and the benchmarks
  all come through here."""
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
    c.difficulty = batcher.take_difficulty(c.targets)
    inp = inputs[i]
    try:
      if isinstance(info, str):
        s = pipeline.error_summary(inp.path, inp.stem, out_dir, info, inp.rel)
      else:
        s = finish_clip(predictor, c, info, va, head, opts, inp.rel)
    except Exception as e:  # noqa: BLE001 -- e.g. a plot or the overlay failed: the input's row
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


def predict_file(predictor, path, out_dir: str, opts: pipeline.Options,
                 stem: str | None = None, finish_clip=pipeline.finish_clip) -> dict:
  """One image or video through `predict_many`: writes DIR/<stem>.csv, .json and plots (or
  what `finish_clip` makes of it: vaflax.api keeps the rows) and returns the summary. Raises
  InputError when the input gives no outputs (its error JSON, as the CLI writes it, says why
  too)."""
  opts.check()
  name = os.path.basename(os.fspath(path))
  inp = Input(os.fspath(path), name, stem or os.path.splitext(name)[0])
  s, = predict_many(predictor, [inp], out_dir, opts, workers=1, finish_clip=finish_clip)
  if s['status'] == 'error':
    raise InputError(s['error'])
  if opts.progress:
    log_stderr(done_line(s))
  return s


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
  todo = mine if overwrite else [inp for inp in mine if completed(inp, out_dir, log) is None]
  os.makedirs(out_dir, exist_ok=True)
  stale = outputs.remove_stale_parts(out_dir)
  if stale:
    log(f'removed {len(stale)} temporary files of dead runs under {out_dir}')
  log(f'{_count(len(inputs), "input")} under {root}; shard {shard[0]}/{shard[1]}: {len(mine)}, '
      f'{len(mine) - len(todo)} already complete, {len(todo)} to do')
  t0, frames, ended = time.time(), [0], [0]

  def on_done(s):
    frames[0] += s.get('frames_processed') or 0
    ended[0] += 1
    log(f'{done_line(s)} [{ended[0]}/{len(todo)}]')

  fresh = {s['path']: s for s in predict_many(predictor, todo, out_dir, opts, workers, on_done)}
  if todo:
    took = time.time() - t0
    log(f'{_count(frames[0], "frame")} of {_count(len(todo), "input")} in {took:.1f} s: '
        f'{rate_text(frames[0] / max(took, 1e-9))} frames/s')
  rows = []
  for inp in mine:
    s = completed(inp, out_dir, log)
    if s is None and not os.path.exists(os.path.join(out_dir, f'{inp.stem}.json')):
      s = fresh.get(inp.rel)  # its JSON could not be written (the summary says why)
    if s is None:  # the file changed while it was processed
      s = pipeline.error_summary(inp.path, inp.stem, out_dir, 'changed during the run', inp.rel)
    rows.append(summary.row(s))
  table = summary.write_table(os.path.join(out_dir, summary.table_name(shard)), rows)
  return Result(table, rows, len(mine) - len(todo), ignored)


def done_line(s: dict) -> str:
  """The log line of a finished input: the clip's own numbers, as its JSON has them."""
  fps = s.get('frames_per_second')
  note = s.get('note') if s['status'] == 'ok' else None
  return (f"{s['path']}: {s['status']}{' (' + s['error'] + ')' if s['error'] else ''}, "
          f"{s.get('frames_with_face', 0)}/{s.get('frames_processed', 0)} frames with a face"
          f"{f', {rate_text(fps)} frames/s' if fps else ''}{f' ({note})' if note else ''}")


def rate_text(x: float) -> str:
  """A rate for the console: one decimal, or two significant digits below 0.1 (not '0.0')."""
  return f'{x:.1f}' if x >= 0.1 else f'{x:.2g}'


def _count(n: int, what: str) -> str:
  return f'{n} {what}' + ('' if n == 1 else 's')


STATUSES = ('ok', 'no_face', 'partial', 'error')  # docs/predict.md, "The table"


def main_line(rows: list[dict], skipped: int) -> str:
  """The run's last line: counts by status."""
  n = {st: sum(r['status'] == st for r in rows) for st in STATUSES}
  return (f"{_count(len(rows), 'input')}: {n['ok']} ok, {n['no_face']} no_face, "
          f"{n['partial']} partial, {n['error']} error ({skipped} already done)")


def log_stderr(msg: str):
  """One log line; names in it cannot forge lines or colour the terminal (outputs.printable)."""
  print(outputs.printable(msg), file=sys.stderr, flush=True)
