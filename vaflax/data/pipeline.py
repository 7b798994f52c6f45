"""The Grain training input: split source -> per-host shard -> mix/balance -> shuffle -> ops -> batch.

An infinite, deterministic, checkpointable iterator of host-local batches. The splits themselves
(records, frame windows, metadata) and the evaluation pass come from vaflax/data/sources.py.

`config.input.dataset` is a name or a weighted mixture "affwild2_va:0.2,afew_va:1". A weight is a
sampling RATE relative to the dataset's own size: source k supplies w_k * len_k examples of every
w_1 * len_1 + w_2 * len_2 + ... drawn (one "epoch"), so 'affwild2_va:0.2,afew_va:1' is Aff-Wild2
downsampled by 5 plus all of AFEW-VA, and 'a:1,b:1' is the plain union. Each source is sharded
per host, balanced or shuffled, and run through the train ops on its own (so every source arrives
with the same features, and each example carries `source`, its index in the mixture); then
`grain.MapDataset.mix` interleaves them deterministically in those exact proportions.
`config.input.balance = 'va_grid'` samples each source by inverse VA-cell frequency
(vaflax/data/balance.py).
"""

from __future__ import annotations

import os

import grain
import numpy as np
from absl import logging

from vaflax.data import balance as balance_lib
from vaflax.data import build as build_lib
from vaflax.data import ops as ops_lib
from vaflax.data import sources


class _ApplyOps(grain.transforms.RandomMap):
  def __init__(self, fn):
    self._fn = fn

  def random_map(self, ex, rng):
    return self._fn(ex, rng)


def balance_options(config) -> dict | None:
  """config.input.balance* -> keyword arguments of balance.record_weights, or None when off."""
  mode = config.input.balance
  if mode not in balance_lib.MODES:
    raise ValueError(f'config.input.balance={mode!r}: use one of {balance_lib.MODES}')
  if not mode:
    return None
  return dict(grid=int(config.input.balance_grid),
              power=float(config.input.balance_power),
              floor=float(config.input.balance_floor))


def source_weights(name: str, split: str, config, src, options: dict) -> np.ndarray:
  """Balancing weight of each element of `src` (a record, or a window: mean of its frames)."""
  builder = build_lib.make_builder(name, os.path.expanduser(config.input.data_dir))
  va, va_mask = balance_lib.load_va_labels(builder, split)
  num_records = src.num_records if isinstance(src, sources.WindowSource) else len(src)
  if len(va) != num_records:
    raise ValueError(f'{balance_lib.labels_path(builder, split)}: {len(va)} labels for '
                     f'{num_records} records; delete the file to rebuild it')
  w = balance_lib.record_weights(va, va_mask, **options)
  logging.info('%s/%s balance: %s', name, split,
               balance_lib.describe(w, balance_lib.grid_cells(va, va_mask, options['grid'])[0]))
  if isinstance(src, sources.WindowSource):
    w = balance_lib.window_weights(w, *src.frame_ranges())
  return w


def _balanced(name, src, weights, seed, k, process_index, process_count):
  positions = np.arange(len(src))[process_index::process_count]  # one shard per host
  w = weights[positions]
  if not np.any(w > 0):
    raise ValueError(
        f'{name}: config.input.balance is on but host {process_index} of {process_count} has no '
        f'training example with a valid VA label (all weights 0). Set config.input.balance_floor '
        f'> 0 to draw unlabelled examples, or config.input.balance=""')
  return grain.MapDataset.source(
      balance_lib.BalancedSource(src, positions, w, key=(seed, k, process_index)))


def _same_structure(parts, names) -> None:
  """Mixed sources must give identical example structures (keys, shapes, dtypes) after the ops."""
  def spec(ex):
    return {k: (np.shape(v), np.asarray(v).dtype) for k, v in ex.items()}
  first = spec(parts[0][0])
  for ds, name in zip(parts[1:], names[1:], strict=True):
    other = spec(ds[0])
    if other != first:
      diff = {k: (first.get(k), other.get(k)) for k in sorted(set(first) | set(other))
              if first.get(k) != other.get(k)}
      raise ValueError(
          f'config.input.dataset: after config.input.pp_train, {name} gives examples unlike '
          f'{names[0]} (key: ({names[0]}, {name}) shape, dtype): {diff}. Make the ops produce '
          f'the same features for every source (standardize, resize to one size).')


def make_train_dataset(config, process_index: int = 0, process_count: int = 1):
  """The train IterDataset of host-local batches (iterate it; its iterator is checkpointable)."""
  mix = sources.parse_mixture(config.input.dataset)
  seed = int(config.seed)
  window = int(config.input.window)
  fn = ops_lib.build(config.input.pp_train, image_size=config.image_size)
  options = balance_options(config)
  parts, weights = [], []
  for k, (name, w) in enumerate(mix):
    src, _ = sources.open_split(name, config.input.train_split, config, train=True)
    if options:
      sw = source_weights(name, config.input.train_split, config, src, options)
      ds = _balanced(name, src, sw, seed, k, process_index, process_count)
    else:
      ds = grain.MapDataset.source(src)
      ds = ds[process_index::process_count]  # one shard per host
      if len(ds) == 0:
        raise ValueError(f'{name}: host {process_index} of {process_count} got no training example')
      ds = ds.shuffle(seed=seed + 1000 * k).repeat(None)
    # The ops run per source, before mixing: every source is standardized to the same features
    # (checked below), and `seed + k` keeps the augmentations of different sources independent.
    ds = ds.random_map(_ApplyOps(fn), seed=seed + k).map(sources.finalize(window, source=k))
    parts.append(ds)
    weights.append(w * len(src))  # a rate: the whole split's size, the same on every host
  num_examples = max(1, round(sum(weights)))  # examples per epoch of the mixture
  if len(parts) > 1:
    _same_structure(parts, [n for n, _ in mix])
  ds = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, weights)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=int(config.input.num_threads),
                                            prefetch_buffer_size=int(config.input.prefetch)))
  it = it.batch(sources.host_batch_size(config.batch_size, process_count), drop_remainder=True)
  workers = int(config.input.num_workers)
  if workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return it, num_examples


