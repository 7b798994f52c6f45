"""Built dataset splits as random-access sources: the records or frame windows of a split, its
metadata, and one pass over a split for evaluation.

Shared by the training input (vaflax/data/pipeline.py: Grain, mixing, balancing) and everything
that reads a split or a dataset's metadata without training: evaluation (vaflax/scoring.py) and
predict's crop spec (vaflax/predict/model.py).

Eval: a finite list-like pass over a split, padded to whole batches with an `eval_mask`, so the
tail of a split is never dropped and every host runs the same number of steps. With
`config.input.window = T > 0` each element is a window of T consecutive frames of one video
(image (T,H,W,3), va (T,2), ...); frames of videos shorter than T are padded and masked.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from vaflax import speech_features
from vaflax.data import build as build_lib
from vaflax.data import ops as ops_lib


def parse_mixture(spec: str) -> list[tuple[str, float]]:
  out = []
  for part in (p.strip() for p in spec.split(',')):
    if not part:
      continue
    name, _, w = part.partition(':')
    try:
      weight = float(w) if w else 1.0
    except ValueError:
      raise ValueError(f'config.input.dataset: bad weight in {part!r} (use name:weight)') from None
    if weight <= 0:
      raise ValueError(f'config.input.dataset: weight of {name} must be > 0, got {weight}')
    out.append((name.strip(), weight))
  if not out:
    raise ValueError('config.input.dataset is empty')
  return out


def load_source(name: str, split: str, data_dir: str, *, decode_images: bool = True):
  """Opens a built split; builds synthetic_va on first use; clear error for anything missing.
  decode_images=False leaves image features as their encoded bytes (a pass that reads only the
  other features, e.g. the audio for the speech-feature cache, skips every image decode)."""
  data_dir = os.path.expanduser(data_dir)
  builder = build_lib.make_builder(name, data_dir)
  if not builder.is_prepared():
    if name in build_lib.NO_DOWNLOAD:
      logging.info('building %s into %s (first use)', name, data_dir)
      builder = build_lib.build(name, data_dir, verbose=False)
    else:
      raise FileNotFoundError(
          f'dataset {name!r} is not built in {data_dir}. Build it from the files you downloaded:\n'
          f'  python -m vaflax.data.build {name} --manual_dir=<folder> --data_dir={data_dir}\n'
          f'(docs/datasets.md says what to download), or set --config.input.data_dir, or run the '
          f'config with :runlocal to use the embedded synthetic set.')
  if split not in builder.info.splits:
    raise ValueError(f'dataset {name!r} has no split {split!r}; it has {sorted(builder.info.splits)}')
  decoders = None if decode_images else {
      k: tfds.decode.SkipDecoding() for k, f in builder.info.features.items()
      if isinstance(f, tfds.features.Image)}
  src = builder.as_data_source(split=split, decoders=decoders)
  if len(src) == 0:
    raise ValueError(f'split {split!r} of {name!r} in {data_dir} is empty')
  videos = (builder.info.metadata or {}).get('videos', {}).get(split) or []
  return Records(src, f'{builder.data_dir} split {split!r}'), videos, builder.info


class Records:
  """A built split's records; one that does not parse or decode (a damaged file) is an error
  naming the split's folder and the record, not a bare protobuf or image-decoder message."""

  def __init__(self, src, where: str):
    self._src, self._where = src, where

  def __len__(self):
    return len(self._src)

  def __getitem__(self, i):
    if not 0 <= i < len(self._src):
      raise IndexError(f'{self._where}: record {i} of {len(self._src)}')
    try:
      return self._src[i]
    except Exception as e:  # noqa: BLE001 -- whatever the parser or decoder raised, named
      raise ValueError(f'{self._where}: record {i} cannot be read ({type(e).__name__}: {e}); '
                       'the files are damaged: build the dataset again') from e


class IndexedSource:
  """Adds the record index and the video ordinal to each example (numbers survive batching)."""

  def __init__(self, src, videos):
    self._src = src
    self._video_of = np.full((len(src),), -1, np.int32)
    for k, (_, start, n) in enumerate(videos):
      self._video_of[start : start + n] = k

  def __len__(self):
    return len(self._src)

  def __getitem__(self, i):
    ex = dict(self._src[int(i)])
    ex['index'] = int(i)
    ex['video'] = int(self._video_of[int(i)])
    return ex


@dataclasses.dataclass(frozen=True)
class Window:
  start: int  # first record
  length: int  # real frames (<= T)
  skip: int  # leading frames already scored by the previous window (eval only)
  video: int


def make_windows(videos, num_records: int, T: int, stride: int, *, cover_tail: bool) -> list[Window]:
  """Windows of T frames inside each video. `cover_tail` adds a final end-aligned window whose
  frames already covered by the previous window are marked to skip (exact eval coverage)."""
  if not videos:  # still images or a builder without a video table: one "video" per record
    videos = [(str(i), i, 1) for i in range(num_records)]
  out = []
  for k, (_, start, n) in enumerate(videos):
    if n <= T:
      out.append(Window(start, n, 0, k))
      continue
    last = None
    for s in range(0, n - T + 1, stride):
      out.append(Window(start + s, T, 0, k))
      last = s
    if cover_tail and last + T < n:
      s = n - T
      out.append(Window(start + s, T, last + T - s, k))
  return out


