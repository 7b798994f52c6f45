"""afew_va: AFEW-VA (Kossaifi et al., IVC 2017), 600 film clips with per-frame VA and 68 landmarks.

Valence and arousal are integers in [-10, 10] (divided by 10 here). Faces are cropped from the
frame's own 68 landmarks with vaflax.faces.crop_face; landmarks are kept in crop coordinates.
There is no official split: clips are assigned by a hash of the actor's name (see `split_of`),
so no actor appears in two splits. Layout and bad-input handling: README.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from vaflax import faces
from vaflax.data import builder_utils as bu

CROP = faces.CropSpec(aligned=True, size=256)  # aligned on the 68 landmarks' keypoints
SCALE = 10.0  # AFEW-VA README: "signed integers between -10 and 10"
MAX_DEPTH = 4  # manual_dir/[AFEW-VA/][01..12/]<clip>/ plus one level of slack
SPLITS = ('train', 'validation', 'test')
# Pseudo-split buckets of sha1(actor) % 10: 60 / 20 / 20 %, the proportions of emoca's split.
SPLIT_BUCKETS = {'train': range(0, 6), 'validation': range(6, 8), 'test': range(8, 10)}
KAGGLE_SUFFIX = '_cropped'
IGNORED_KAGGLE = 'Kaggle *_cropped duplicate folder ignored (not in the official release)'
_FRAME_RE = re.compile(r'^(\d+)\.png$', re.IGNORECASE)


def split_of(actor: str | None, clip_id: str) -> str:
  """Deterministic split of a clip: bucket sha1(lower-cased actor, else clip id) % 10."""
  key = (actor or '').strip().lower() or f'clip:{clip_id}'
  bucket = int(hashlib.sha1(key.encode('utf-8')).hexdigest(), 16) % 10
  return next(s for s, r in SPLIT_BUCKETS.items() if bucket in r)


class Builder(tfds.core.GeneratorBasedBuilder):
  """AFEW-VA: per-frame valence/arousal in [-10, 10] and 68 landmarks, film clips."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  AFEW-VA: request it from the iBUG group (https://ibug.doc.ic.ac.uk/resources/afew-va-database/,
  academic use). Unzip the 12 parts (they unpack to 01/ ... 12/, each with clip folders
  <clip>/00000.png ... + <clip>/<clip>.json) anywhere under manual_dir, e.g.
  manual_dir/AFEW-VA/01/001/001.json; a flat manual_dir/<clip>/ layout works too. Kaggle copies'
  *_cropped folders are ignored.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=bu.frame_features(CROP.size),
        disable_shuffling=True,  # frames of a clip stay consecutive: windows are index ranges
        metadata=tfds.core.MetadataDict(
            crop=CROP.to_dict(), emotion_names=[], fps=None,
            va_scale='valence_raw, arousal_raw: integers in [-10, 10]; valence = raw / 10',
            split_rule='sha1(actor.strip().lower()) % 10: 0-5 train, 6-7 validation, 8-9 test',
            clip_splits={}),
        homepage='https://ibug.doc.ic.ac.uk/resources/afew-va-database/',
    )

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    clips, notes = scan(root)
    if not clips:
      raise bu.BadInputError(
          root, 'no AFEW-VA clip folder (<clip>/<clip>.json) found under manual_dir',
          self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip())
    by_split = {s: [] for s in SPLITS}
    for clip_id, (path, json_path) in sorted(clips.items()):
      ann, problem = _load_json(json_path)
      split = split_of(ann.get('actor') if ann else None, clip_id)
      by_split[split].append((clip_id, path, json_path, ann, problem))
    clip_splits = {c[0]: s for s, cs in by_split.items() for c in cs}
    self.info.metadata['clip_splits'] = clip_splits
    # Notes about folders (ignored Kaggle copies, duplicates, clips without json) are counted in
    # the split of the clip they belong to, else in train.
    note_by_split = {s: [] for s in SPLITS}
    for clip_id, reason, item in notes:
      note_by_split[clip_splits.get(clip_id, 'train')].append((reason, item))
    return bu.non_empty_splits(
        self, {s: self._generate_examples(s, by_split[s], note_by_split[s], root) for s in SPLITS})

  def _generate_examples(self, split, clips, notes, root):
    writer = bu.SplitWriter(split)
    for reason, item in notes:
      writer.skips.skip(reason, item)
    for clip_id, path, json_path, ann, problem in clips:
      if problem is not None:
        writer.skips.skip(problem, os.path.relpath(json_path, root))
        continue
      yield from writer.emit(clip_id, _clip_examples(clip_id, path, ann, root, writer.skips))
    writer.finish(self)


