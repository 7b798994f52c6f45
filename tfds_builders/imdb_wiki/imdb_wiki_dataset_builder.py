"""imdb_wiki: IMDB-WIKI (Rothe et al., IJCV 2018) single-face celebrity photos for pretraining.

Reads imdb_crop/imdb.mat and wiki_crop/wiki.mat (MATLAB structs, read with scipy.io.loadmat; no
pickle) next to the <00..99>/<file>.jpg images, keeps the photos with one face whose detector
score reaches the config's `min_face_score`, and crops the face given by `face_location` with
vaflax.faces.crop_face. The full-image release (imdb/imdb.mat, wiki/wiki.mat) works too.
No valence/arousal (va_mask 0, emotion -1); age, gender and the celebrity are extra features.
One `train` split (the dataset has none).
"""

from __future__ import annotations

import dataclasses
import datetime
import os

import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from vaflax import faces
from vaflax.data import builder_utils as bu

CROP = faces.CropSpec(size=256)  # box crop, margin 0.2 around the face box, as the other builders
SOURCES = ('imdb', 'wiki')
# The *_crop images are the detector's box plus 40 % of its width/height on each side, cut at the
# image border (dataset homepage: "faces only ... with 40 % margin"). Where that cut is not at
# the border the face starts 0.4 w into the crop, otherwise at its original x: min(x, 0.4 w).
CROP_RELEASE_MARGIN = 0.4
BOX_TOLERANCE = 0.1  # how far (fraction of the box side) a face box may stick out of the image
REQUIRED_FIELDS = ('full_path', 'face_location', 'face_score', 'second_face_score')
MAX_AGE = 120


@dataclasses.dataclass(eq=False)
class ImdbWikiConfig(tfds.core.BuilderConfig):
  """min_face_score: keep faces whose detector score is >= this (1.0: the value common IMDB-WIKI
  age/gender code such as yu4u/age-gender-estimation uses; scores run from about -1 to 7).
  max_second_face_score: None keeps only photos without any second face; a number also keeps
  photos whose second face scores below it."""

  min_face_score: float = 1.0
  max_second_face_score: float | None = None


def _num(x: float) -> str:
  return f'{x:g}'.replace('-', 'm').replace('.', 'p')


def make_config(min_face_score: float | None = None,
                max_second_face_score: float | None = None) -> ImdbWikiConfig:
  """A config for non-default thresholds, named after them (its own data_dir sub-folder)."""
  score = 1.0 if min_face_score is None else float(min_face_score)
  name = f'min_score_{_num(score)}'
  if max_second_face_score is not None:
    name += f'_second_below_{_num(max_second_face_score)}'
  return ImdbWikiConfig(
      name=name, min_face_score=score, max_second_face_score=max_second_face_score,
      description='custom face-score thresholds')


def _strings(cell) -> list[str]:
  out = []
  for x in np.ravel(cell):
    x = np.ravel(x)
    out.append(str(x[0]) if x.size else '')
  return out


def _floats(arr) -> np.ndarray:
  return np.ravel(np.asarray(arr, np.float64))


def matlab_age(dob: float, photo_taken: float) -> float:
  """Age in years at 1 July of photo_taken (the dataset README's convention); NaN if implausible.

  dob is a MATLAB serial date number: datenum(y, m, d) = date(y, m, d).toordinal() + 366.
  """
  if not (np.isfinite(dob) and np.isfinite(photo_taken) and 1 <= photo_taken <= 9999):
    return float('nan')
  taken = datetime.date(int(photo_taken), 7, 1).toordinal() + 366
  age = (taken - dob) / 365.2425
  return float(age) if 0 <= age <= MAX_AGE else float('nan')


