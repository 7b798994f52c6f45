"""fer2013: FER2013 (Goodfellow et al., ICML 2013 challenge) 48x48 faces, with FER+ votes.

Category-only dataset: each image gets the valence/arousal point of its emotion from
vaflax.circumplex (va_derived True). When FER+'s fer2013new.csv is present, its 10 vote counts
and the FER+ majority label are added (Barsoum et al. 2016). Layout: see README.md.
"""

from __future__ import annotations

import csv
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from vaflax import circumplex, faces
from vaflax.data import builder_utils as bu

SIDE = 48
CROP = faces.CropSpec(margin=0.0, size=SIDE)  # already face crops, stored as is (no upscaling)
# Kaggle's emotion codes 0-6 (datasets.md section 6).
EMOTION_NAMES = ['angry', 'disgust', 'fear', 'happy', 'sad', 'surprise', 'neutral']
USAGE_TO_SPLIT = {'Training': 'train', 'PublicTest': 'validation', 'PrivateTest': 'test'}
CSV_NAMES = ('fer2013.csv', 'icml_face_data.csv')  # the latter: Kaggle's later re-upload
FERPLUS_CSV = 'fer2013new.csv'
# fer2013new.csv vote columns, in file order (microsoft/FERPlus README).
FERPLUS_COLUMNS = ['neutral', 'happiness', 'surprise', 'sadness', 'anger', 'disgust', 'fear',
                   'contempt', 'unknown', 'NF']
FERPLUS_EMOTIONS = FERPLUS_COLUMNS[:8]


def ferplus_majority(votes) -> int:
  """FER+ 'majority' label (Barsoum et al. 2016, arXiv:1608.01041) or -1.

  Single votes are dropped as outliers; the top class must hold more than half of the remaining
  votes and be one of the 8 emotions (not 'unknown' or 'not a face').
  """
  v = np.asarray(votes, np.float64)
  v = np.where(v <= 1, 0.0, v)
  total = v.sum()
  top = int(np.argmax(v))
  if total <= 0 or v[top] <= 0.5 * total or top >= len(FERPLUS_EMOTIONS):
    return -1
  return top