def scan(root: str):
  """Clip folders under root: ({clip_id: (folder, json path)}, [(clip_id, reason, item)])."""
  clips, notes = {}, []
  base = root.rstrip(os.sep).count(os.sep)
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    kept = []
    for d in dirnames:
      if d.endswith(KAGGLE_SUFFIX):
        # `001_cropped/` next to `001/`, or `<clip>/<anything>_cropped/` inside a clip.
        in_clip = _clip_json(dirpath, filenames) is not None
        owner = os.path.basename(dirpath) if in_clip else d[: -len(KAGGLE_SUFFIX)]
        notes.append((owner, IGNORED_KAGGLE, os.path.relpath(os.path.join(dirpath, d), root)))
      else:
        kept.append(d)
    dirnames[:] = kept if dirpath.rstrip(os.sep).count(os.sep) - base < MAX_DEPTH else []
    name = os.path.basename(dirpath)
    rel = os.path.relpath(dirpath, root)
    json_path = _clip_json(dirpath, filenames)
    if json_path is None:
      if any(_FRAME_RE.match(f) for f in filenames):
        notes.append((name, f'clip folder without {name}.json annotation', rel))
      continue
    if name in clips:
      notes.append((name, 'duplicate clip folder (clip id seen before; first kept)', rel))
      continue
    clips[name] = (dirpath, json_path)
  return clips, notes


def _clip_json(dirpath, filenames):
  """<clip>/<clip>.json, or the only .json of a folder that also holds numbered PNG frames."""
  name = os.path.basename(dirpath)
  if f'{name}.json' in filenames:
    return os.path.join(dirpath, f'{name}.json')
  jsons = [f for f in filenames if f.lower().endswith('.json')]
  if len(jsons) == 1 and any(_FRAME_RE.match(f) for f in filenames):
    return os.path.join(dirpath, jsons[0])
  return None


def _load_json(path):
  """(annotation dict, None) or (None, problem)."""
  try:
    with open(path, encoding='utf-8') as f:
      ann = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    return None, f'annotation json unreadable ({type(e).__name__})'
  if not isinstance(ann, dict) or not isinstance(ann.get('frames'), dict):
    return None, 'annotation json has no "frames" object'
  return ann, None


def _value(entry: dict, key: str) -> float:
  """The label on the raw scale, NaN when missing, not a number or outside [-10, 10]."""
  v = entry.get(key)
  if isinstance(v, bool) or not isinstance(v, int | float | str):
    return math.nan
  try:
    v = float(v)
  except ValueError:
    return math.nan
  return v if -SCALE <= v <= SCALE else math.nan


def _landmarks(entry: dict):
  try:
    lm = np.asarray(entry.get('landmarks'), np.float64)
  except (TypeError, ValueError):
    return None
  if lm.shape != (bu.NUM_LANDMARKS, 2) or not np.isfinite(lm).all():
    return None
  return lm


def _clip_examples(clip_id, path, ann, root, skips):
  frames = ann['frames']
  pngs = {}
  for f in os.listdir(path):
    m = _FRAME_RE.match(f)
    if m:
      pngs[int(m.group(1))] = f
  annotated = {}
  for key, entry in frames.items():
    if not re.fullmatch(r'\d+', str(key)) or not isinstance(entry, dict):
      skips.skip('annotation entry with a non-numeric frame key or no object', f'{clip_id}:{key}')
      continue
    annotated[int(key)] = entry
  for idx in sorted(set(pngs) - set(annotated)):
    rel = os.path.relpath(os.path.join(path, pngs[idx]), root)
    skips.skip('frame image without annotation', rel)
  for idx in sorted(annotated):
    entry = annotated[idx]
    item = f'{clip_id}:{idx:05d}'
    if idx not in pngs:
      skips.skip('annotated frame image missing', item)
      continue
    file = os.path.relpath(os.path.join(path, pngs[idx]), root)
    v_raw, a_raw = _value(entry, 'valence'), _value(entry, 'arousal')
    mask = np.isfinite([v_raw, a_raw]).astype(np.float32)
    if not mask.any():
      skips.skip('valence and arousal missing or outside [-10, 10]', item)
      continue
    lm = _landmarks(entry)
    if lm is None:
      skips.skip('landmarks missing or not 68 finite (x, y) points: no face box', item)
      continue
    try:
      img = bu.read_image(os.path.join(path, pngs[idx]))
    except bu.BadInputError as e:
      skips.skip(e.problem, file)
      continue
    for dim, m in zip(('valence', 'arousal'), mask, strict=True):
      if not m:
        skips.skip(f'{dim} missing or outside [-10, 10]: masked, frame kept', item)
    crop, box = faces.crop_face(img, landmarks=lm, spec=CROP)
    yield bu.default_example(
        image=bu.encode_image(crop),
        valence=float(np.nan_to_num(v_raw) / SCALE), arousal=float(np.nan_to_num(a_raw) / SCALE),
        va_mask=mask, valence_raw=v_raw, arousal_raw=a_raw,
        landmarks=box.to_crop(lm).astype(np.float32), landmarks_mask=1.0,
        frame=idx, file=file)
