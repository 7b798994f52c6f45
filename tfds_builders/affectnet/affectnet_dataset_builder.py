"""affectnet: AffectNet (Mollahosseini et al., TAC 2017), manually annotated still images.

Two distributions are read: the original one (training.csv / validation.csv with face boxes and
68 landmarks, images under Manually_Annotated_Images/) and the newer per-image .npy one
(train_set/, val_set/ with images/<id>.jpg and annotations/<id>_{exp,val,aro,lnd}.npy, images
already face crops). Valence/arousal are in [-1, 1]; -2 marks "not annotated" and is masked.
Layout and bad-input handling: README.md.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import re

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from vaflax import circumplex, faces
from vaflax.data import builder_utils as bu

CROP = faces.CropSpec(aligned=True, size=256)  # aligned on the 68 landmarks (box crop without)
NOT_ANNOTATED = -2.0  # AffectNet's valence/arousal marker for Uncertain / No-Face images
# `expression` codes 0-10 (AffectNet paper; datasets.md section 3a). 0-7 are the emotions.
EXPRESSION_NAMES = (*circumplex.AFFECTNET_EMOTIONS, 'none', 'uncertain', 'no-face')
NUM_EMOTIONS = len(circumplex.AFFECTNET_EMOTIONS)  # 8
CSV_COLUMNS = ('subDirectory_filePath', 'face_x', 'face_y', 'face_width', 'face_height',
               'facial_landmarks', 'expression', 'valence', 'arousal')
CSV_FILES = {'train': 'training.csv', 'validation': 'validation.csv'}
CSV_IMAGE_DIR = 'Manually_Annotated_Images'
NPY_DIRS = {'train': 'train_set', 'validation': 'val_set'}
IMAGE_EXTS = ('.jpg', '.jpeg', '.png')
MAX_DEPTH = 4


class Builder(tfds.core.GeneratorBasedBuilder):
  """AffectNet: valence/arousal in [-1, 1] and 8 emotions (11 expression codes), still images."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  AffectNet: request it at http://mohammadmahoor.com/affectnet/ (academic licence agreement).
  Original release: unpack Manually_Annotated_file_lists.zip (training.csv, validation.csv) and
  the Manually_Annotated.part*.rar archives (Manually_Annotated_Images/<n>/<hash>.jpg) anywhere
  under manual_dir. Newer release: put its train_set/ and val_set/ folders (images/,
  annotations/) under manual_dir. When both are present the original (csv) release is built.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=bu.frame_features(
            CROP.size, extra={'expression': tfds.features.Scalar(dtype=np.int32)}),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(
            crop=CROP.to_dict(), emotion_names=list(circumplex.AFFECTNET_EMOTIONS),
            expression_names=list(EXPRESSION_NAMES), release=None,
            split_rule='the official split: training.csv (train_set/) -> train, '
                       'validation.csv (val_set/) -> validation',
            va_scale='valence, arousal annotated in [-1, 1] (kept); -2 = not annotated -> mask',
            crop_note='aligned on the 68 landmarks; rows without landmarks: csv release, box '
                      'crop of the face box; npy release, the whole image (already a face crop) '
                      'squared, margin 0'),
        homepage='http://mohammadmahoor.com/affectnet/',
    )

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    csvs = {s: bu.find_paths(root, n, max_depth=MAX_DEPTH, want_dir=False)
            for s, n in CSV_FILES.items()}
    npys = {s: [p for p in bu.find_paths(root, n, max_depth=MAX_DEPTH, want_dir=True)
                if os.path.isdir(os.path.join(p, 'images'))]
            for s, n in NPY_DIRS.items()}
    if any(csvs.values()):
      image_dirs = bu.find_paths(root, CSV_IMAGE_DIR, max_depth=MAX_DEPTH, want_dir=True)
      if not image_dirs:
        raise bu.BadInputError(
            os.path.join(root, CSV_IMAGE_DIR), 'image folder not found under manual_dir',
            'unpack Manually_Annotated.part*.rar so that Manually_Annotated_Images/ exists')
      if any(npys.values()):
        logging.warning('AffectNet: both releases found; building the csv release')
      self.info.metadata['release'] = 'csv'
      return bu.non_empty_splits(self, {
          s: self._generate_examples(s, 'csv', (csvs[s] or [None])[0], image_dirs, root)
          for s in CSV_FILES})
    if any(npys.values()):
      self.info.metadata['release'] = 'npy'
      return bu.non_empty_splits(self, {
          s: self._generate_examples(s, 'npy', (npys[s] or [None])[0], None, root)
          for s in NPY_DIRS})
    raise bu.BadInputError(
        root, 'neither training.csv/validation.csv nor train_set/ and val_set/ found',
        self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip())

  def _generate_examples(self, split, release, path, image_dirs, root):
    if path is None:  # a partial download: this split's csv / folder is not there
      writer = bu.SplitWriter(split)
      what = CSV_FILES[split] if release == 'csv' else f'{NPY_DIRS[split]}/images/'
      writer.skips.skip(f'{what} not found under manual_dir: split empty', root)
      writer.finish(self)
      return
    if release == 'csv':
      yield from self._generate_csv(split, path, image_dirs, root)
    else:
      yield from self._generate_npy(split, path, root)

  def _generate_csv(self, split, csv_path, image_dirs, root):
    writer = bu.SplitWriter(split)
    name = os.path.basename(csv_path)
    for line_no, row in _csv_rows(csv_path, writer.skips):
      item = f'{name}:{line_no}'
      rel = row['subDirectory_filePath'].strip().replace('\\', '/')
      labels = _labels(row['expression'], row['valence'], row['arousal'], item, writer.skips)
      if labels is None:
        continue
      path = _find_image(image_dirs, rel)
      if path is None:
        writer.skips.skip('image file missing', rel)
        continue
      lm = _parse_landmarks(row['facial_landmarks'])
      try:
        box = tuple(float(row[k]) for k in ('face_x', 'face_y', 'face_width', 'face_height'))
      except ValueError:
        box = (math.nan,) * 4
      if not (np.isfinite(box).all() and box[2] > 0 and box[3] > 0):
        if lm is None:
          writer.skips.skip('face box invalid and no landmarks to replace it', item)
          continue
        writer.skips.skip('face box invalid: cropped from the landmarks instead', item)
        box = faces.box_from_landmarks(lm)
      try:
        img = bu.read_image(path)
      except bu.BadInputError as e:
        writer.skips.skip(e.problem, rel)
        continue
      if lm is None and row['facial_landmarks'].strip():
        writer.skips.skip('landmarks not 136 numbers: landmarks_mask 0, image kept', item)
      crop, cb = faces.crop_face(img, box=box, landmarks=lm, spec=CROP)
      ex = _example(crop, cb, lm, labels, file=os.path.relpath(path, root))
      yield from writer.emit(os.path.splitext(rel)[0], [ex])
    writer.videos.clear()  # still images: no video table (pipeline: one "video" per record)
    writer.finish(self)

  def _generate_npy(self, split, folder, root):
    writer = bu.SplitWriter(split)
    ann_dir = os.path.join(folder, 'annotations')
    images = [f for f in os.listdir(os.path.join(folder, 'images'))
              if f.lower().endswith(IMAGE_EXTS)]
    for f in sorted(images, key=_numeric_key):
      stem = os.path.splitext(f)[0]
      path = os.path.join(folder, 'images', f)
      rel = os.path.relpath(path, root)
      raw = {k: _load_npy(os.path.join(ann_dir, f'{stem}_{k}.npy')) for k in
             ('exp', 'val', 'aro', 'lnd')}
      missing = [k for k in ('exp', 'val', 'aro') if raw[k] is None]
      if len(missing) == 3:
        writer.skips.skip('no annotation file (<id>_exp/_val/_aro.npy)', rel)
        continue
      if missing:
        writer.skips.skip(f'annotation file(s) {", ".join(missing)} missing or unreadable: '
                          'those labels absent', rel)
      labels = _labels(*(_scalar_text(raw[k]) for k in ('exp', 'val', 'aro')), rel, writer.skips)
      if labels is None:
        continue
      lm = _parse_landmarks(raw['lnd']) if raw['lnd'] is not None else None
      if raw['lnd'] is not None and lm is None:
        writer.skips.skip('landmarks not 136 numbers: landmarks_mask 0, image kept', rel)
      try:
        img = bu.read_image(path)
      except bu.BadInputError as e:
        writer.skips.skip(e.problem, rel)
        continue
      h, w = img.shape[:2]
      # The release's images are face crops already: without landmarks keep all of it, squared
      # (zero padding, no margin).
      spec = CROP if lm is not None else dataclasses.replace(CROP, margin=0.0)
      crop, cb = faces.crop_face(img, box=(0, 0, w, h), landmarks=lm, spec=spec)
      yield from writer.emit(f'{split}/{stem}', [_example(crop, cb, lm, labels, file=rel)])
    writer.videos.clear()  # still images: no video table (pipeline: one "video" per record)
    writer.finish(self)