class WindowSource:
  """Random access to windows of T consecutive frames; pads short videos with masked frames."""

  def __init__(self, src, windows: list[Window], T: int):
    self._src, self._windows, self._T = src, windows, T
    self.num_records = len(src)

  def __len__(self):
    return len(self._windows)

  def frame_ranges(self) -> tuple[np.ndarray, np.ndarray]:
    """(first record, number of real frames) of every window."""
    return (np.array([w.start + w.skip for w in self._windows], np.int64),
            np.array([w.length - w.skip for w in self._windows], np.int64))

  def __getitem__(self, i):
    w = self._windows[int(i)]
    frames = [dict(self._src[w.start + t]) for t in range(w.length)]
    frames += [frames[-1]] * (self._T - w.length)
    ex = {}
    for key in frames[0]:
      vals = [f[key] for f in frames]
      if isinstance(vals[0], bytes | str):
        ex[key] = vals[0]
      else:
        ex[key] = np.stack([np.asarray(v) for v in vals])
    frame_mask = np.zeros((self._T,), np.float32)
    frame_mask[w.skip : w.length] = 1.0
    ex['va_mask'] = ex['va_mask'] * frame_mask[:, None]
    ex['landmarks_mask'] = ex['landmarks_mask'] * frame_mask
    ex['index'] = np.arange(w.start, w.start + self._T, dtype=np.int64)
    ex['video'] = np.full((self._T,), w.video, np.int32)
    ex['frame_mask'] = frame_mask
    return ex


def finalize(window: int, source: int | None = None):
  def f(ex):
    if window and 'image' in ex:
      ex['frames'] = ex.pop('image')
    if source is not None:
      ex['source'] = np.asarray(source, np.int32)
    return ex
  return f


def open_split(name, split, config, *, train: bool):
  """(random-access source of `split`, its DatasetInfo): records, or windows of
  config.input.window frames (training: every window_stride frames; evaluation: covering every
  frame exactly once)."""
  src, videos, info = load_source(name, split, config.input.data_dir)
  src = IndexedSource(src, videos)
  if config.input.get('speech_encoder'):  # cached speech-encoder states (audio='speech')
    audio, _, _ = load_source(name, split, config.input.data_dir, decode_images=False)
    src = speech_features.FeatureSource(src, videos, name, split, info.version, config, audio)
  T = int(config.input.window)
  if T:
    stride = int(config.input.window_stride or T) if train else T
    wins = make_windows(videos, len(src), T, stride, cover_tail=not train)
    return WindowSource(src, wins, T), info
  return src, info


def host_batch_size(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f'config.batch_size={global_batch} must be divisible by the number of '
                     f'processes ({process_count})')
  return global_batch // process_count


class EvalData:
  """One pass over a split for this host, in batches padded to `host_batch` with `eval_mask`."""

  def __init__(self, config, split: str, dataset: str | None = None, process_index: int = 0,
               process_count: int = 1, pp: str | None = None):
    name = dataset or parse_mixture(config.input.dataset)[0][0]
    src, self.info = open_split(name, split, config, train=False)
    self.name, self.split = name, split
    self.num_examples = len(src)
    n = len(src)
    per_host = -(-n // process_count)
    lo, hi = process_index * per_host, min(n, (process_index + 1) * per_host)
    self._src, self._lo = src, lo
    self._local = max(0, hi - lo)
    self.host_batch = host_batch_size(config.batch_size, process_count)
    self.num_batches = -(-per_host // self.host_batch)  # the same on every host
    self._fn = ops_lib.build(pp or config.input.pp_eval, image_size=config.image_size)
    self._final = finalize(int(config.input.window))
    self._template = None

  def __len__(self):
    return self.num_batches

  def __iter__(self):
    rng = np.random.default_rng(0)  # eval ops are deterministic; a fixed generator for safety
    for b in range(self.num_batches):
      idx = range(b * self.host_batch, min(self._local, (b + 1) * self.host_batch))
      exs = [self._final(self._fn(self._src[self._lo + i], rng)) for i in idx]
      if exs and self._template is None:
        self._template = exs[0]
      if self._template is None:  # this host has no data at all: pad from another example
        raise ValueError(f'{self.name}/{self.split}: host has no eval data to shape padding')
      mask = np.zeros((self.host_batch,), np.float32)
      mask[: len(exs)] = 1.0
      exs += [self._template] * (self.host_batch - len(exs))
      batch = {k: np.stack([np.asarray(e[k]) for e in exs]) for k in self._template}
      batch['eval_mask'] = mask
      yield batch


def dataset_info(name: str, data_dir: str) -> tfds.core.DatasetInfo:
  return build_lib.make_builder(name, os.path.expanduser(data_dir)).info


def crop_spec(config) -> dict:
  """The crop spec (`faces.CropSpec.to_dict()`) recorded in the metadata of the training data, for
  `config.crop` (vaflax/train.py); {} when the build records none (built before crop specs were).
  A mixture whose sources were cut differently is logged: its first source's spec is recorded."""
  specs = {}
  for name, _ in parse_mixture(config.input.dataset):
    md = dataset_info(name, config.input.data_dir).metadata or {}
    specs[name] = dict(md['crop']) if isinstance(md.get('crop'), dict) else {}
  first = next(iter(specs.values()))
  if any(s != first for s in specs.values()):
    logging.warning('config.input.dataset mixes crops %s; recording %s (the first) for predict',
                    specs, first)
  return first