def read_mat(path: str, source: str) -> dict:
  """The struct of imdb.mat / wiki.mat as equal-length lists/arrays per field."""
  try:
    mat = scipy.io.loadmat(path)
  except NotImplementedError as e:  # MATLAB v7.3 files are HDF5
    raise bu.BadInputError(path, f'unsupported MATLAB file version ({e})',
                           'use the .mat from the dataset page (MATLAB v5 format)') from e
  except Exception as e:
    raise bu.BadInputError(path, f'unreadable .mat file ({type(e).__name__}: {e})') from e
  keys = [k for k in mat if not k.startswith('__')]
  key = source if source in mat else (keys[0] if len(keys) == 1 else None)
  if key is None:
    raise bu.BadInputError(path, f'no {source!r} struct in the .mat (variables: {keys})')
  rec = mat[key]
  names = rec.dtype.names or ()
  missing = [f for f in REQUIRED_FIELDS if f not in names]
  if missing:
    raise bu.BadInputError(path, f'struct {key!r} lacks fields {missing} (has {list(names)})')
  rec = rec[0, 0]
  n = np.ravel(rec['full_path']).size
  out = {
      'full_path': _strings(rec['full_path']),
      'face_location': [np.ravel(np.asarray(x, np.float64)) for x in np.ravel(rec['face_location'])],
      'face_score': _floats(rec['face_score']),
      'second_face_score': _floats(rec['second_face_score']),
      'dob': _floats(rec['dob']) if 'dob' in names else np.full(n, np.nan),
      'photo_taken': _floats(rec['photo_taken']) if 'photo_taken' in names else np.full(n, np.nan),
      'gender': _floats(rec['gender']) if 'gender' in names else np.full(n, np.nan),
      'name': _strings(rec['name']) if 'name' in names else [''] * n,
      'celeb_id': _floats(rec['celeb_id']) if 'celeb_id' in names else np.full(n, np.nan),
  }
  bad = {k: len(v) for k, v in out.items() if len(v) != n}
  if bad:
    raise bu.BadInputError(path, f'fields of unequal length: full_path has {n}, {bad}')
  return out


def find_sources(root: str) -> list[tuple[str, str, str]]:
  """[(source, folder of the .mat and images, 'crop' | 'full')], crop release preferred."""
  out = []
  for src in SOURCES:
    mats = bu.find_paths(root, f'{src}.mat', max_depth=4, want_dir=False)
    crop = [m for m in mats if os.path.basename(os.path.dirname(m)) == f'{src}_crop']
    full = [m for m in mats if m not in crop]
    if crop:
      out.append((src, os.path.dirname(crop[0]), 'crop'))
    elif full:
      out.append((src, os.path.dirname(full[0]), 'full'))
  if not out:
    raise bu.BadInputError(
        root, 'neither imdb_crop/imdb.mat nor wiki_crop/wiki.mat found (4 levels deep)',
        Builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip())
  return out


def face_box(location, frame: str):
  """(x, y, w, h) in pixels of the file from MATLAB's [x1 y1 x2 y2] (1-based, inclusive)."""
  x1, y1, x2, y2 = location
  x, y, w, h = x1 - 1.0, y1 - 1.0, x2 - x1 + 1.0, y2 - y1 + 1.0
  if frame == 'crop':  # the face inside the 40 %-margin crop (see CROP_RELEASE_MARGIN)
    x, y = min(x, CROP_RELEASE_MARGIN * w), min(y, CROP_RELEASE_MARGIN * h)
  return x, y, w, h


def box_inside(box, height: int, width: int) -> bool:
  x, y, w, h = box
  tol = BOX_TOLERANCE * max(w, h)
  return x >= -tol and y >= -tol and x + w <= width + tol and y + h <= height + tol


