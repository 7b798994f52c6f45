r"""Builds a vaflax dataset without TensorFlow or Apache Beam.

  python -m vaflax.data.build <name> --manual_dir=M --data_dir=D [--overwrite]

<name> is a folder of tfds_builders/ (afew_va, affwild2_va, ..., synthetic_va). Afterwards
`tfds.data_source('<name>', split=..., data_dir=D)` reads it (with the builder module imported,
e.g. through `vaflax.data.build.builder_module(name)`).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging as py_logging
import os
import pkgutil
import shutil
import sys
import time

import tensorflow_datasets as tfds
from absl import logging

import tfds_builders
from vaflax import cli
from vaflax.presets import DEFAULT_DATA_DIR

NO_DOWNLOAD = {'synthetic_va', 'synthetic_va_large', 'synthetic_va_heldout'}  # no manual_dir

# TFDS's console lines that describe a download; vaflax's builders download nothing (the
# synthetic sets are drawn, the others read --manual_dir), so `build` prints its own line instead.
_TFDS_DOWNLOAD_LINES = ('Downloading and preparing dataset', 'downloaded and prepared to')


class _NoVariantFolderWarning(py_logging.Filter):
  """Drops TFDS's 'Variant folder ... has no dataset_info.json': a version folder that a build
  is still writing (this one or another process's) is not finished yet, which is expected;
  `is_prepared` says whether a dataset is there."""

  def filter(self, record) -> bool:
    return not str(record.msg).startswith('Variant folder %s has no')


@contextlib.contextmanager
def _no_variant_folder_warning():
  quiet, absl_logger = _NoVariantFolderWarning(), py_logging.getLogger('absl')
  absl_logger.addFilter(quiet)
  try:
    yield
  finally:
    absl_logger.removeFilter(quiet)


def available() -> list[str]:
  return sorted(
      m.name for m in pkgutil.iter_modules(tfds_builders.__path__) if m.ispkg)


def builder_module(name: str):
  """Imports tfds_builders/<name>/<name>_dataset_builder.py (which registers it with TFDS)."""
  if name not in available():
    raise ValueError(
        f'unknown dataset {name!r}: vaflax has builders for {", ".join(available())}')
  return importlib.import_module(f'tfds_builders.{name}.{name}_dataset_builder')


def make_builder(name: str, data_dir: str, **kwargs) -> tfds.core.DatasetBuilder:
  mod = builder_module(name)
  with _no_variant_folder_warning():
    return mod.Builder(data_dir=os.path.expanduser(data_dir), file_format='array_record', **kwargs)


def is_built(name: str, data_dir: str) -> bool:
  b = make_builder(name, data_dir)
  with _no_variant_folder_warning():
    return b.is_prepared()


def build(name: str, data_dir: str, manual_dir: str | None = None, overwrite: bool = False,
          verbose: bool = True, **builder_kwargs) -> tfds.core.DatasetBuilder:
  """Builds `name` into data_dir and returns the builder; prints a per-split summary."""
  b = make_builder(name, data_dir, **builder_kwargs)
  if overwrite and os.path.isdir(b.data_dir):
    shutil.rmtree(b.data_dir)
    b = make_builder(name, data_dir, **builder_kwargs)
  if name not in NO_DOWNLOAD:
    if not manual_dir:
      raise ValueError(
          f'{name} is built from files you download by hand: pass --manual_dir=DIR.\n'
          f'{b.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    manual_dir = os.path.expanduser(manual_dir)
    if not os.path.isdir(manual_dir) or not os.listdir(manual_dir):
      raise FileNotFoundError(
          f'manual_dir {manual_dir} does not exist or is empty. {b.MANUAL_DOWNLOAD_INSTRUCTIONS}')
  t0 = time.time()
  source = ('drawn procedurally, nothing is downloaded' if name in NO_DOWNLOAD
            else f'from the files in {manual_dir}')
  print(f'Generating {name} {b.version} ({source}) into {b.data_dir} ...', flush=True)
  _prepare(b, manual_dir)
  if verbose:
    print(summary(b, time.time() - t0))
  return b


def _prepare(b: tfds.core.DatasetBuilder, manual_dir: str | None) -> None:
  """download_and_prepare without TFDS's download wording (its other lines pass through)."""
  out = io.StringIO()
  try:
    with _no_variant_folder_warning(), contextlib.redirect_stdout(out):
      b.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=manual_dir or None))
  finally:
    for line in out.getvalue().splitlines():
      if line.strip() and not any(t in line for t in _TFDS_DOWNLOAD_LINES):
        print(line)


def summary(b: tfds.core.DatasetBuilder, seconds: float | None = None) -> str:
  lines = [f'{b.name} {b.version} in {b.data_dir}' + (f' ({seconds:.1f} s)' if seconds else '')]
  skipped = b.info.metadata.get('skipped', {}) if b.info.metadata else {}
  for split, info in sorted(b.info.splits.items()):
    lines.append(f'  {split:<12s} {info.num_examples:>9d} examples')
    for reason, s in (skipped.get(split) or {}).items():
      lines.append(f'    skipped {s["count"]:>6d}  {reason}  (e.g. {", ".join(s["examples"][:2])})')
  md = b.info.metadata or {}
  for split, rule in sorted((md.get('empty_splits') or {}).items()):
    lines.append(f'  {split:<12s}     EMPTY: nothing under manual_dir falls in it (split rule: {rule})')
    for reason, s in (skipped.get(split) or {}).items():
      lines.append(f'    skipped {s["count"]:>6d}  {reason}  (e.g. {", ".join(s["examples"][:2])})')
  return '\n'.join(lines)


@cli.entry_point
def main(argv) -> int:
  p = cli.parser('vaflax.data.build', __doc__, line=2)
  p.add_argument('name', help=f'the dataset: {", ".join(available())}')
  p.add_argument('--manual_dir', default=None, help='folder with the files you downloaded')
  p.add_argument('--data_dir', default=DEFAULT_DATA_DIR, help='where to write the dataset')
  p.add_argument('--overwrite', action='store_true', help='rebuild even if already built')
  args = cli.parse(p, argv)
  logging.set_verbosity(logging.WARNING)
  build(args.name, args.data_dir, args.manual_dir, args.overwrite)
  return 0


if __name__ == '__main__':
  sys.exit(main())
