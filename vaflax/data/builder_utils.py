"""Shared pieces of the vaflax TFDS builders (tfds_builders/<name>/).

Every builder writes *frame-level* examples (one record per frame or still image) with the
common features of `frame_features`, in generation order (`disable_shuffling=True`, integer keys
0..N-1): record i+1 is the next frame of the same video when there is one. The videos of a split
are listed in the dataset metadata as `videos[split] = [[video_id, first_record, num_frames], ...]`
so that temporal windows are plain index arithmetic. Skipped items are counted per reason and
stored in `metadata['skipped'][split]`; the build CLI prints them.

Common features (all builders):
  image        encoded face crop (PNG or JPEG), square, `crop_size` px
  valence      float32 in [-1, 1] (0 where invalid)      arousal: same
  va_mask      float32 (2,): 1 where valence / arousal is a valid target
  valence_raw  float32 on the dataset's own scale (NaN where missing)   arousal_raw: same
  va_derived   bool: VA comes from a category -> VA table, not from annotators
  emotion      int32 category id in metadata['emotion_names'] (-1: none)
  landmarks    float32 (68, 2) in [0, 1] crop coordinates (x, y); landmarks_mask float32 ()
  video_id     text; frame: int32 frame index in the video (-1 for still images); file: text
  audio        (only builders with audio) float32 (samples_per_frame,) waveform of this frame's
               interval [frame / fps, (frame + 1) / fps), mono at metadata['sample_rate'].
"""

from __future__ import annotations

import collections
import io
import itertools
import os
from collections.abc import Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from vaflax import media

NUM_LANDMARKS = 68
_END = object()


class BadInputError(ValueError):
  """A dataset file that cannot be used; the message names the file and the problem."""

  def __init__(self, path, problem: str, fix: str | None = None):
    msg = f'{path}: {problem}'
    if fix:
      msg += f' ({fix})'
    super().__init__(msg)
    self.path = str(path)
    self.problem = problem


def frame_features(
    crop_size: int,
    *,
    encoding: str = 'jpeg',
    audio_samples_per_frame: int | None = None,
    extra: dict | None = None,
) -> tfds.features.FeaturesDict:
  feats = {
      'image': tfds.features.Image(shape=(crop_size, crop_size, 3), encoding_format=encoding),
      'valence': tfds.features.Scalar(dtype=np.float32),
      'arousal': tfds.features.Scalar(dtype=np.float32),
      'va_mask': tfds.features.Tensor(shape=(2,), dtype=np.float32),
      'valence_raw': tfds.features.Scalar(dtype=np.float32),
      'arousal_raw': tfds.features.Scalar(dtype=np.float32),
      'va_derived': tfds.features.Scalar(dtype=np.bool_),
      'emotion': tfds.features.Scalar(dtype=np.int32),
      'landmarks': tfds.features.Tensor(shape=(NUM_LANDMARKS, 2), dtype=np.float32),
      'landmarks_mask': tfds.features.Scalar(dtype=np.float32),
      'video_id': tfds.features.Text(),
      'frame': tfds.features.Scalar(dtype=np.int32),
      'file': tfds.features.Text(),
  }
  if audio_samples_per_frame:
    feats['audio'] = tfds.features.Tensor(shape=(audio_samples_per_frame,), dtype=np.float32)
  if extra:
    feats.update(extra)
  return tfds.features.FeaturesDict(feats)


def default_example(**kw) -> dict:
  """A frame example with every common feature at its 'absent' value, updated with kw."""
  ex = {
      'valence': 0.0,
      'arousal': 0.0,
      'va_mask': np.zeros((2,), np.float32),
      'valence_raw': np.nan,
      'arousal_raw': np.nan,
      'va_derived': False,
      'emotion': -1,
      'landmarks': np.zeros((NUM_LANDMARKS, 2), np.float32),
      'landmarks_mask': 0.0,
      'frame': -1,
      'file': '',
  }
  ex.update(kw)
  return ex


def encode_image(arr_HxWx3: np.ndarray, fmt: str = 'jpeg', quality: int = 95) -> bytes:
  buf = io.BytesIO()
  im = Image.fromarray(np.asarray(arr_HxWx3, np.uint8))
  if fmt == 'png':
    im.save(buf, format='PNG', compress_level=1)
  else:
    im.save(buf, format='JPEG', quality=quality)
  return buf.getvalue()


def read_image(path) -> np.ndarray:
  """Reads an RGB image fully (so truncation is detected) or raises BadInputError."""
  path = os.fspath(path)
  try:
    if os.path.getsize(path) == 0:
      raise BadInputError(path, 'empty (zero-byte) image file')
    arr = media.decode_rgb(path)  # the one image decoder, with the pixel limit
  except BadInputError:
    raise
  except FileNotFoundError as e:
    raise BadInputError(path, 'file not found') from e
  except Exception as e:  # PIL raises many types for corrupt/truncated data
    raise BadInputError(path, f'unreadable or truncated image ({type(e).__name__}: {e})') from e
  if arr.ndim != 3 or arr.shape[0] < 2 or arr.shape[1] < 2:
    raise BadInputError(path, f'image has unusable shape {arr.shape}')
  return arr