class Builder(tfds.core.GeneratorBasedBuilder):
  """FER2013 faces with the emotion label, a derived VA point and (optional) FER+ votes."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download fer2013.csv (emotion,pixels,Usage) from the Kaggle challenge "Challenges in
  Representation Learning: Facial Expression Recognition Challenge"
  (https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-recognition-challenge/data;
  the later icml_face_data.csv works too) and, optionally, fer2013new.csv from
  https://github.com/microsoft/FERPlus. Put them anywhere under manual_dir.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=bu.frame_features(CROP.size, encoding='png', extra={
            'ferplus_votes': tfds.features.Tensor(shape=(10,), dtype=np.int32),
            'ferplus_emotion': tfds.features.Scalar(dtype=np.int32),
        }),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(
            crop=CROP.to_dict(), emotion_names=EMOTION_NAMES,
            split_rule='Usage column: Training -> train, PublicTest -> validation, '
                       'PrivateTest -> test',
            va_scale='derived from emotion via vaflax.circumplex.EMOTION_VA (Russell & Mehrabian '
                     '1977), in [-1, 1]',
            ferplus=False, ferplus_vote_names=FERPLUS_COLUMNS,
            ferplus_emotion_names=FERPLUS_EMOTIONS),
        homepage='https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-recognition-challenge',
    )

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    found = [p for n in CSV_NAMES for p in bu.find_paths(root, n, max_depth=4, want_dir=False)]
    if not found:
      raise bu.BadInputError(os.path.join(root, CSV_NAMES[0]), 'not found under manual_dir',
                             self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip())
    path = found[0]
    ferplus = None
    fp = bu.find_paths(root, FERPLUS_CSV, max_depth=4, want_dir=False)
    if fp:
      ferplus = _read_ferplus(fp[0], path)
      self.info.metadata['ferplus'] = True
    return bu.non_empty_splits(
        self, {s: self._generate_examples(s, path, ferplus) for s in USAGE_TO_SPLIT.values()})

  def _generate_examples(self, split, path, ferplus):
    writer = bu.SplitWriter(split)
    name = os.path.basename(path)
    for idx, line_no, row, problem in _rows(path):
      usage_split = USAGE_TO_SPLIT.get(row.get('Usage', ''))
      # Rows whose split cannot be told are counted once, under train.
      if usage_split != split and not (usage_split is None and split == 'train'):
        continue
      item = f'{name}:{line_no}'
      if problem is None and usage_split is None:
        problem = f'unknown Usage {row.get("Usage")!r} (expected {", ".join(USAGE_TO_SPLIT)})'
      pixels = None
      if problem is None:
        pixels, problem = _pixels(row['pixels'])
      if problem is not None:
        writer.skips.skip(problem, item)
        continue
      emo = row['emotion']
      emotion = int(emo) if re.fullmatch(r'\d+', emo) and int(emo) < len(EMOTION_NAMES) else -1
      votes, fp_emotion = np.zeros((10,), np.int32), -1
      if ferplus is not None:
        votes, fp_emotion = ferplus[idx]
      if emotion < 0 and not votes.any():
        writer.skips.skip(f'emotion {emo!r} not in 0..6 and no FER+ votes', item)
        continue
      if emotion < 0:
        writer.skips.skip(f'emotion {emo!r} not in 0..6: emotion -1, FER+ votes kept', item)
      ex = bu.default_example(
          image=bu.encode_image(np.repeat(pixels[..., None], 3, axis=-1), 'png'),
          emotion=emotion, file=item, ferplus_votes=votes, ferplus_emotion=fp_emotion)
      va = circumplex.emotion_to_va(EMOTION_NAMES[emotion]) if emotion >= 0 else None
      if va is not None:
        ex.update(valence=va[0], arousal=va[1], valence_raw=va[0], arousal_raw=va[1],
                  va_mask=np.ones((2,), np.float32), va_derived=True)
      yield from writer.emit(f'fer{idx:07d}', [ex])
    writer.finish(self)


def _rows(path):
  """(data row index, line number, row dict, problem or None); column names are stripped."""
  with open(path, newline='', encoding='utf-8') as f:
    reader = csv.reader(f)
    header = [h.strip() for h in next(reader, [])]
    missing = [c for c in ('emotion', 'pixels', 'Usage') if c not in header]
    if missing:
      raise bu.BadInputError(path, f'header {header} lacks columns {missing}',
                             'expected emotion,pixels,Usage (any order, spaces allowed)')
    for idx, fields in enumerate(reader):
      line_no = reader.line_num
      if len(fields) != len(header):
        # Usage may still be readable if its column is there: count the row in its split.
        usage = fields[header.index('Usage')].strip() if len(fields) > header.index('Usage') else ''
        yield idx, line_no, {'Usage': usage}, (
            f'row has {len(fields)} fields, header has {len(header)}')
        continue
      yield idx, line_no, {h: x.strip() for h, x in zip(header, fields, strict=True)}, None


def _pixels(text) -> tuple[np.ndarray | None, str | None]:
  parts = text.split()
  if len(parts) != SIDE * SIDE:
    return None, f'pixels has {len(parts)} values, expected {SIDE * SIDE}'
  try:
    vals = np.array([int(p) for p in parts], np.int64)
  except ValueError:
    return None, 'pixels holds a non-integer value'
  if vals.min() < 0 or vals.max() > 255:
    return None, 'pixel value outside 0..255'
  return vals.astype(np.uint8).reshape(SIDE, SIDE), None


def _read_ferplus(path, fer_path) -> list:
  """Per fer2013.csv row: (votes int32 (10,), FER+ majority id or -1); checks the alignment."""
  fer_usages = [row.get('Usage', '') for _, _, row, _ in _rows(fer_path)]
  out = []
  with open(path, newline='', encoding='utf-8') as f:
    reader = csv.reader(f)
    header = [h.strip() for h in next(reader, [])]
    need = ['Usage', 'Image name'] + FERPLUS_COLUMNS
    if [h for h in need if h not in header]:
      raise bu.BadInputError(path, f'header {header} is not the FER+ header',
                             f'expected {",".join(need)}')
    cols = [header.index(c) for c in FERPLUS_COLUMNS]
    for idx, fields in enumerate(reader):
      if idx >= len(fer_usages):
        raise bu.BadInputError(path, f'more rows than the {len(fer_usages)} of {fer_path}',
                               'FER+ has exactly one row per fer2013.csv row')
      if len(fields) != len(header):
        raise bu.BadInputError(path, f'line {reader.line_num} has {len(fields)} fields',
                               'the file must be the unmodified fer2013new.csv')
      usage, image = fields[header.index('Usage')].strip(), fields[header.index('Image name')].strip()
      # A damaged fer2013.csv row (no Usage) is skipped later; it cannot disprove the order.
      known = fer_usages[idx] in USAGE_TO_SPLIT
      if (known and usage != fer_usages[idx]) or (image and image != f'fer{idx:07d}.png'):
        raise bu.BadInputError(
            path, f'line {reader.line_num} ({usage}, {image or "no image name"}) does not match '
            f'row {idx} of {os.path.basename(fer_path)} ({fer_usages[idx]})',
            'FER+ rows must be in the same order as fer2013.csv')
      try:
        votes = np.array([int(fields[c]) for c in cols], np.int32)
      except ValueError as e:
        raise bu.BadInputError(path, f'line {reader.line_num}: non-integer vote ({e})') from e
      out.append((votes, ferplus_majority(votes)))
  if len(out) != len(fer_usages):
    raise bu.BadInputError(path, f'{len(out)} rows but {os.path.basename(fer_path)} has '
                           f'{len(fer_usages)}', 'FER+ has exactly one row per fer2013.csv row')
  return out