class Builder(tfds.core.GeneratorBasedBuilder):
  """IMDB-WIKI single-face crops with age/gender; no VA labels."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [ImdbWikiConfig(
      name='default', description='face_score >= 1.0, no second face')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  IMDB-WIKI (academic research use only): from
  https://data.vision.ee.ethz.ch/cvl/rrothe/imdb-wiki/ download the "faces only" archives
  imdb_crop.tar and wiki_crop.tar and unpack them under manual_dir, giving
  imdb_crop/<00..99>/<file>.jpg with imdb_crop/imdb.mat and wiki_crop/<00..99>/<file>.jpg with
  wiki_crop/wiki.mat (either one alone works). The full-image release (wiki.tar, imdb_0..9.tar
  plus imdb_meta.tar, unpacked so that imdb/imdb.mat sits next to imdb/<00..99>/) is read the
  same way when no *_crop folder exists.
  """

  def __init__(self, *, min_face_score: float | None = None,
               max_second_face_score: float | None = None, **kwargs):
    if min_face_score is not None or max_second_face_score is not None:
      if kwargs.get('config') is not None:
        raise ValueError('imdb_wiki: give either config= or the score thresholds, not both')
      kwargs['config'] = make_config(min_face_score, max_second_face_score)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return self.dataset_info_from_configs(
        features=bu.frame_features(CROP.size, extra={
            'gender': tfds.features.Scalar(dtype=np.int32),
            'age': tfds.features.Scalar(dtype=np.float32),
            'face_score': tfds.features.Scalar(dtype=np.float32),
            'second_face_score': tfds.features.Scalar(dtype=np.float32),
            'celeb_id': tfds.features.Scalar(dtype=np.int32),
            'name': tfds.features.Text(),
            'face_box': tfds.features.Tensor(shape=(4,), dtype=np.float32),
        }),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(
            crop=CROP.to_dict(), emotion_names=[],
            va_scale='none: no valence/arousal labels (va_mask 0)',
            min_face_score=cfg.min_face_score,
            max_second_face_score=cfg.max_second_face_score,
            gender_names=['female', 'male'],
            crop_note=f'face_location (1-based x1 y1 x2 y2) -> box; in *_crop images the box is at '
                 f'(min(x, {CROP_RELEASE_MARGIN} w), min(y, {CROP_RELEASE_MARGIN} h)); '
                 f'crop_face margin {CROP.margin}'),
        homepage='https://data.vision.ee.ethz.ch/cvl/rrothe/imdb-wiki/',
    )

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    return bu.non_empty_splits(self, {'train': self._generate_examples(root, find_sources(root))})

  def _keep(self, meta, i, skips, rel) -> bool:
    cfg = self.builder_config
    score, second = meta['face_score'][i], meta['second_face_score'][i]
    if not np.isfinite(score):  # -Inf: the detector found no face (dataset README)
      skips.skip('no face (face_score -inf)', rel)
    elif score < cfg.min_face_score:
      skips.skip(f'below face-score threshold {cfg.min_face_score:g}', rel)
    elif np.isfinite(second) and (cfg.max_second_face_score is None
                                  or second >= cfg.max_second_face_score):
      skips.skip('second face', rel)
    else:
      return True
    return False

  def _generate_examples(self, root, sources):
    writer = bu.SplitWriter('train')
    for src, folder, frame in sources:
      meta = read_mat(os.path.join(folder, f'{src}.mat'), src)
      for i, full_path in enumerate(meta['full_path']):
        path = os.path.join(folder, full_path)
        rel = os.path.relpath(path, root)
        if not self._keep(meta, i, writer.skips, rel):
          continue
        loc = meta['face_location'][i]
        box = face_box(loc, frame) if loc.size == 4 and np.isfinite(loc).all() else None
        if box is None or box[2] <= 0 or box[3] <= 0:
          writer.skips.skip('bad face_location', f'{rel} ({loc.tolist()})')
          continue
        if not os.path.exists(path):
          writer.skips.skip('missing image file', rel)
          continue
        try:
          img = bu.read_image(path)
        except bu.BadInputError as e:
          writer.skips.skip('unreadable image file', f'{rel} ({e.problem})')
          continue
        if not box_inside(box, *img.shape[:2]):
          writer.skips.skip('face_location outside the image', f'{rel} ({loc.tolist()})')
          continue
        crop, _ = faces.crop_face(img, box=box, spec=CROP)
        g, cid = meta['gender'][i], meta['celeb_id'][i]
        ex = bu.default_example(
            image=bu.encode_image(crop), file=rel,
            gender=int(g) if g in (0.0, 1.0) else -1,
            age=matlab_age(meta['dob'][i], meta['photo_taken'][i]),
            face_score=float(meta['face_score'][i]),
            second_face_score=float(meta['second_face_score'][i]),
            celeb_id=int(cid) if np.isfinite(cid) else -1, name=meta['name'][i],
            face_box=np.asarray(box, np.float32))
        yield from writer.emit(rel, [ex])
    writer.videos.clear()  # still images: no video table
    writer.finish(self)