def _csv_rows(path, skips):
  """(line number, row dict keyed by CSV_COLUMNS) of the data rows; the header row is optional."""
  name = os.path.basename(path)
  with open(path, newline='', encoding='utf-8-sig') as f:
    reader = csv.reader(f)
    index = list(range(len(CSV_COLUMNS)))  # column order without a header
    width = len(CSV_COLUMNS)
    for fields in reader:
      if reader.line_num == 1 and fields and fields[0].strip().lower() == CSV_COLUMNS[0].lower():
        header = [h.strip().lower() for h in fields]
        missing = [c for c in CSV_COLUMNS if c.lower() not in header]
        if missing:
          raise bu.BadInputError(path, f'header lacks columns {missing}',
                                 f'expected {",".join(CSV_COLUMNS)}')
        index = [header.index(c.lower()) for c in CSV_COLUMNS]
        width = len(header)
        continue
      if not any(s.strip() for s in fields):
        continue
      if len(fields) != width:
        skips.skip(f'row has {len(fields)} fields, expected {width}', f'{name}:{reader.line_num}')
        continue
      yield reader.line_num, {c: fields[i] for c, i in zip(CSV_COLUMNS, index, strict=True)}


def _find_image(image_dirs, rel):
  for d in image_dirs:
    r = rel
    prefix = os.path.basename(d) + '/'
    if r.startswith(prefix):
      r = r[len(prefix):]
    p = os.path.join(d, r)
    if os.path.isfile(p):
      return p
  return None