def find_paths(root, name: str, *, max_depth: int = 4, want_dir: bool | None = None) -> list:
  """Paths under root (depth <= max_depth) whose basename equals `name`, sorted, bounded search."""
  root = os.fspath(root)
  out = []
  base_depth = root.rstrip(os.sep).count(os.sep)
  for dirpath, dirnames, filenames in os.walk(root):
    depth = dirpath.rstrip(os.sep).count(os.sep) - base_depth
    if depth >= max_depth:
      dirnames[:] = []
    dirnames.sort()
    cands = []
    if want_dir in (None, True):
      cands += [d for d in dirnames if d == name]
    if want_dir in (None, False):
      cands += [f for f in filenames if f == name]
    out += [os.path.join(dirpath, c) for c in cands]
  return sorted(out)


class SkipLog:
  """Counts and logs every skipped item with its reason; nothing is dropped silently."""

  def __init__(self, split: str):
    self.split = split
    self.counts: collections.Counter = collections.Counter()
    self.examples: dict[str, list[str]] = collections.defaultdict(list)

  def skip(self, reason: str, item, *, log: bool = True) -> None:
    """Counts one skipped item. `log=False` for expected, documented per-frame cases (invalid
    markers, frames without a face) that would otherwise print a line per frame; they are still
    counted and shown in the build summary."""
    self.counts[reason] += 1
    if len(self.examples[reason]) < 5:
      self.examples[reason].append(str(item))
    if log:
      logging.warning('[%s] skipped %s: %s', self.split, item, reason)

  def summary(self) -> dict:
    return {r: {'count': c, 'examples': self.examples[r]} for r, c in sorted(self.counts.items())}


class SplitWriter:
  """Numbers examples 0..N-1 in generation order and records the video table and skips.

  Use from `_generate_examples`: `yield from writer.emit(video_id, examples)` for each video, then
  `writer.finish(builder)` once the split is done (it stores the tables in the metadata).
  """

  def __init__(self, split: str, *, stills: bool = False):
    self.split = split
    self.stills = stills  # still-image datasets keep no video table (it would list every image)
    self.next_key = 0
    self.videos: list[list] = []
    self.skips = SkipLog(split)

  def emit(self, video_id: str, examples: Iterable[dict]) -> Iterator[tuple[int, dict]]:
    start = self.next_key
    for ex in examples:
      ex.setdefault('video_id', video_id)
      yield self.next_key, ex
      self.next_key += 1
    n = self.next_key - start
    if n and not self.stills:
      self.videos.append([video_id, start, n])

  def finish(self, builder: tfds.core.GeneratorBasedBuilder) -> None:
    md = builder.info.metadata
    videos = dict(md.get('videos', {}))
    if self.next_key:  # an empty split is not built (non_empty_splits): no table for it
      videos[self.split] = self.videos
    md['videos'] = videos
    skipped = dict(md.get('skipped', {}))
    skipped[self.split] = self.skips.summary()
    md['skipped'] = skipped


def non_empty_splits(builder: tfds.core.GeneratorBasedBuilder, generators: dict) -> dict:
  """The split generators of `generators` that yield at least one example, for
  `_split_generators` to return: a partial download (some of a dataset's archives) builds the
  splits it has. Each generator is started up to its first example here (TFDS cannot write an
  empty split); an empty one has already run to its end, so its skips are recorded. Empty splits
  are logged with the builder's split rule (`metadata['split_rule']`) and listed in
  `metadata['empty_splits']` ({split: rule}); the build summary names them. Only a build with no
  example at all is an error."""
  md = builder.info.metadata
  rule = md.get('split_rule') or 'the split of each item is given by the dataset files'
  out, empty = {}, {}
  for split, gen in generators.items():
    it = iter(gen)
    first = next(it, _END)
    if first is _END:
      empty[split] = rule
      continue
    out[split] = itertools.chain([first], it)
  md['empty_splits'] = empty
  skipped = md.get('skipped', {})
  if not out:
    counts = {s: {r: v['count'] for r, v in (skipped.get(s) or {}).items()} for s in generators}
    raise BadInputError(
        builder.name, f'no usable example in any split ({", ".join(generators) or "none"})',
        f'check the manual_dir layout against the builder README; skipped: {counts}')
  for split in empty:
    counts = {r: v['count'] for r, v in (skipped.get(split) or {}).items()}
    logging.warning('%s: split %r is empty: nothing under manual_dir falls in it (split rule: '
                    '%s); building %s. Skipped: %s', builder.name, split, rule,
                    ', '.join(out), counts or 'nothing')
  return out