def _numeric_key(name):
  stem = os.path.splitext(name)[0]
  return (0, int(stem), '') if stem.isdigit() else (1, 0, stem)


def _load_npy(path):
  """The array of an .npy file, or None when it is missing or unreadable (no pickles)."""
  if not os.path.isfile(path):
    return None
  try:
    return np.load(path, allow_pickle=False)
  except (OSError, ValueError):
    return None


def _scalar_text(arr):
  """A 0-d / 1-element array (number or string) as text for _labels; '' when absent."""
  if arr is None:
    return ''
  a = np.asarray(arr).reshape(-1)
  return str(a[0]) if a.size == 1 else ''


def _parse_landmarks(value):
  """68 (x, y) pixels from 'x1;y1;...;x68;y68' or an array of 136 numbers; None if malformed."""
  try:
    if isinstance(value, str):
      nums = [float(s) for s in re.split(r'[;,\s]+', value.strip()) if s]
    else:
      nums = np.asarray(value).astype(np.float64).reshape(-1).tolist()
  except ValueError:
    return None
  lm = np.asarray(nums, np.float64)
  if lm.size != 2 * bu.NUM_LANDMARKS or not np.isfinite(lm).all():
    return None
  return lm.reshape(bu.NUM_LANDMARKS, 2)


def _labels(expression: str, valence: str, arousal: str, item, skips):
  """dict(expression, emotion, valence_raw, arousal_raw, va_mask) or None (no usable label)."""
  try:
    code = int(float(expression))
    if not 0 <= code < len(EXPRESSION_NAMES):
      raise ValueError
  except ValueError:
    code = -1
    if expression.strip():
      skips.skip(f'expression {expression.strip()!r} not in 0..10: emotion -1', item)
  raw, mask, marker = [], [], False
  for dim, text in (('valence', valence), ('arousal', arousal)):
    try:
      v = float(text)
    except ValueError:
      v = math.nan
    if v == NOT_ANNOTATED:
      raw.append(math.nan)
      mask.append(0.0)
      marker = True
    elif math.isfinite(v) and -1.0 <= v <= 1.0:
      raw.append(v)
      mask.append(1.0)
    else:
      raw.append(math.nan)
      mask.append(0.0)
      if text.strip():
        skips.skip(f'{dim} not a number in [-1, 1] nor -2: masked', item)
  emotion = code if 0 <= code < NUM_EMOTIONS else -1
  if emotion < 0 and not any(mask):
    what = EXPRESSION_NAMES[code] if code >= 0 else 'unknown'
    skips.skip(f'no label (expression {code} {what}, no valid valence/arousal)', item, log=False)
    return None
  if marker:
    skips.skip('valence/arousal -2 (not annotated): masked, image kept', item, log=False)
  return dict(expression=code, emotion=emotion, valence_raw=raw[0], arousal_raw=raw[1],
              va_mask=np.asarray(mask, np.float32))


def _example(crop, cb, lm, labels, file):
  va = np.nan_to_num([labels['valence_raw'], labels['arousal_raw']])
  ex = bu.default_example(
      image=bu.encode_image(crop), valence=float(va[0]), arousal=float(va[1]),
      va_mask=labels['va_mask'], valence_raw=float(labels['valence_raw']),
      arousal_raw=float(labels['arousal_raw']), emotion=labels['emotion'],
      expression=labels['expression'], file=file)
  if lm is not None:
    ex.update(landmarks=cb.to_crop(lm).astype(np.float32), landmarks_mask=1.0)
  return ex
