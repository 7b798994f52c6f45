"""celeba_faces: CelebA aligned faces (Liu et al., ICCV 2015) for pretraining and probing.

Reads the official release (Anno/*.txt, Eval/list_eval_partition.txt, Img/img_align_celeba/) or
the Kaggle re-release (*.csv with an image_id column, img_align_celeba/img_align_celeba/). Each
image is cropped around a box derived from its 5 aligned landmarks with
`vaflax.detect.box_from_five_points` (framed like the Haar box that face_folder and predict use)
and `vaflax.faces.crop_face`. No valence/arousal: va_mask is 0 and emotion -1; the 40 binary
attributes (Smiling among them: a weak valence cue) and the 5 landmarks are extra features.
Splits: the official partition (0 train, 1 validation, 2 test). Name chosen so as not to clash
with TFDS's own `celeb_a`.
"""

from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from vaflax import detect, faces
from vaflax.data import builder_utils as bu

CROP = faces.CropSpec(aligned=True, size=256)  # aligned on the 5 landmarks
SPLITS = {'train': 0, 'validation': 1, 'test': 2}
# The header of list_attr_celeba.txt / .csv (in this order in both releases).
ATTRIBUTE_NAMES = [
    '5_o_Clock_Shadow', 'Arched_Eyebrows', 'Attractive', 'Bags_Under_Eyes', 'Bald', 'Bangs',
    'Big_Lips', 'Big_Nose', 'Black_Hair', 'Blond_Hair', 'Blurry', 'Brown_Hair', 'Bushy_Eyebrows',
    'Chubby', 'Double_Chin', 'Eyeglasses', 'Goatee', 'Gray_Hair', 'Heavy_Makeup',
    'High_Cheekbones', 'Male', 'Mouth_Slightly_Open', 'Mustache', 'Narrow_Eyes', 'No_Beard',
    'Oval_Face', 'Pale_Skin', 'Pointy_Nose', 'Receding_Hairline', 'Rosy_Cheeks', 'Sideburns',
    'Smiling', 'Straight_Hair', 'Wavy_Hair', 'Wearing_Earrings', 'Wearing_Hat',
    'Wearing_Lipstick', 'Wearing_Necklace', 'Wearing_Necktie', 'Young']
SMILING = ATTRIBUTE_NAMES.index('Smiling')
LANDMARK_NAMES = ['lefteye', 'righteye', 'nose', 'leftmouth', 'rightmouth']  # image left/right
LANDMARK_COLUMNS = [f'{n}_{c}' for n in LANDMARK_NAMES for c in 'xy']
ANNOTATION_FILES = ('list_attr_celeba', 'list_landmarks_align_celeba', 'list_eval_partition')
IMAGE_DIRS = ('img_align_celeba', 'img_align_celeba_png')
BAD_ROW = 'bad annotation row'
_MISSING = object()


@dataclasses.dataclass
class Annotations:
  layout: str  # 'official' (txt) or 'kaggle' (csv)
  root: str
  image_dir: str
  partition: list  # [(image name, partition id), ...] in file order
  attributes: dict  # image name -> (40,) int8 of -1/1, or None for a bad row
  landmarks: dict  # image name -> (5, 2) float32 pixels, or None for a bad row
  bboxes: dict  # image name -> (4,) float32 x, y, w, h in the in-the-wild image
  bad_partition_rows: list


def _txt_rows(path, header_lines):
  with open(path, encoding='utf-8') as f:
    lines = f.read().splitlines()
  return lines[:header_lines], [ln.split() for ln in lines[header_lines:] if ln.strip()]


def _csv_rows(path):
  with open(path, newline='', encoding='utf-8') as f:
    rows = [r for r in csv.reader(f) if r]
  if not rows:
    raise bu.BadInputError(path, 'empty csv file')
  return [c.strip() for c in rows[0]], [[c.strip() for c in r] for r in rows[1:]]


def _check_header(path, got, want):
  if [g.lower() for g in got] != [w.lower() for w in want]:
    raise bu.BadInputError(
        path, f'unexpected columns {got[:6]}... (want {want[:6]}...)',
        'is this the CelebA aligned-image annotation file?')


def _int_table(rows, width, check=None):
  """name -> int array of `width` values, or None where a row is malformed."""
  out = {}
  for r in rows:
    vals = None
    if len(r) == width + 1:
      try:
        vals = np.array([int(v) for v in r[1:]], np.int64)
      except ValueError:
        vals = None
      if vals is not None and check is not None and not check(vals):
        vals = None
    out[r[0]] = vals
  return out


def read_annotations(root: str) -> Annotations:
  """Finds and parses the CelebA lists under root (official .txt or Kaggle .csv)."""
  found = {}
  for layout, ext in (('official', '.txt'), ('kaggle', '.csv')):
    paths = {n: bu.find_paths(root, n + ext, max_depth=4, want_dir=False) for n in ANNOTATION_FILES}
    if all(paths.values()):
      found[layout] = {n: p[0] for n, p in paths.items()}
      bbox = bu.find_paths(root, 'list_bbox_celeba' + ext, max_depth=4, want_dir=False)
      found[layout]['list_bbox_celeba'] = bbox[0] if bbox else None
      break
  if not found:
    raise bu.BadInputError(
        root, 'no CelebA annotation lists found (need list_attr_celeba, '
        'list_landmarks_align_celeba and list_eval_partition, as .txt or .csv)',
        Builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip())
  layout, files = next(iter(found.items()))
  attr_ok = lambda v: bool(np.isin(v, (-1, 1)).all())
  if layout == 'official':
    head, rows = _txt_rows(files['list_attr_celeba'], 2)
    _check_header(files['list_attr_celeba'], head[1].split() if len(head) > 1 else [],
                  ATTRIBUTE_NAMES)
    attributes = _int_table(rows, len(ATTRIBUTE_NAMES), attr_ok)
    head, rows = _txt_rows(files['list_landmarks_align_celeba'], 2)
    _check_header(files['list_landmarks_align_celeba'],
                  head[1].split() if len(head) > 1 else [], LANDMARK_COLUMNS)
    landmarks = _int_table(rows, 10)
    _, part_rows = _txt_rows(files['list_eval_partition'], 0)
    bboxes = _int_table(_txt_rows(files['list_bbox_celeba'], 2)[1], 4) if files[
        'list_bbox_celeba'] else {}
  else:
    head, rows = _csv_rows(files['list_attr_celeba'])
    _check_header(files['list_attr_celeba'], head, ['image_id'] + ATTRIBUTE_NAMES)
    attributes = _int_table(rows, len(ATTRIBUTE_NAMES), attr_ok)
    head, rows = _csv_rows(files['list_landmarks_align_celeba'])
    _check_header(files['list_landmarks_align_celeba'], head, ['image_id'] + LANDMARK_COLUMNS)
    landmarks = _int_table(rows, 10)
    head, part_rows = _csv_rows(files['list_eval_partition'])
    _check_header(files['list_eval_partition'], head, ['image_id', 'partition'])
    bboxes = _int_table(_csv_rows(files['list_bbox_celeba'])[1], 4) if files[
        'list_bbox_celeba'] else {}
  partition, bad = [], []
  for r in part_rows:
    if len(r) == 2 and r[1] in ('0', '1', '2'):
      partition.append((r[0], int(r[1])))
    else:
      bad.append(' '.join(r))
  if not partition:
    raise bu.BadInputError(files['list_eval_partition'], 'no usable partition row')
  image_dir = _find_image_dir(root, partition[0][0])
  return Annotations(
      layout=layout, root=root, image_dir=image_dir, partition=partition,
      attributes={k: None if v is None else v.astype(np.int8) for k, v in attributes.items()},
      landmarks={k: None if v is None else v.reshape(5, 2).astype(np.float32)
                 for k, v in landmarks.items()},
      bboxes={k: v.astype(np.float32) for k, v in bboxes.items() if v is not None},
      bad_partition_rows=bad)


def _image_path(image_dir: str, name: str) -> str:
  path = os.path.join(image_dir, name)
  if not os.path.exists(path):  # the PNG release names files 000001.png
    png = os.path.splitext(path)[0] + '.png'
    if os.path.exists(png):
      return png
  return path


def _find_image_dir(root: str, first_name: str) -> str:
  cands = [p for n in IMAGE_DIRS for p in bu.find_paths(root, n, max_depth=5, want_dir=True)]
  with_images = [d for d in cands if os.path.exists(_image_path(d, first_name))]
  if with_images:
    return with_images[0]
  # Fall back to the folder holding most images (the first listed one may be the missing one).
  best = max(cands, default=None, key=lambda d: sum(
      f.endswith(('.jpg', '.png')) for f in os.listdir(d)))
  if best is None or not any(f.endswith(('.jpg', '.png')) for f in os.listdir(best)):
    raise bu.BadInputError(
        root, 'no img_align_celeba folder with images found',
        'unzip Img/img_align_celeba.zip (aligned 178x218 images; the in-the-wild img_celeba '
        'is not supported: the landmarks refer to the aligned images)')
  return best


class Builder(tfds.core.GeneratorBasedBuilder):
  """CelebA aligned faces with 40 attributes and 5 landmarks; no VA labels."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  CelebA (non-commercial research use only): request/download from
  https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Google Drive / Baidu links): Img/
  img_align_celeba.zip (unzip it inside Img/), Anno/list_attr_celeba.txt,
  Anno/list_landmarks_align_celeba.txt, Anno/list_bbox_celeba.txt and
  Eval/list_eval_partition.txt. Put the CelebA folder (Img/, Anno/, Eval/) under manual_dir.
  Or use the Kaggle re-release (kaggle datasets download jessicali9530/celeba-dataset) unzipped
  under manual_dir: list_*.csv next to img_align_celeba/img_align_celeba/.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=bu.frame_features(CROP.size, extra={
            'attributes': tfds.features.Tensor(shape=(len(ATTRIBUTE_NAMES),), dtype=np.bool_),
            'smiling': tfds.features.Scalar(dtype=np.bool_),
            'landmarks5': tfds.features.Tensor(shape=(5, 2), dtype=np.float32),
            'bbox_wild': tfds.features.Tensor(shape=(4,), dtype=np.float32),
        }),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(
            crop=CROP.to_dict(), emotion_names=[], attribute_names=ATTRIBUTE_NAMES,
            landmarks5_names=LANDMARK_NAMES,
            split_rule='Eval/list_eval_partition.txt: 0 train, 1 validation, 2 test',
            va_scale='none: no valence/arousal labels (va_mask 0)',
            crop_note='aligned on the 5 landmarks (eyes, nose, mouth centre: '
                      'vaflax.faces.keypoints_from_5)',
            bbox_wild='x, y, w, h in the in-the-wild image (img_celeba) from list_bbox_celeba; '
                      '-1 where absent; not used for the crop'),
        homepage='https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html',
    )

  def _split_generators(self, dl_manager):
    ann = read_annotations(os.fspath(dl_manager.manual_dir))
    return bu.non_empty_splits(
        self, {split: self._generate_examples(ann, split) for split in SPLITS})

  def _generate_examples(self, ann: Annotations, split: str):
    writer = bu.SplitWriter(split)
    if split == 'train':  # rows that belong to no split are reported once, with train
      for row in ann.bad_partition_rows:
        writer.skips.skip('bad partition row', row)
    for name, part in ann.partition:
      if part != SPLITS[split]:
        continue
      attrs, lm = ann.attributes.get(name, _MISSING), ann.landmarks.get(name, _MISSING)
      if attrs is _MISSING or lm is _MISSING:
        writer.skips.skip('no attribute or landmark row', name)
        continue
      if attrs is None or lm is None:
        writer.skips.skip(BAD_ROW, name)
        continue
      path = _image_path(ann.image_dir, name)
      rel = os.path.relpath(path, ann.root)
      if not os.path.exists(path):
        writer.skips.skip('missing image file', rel)
        continue
      try:
        img = bu.read_image(path)
      except bu.BadInputError as e:
        writer.skips.skip('unreadable image file', f'{rel} ({e.problem})')
        continue
      try:
        box = detect.box_from_five_points(lm)
      except ValueError:
        writer.skips.skip(BAD_ROW, f'{name} (degenerate landmarks)')
        continue
      crop, cbox = faces.crop_face(img, box=box, landmarks=lm, spec=CROP)
      ex = bu.default_example(
          image=bu.encode_image(crop), file=rel, attributes=attrs > 0,
          smiling=bool(attrs[SMILING] > 0), landmarks5=cbox.to_crop(lm).astype(np.float32),
          bbox_wild=ann.bboxes.get(name, np.full((4,), -1.0, np.float32)))
      yield from writer.emit(os.path.splitext(name)[0], [ex])
    writer.videos.clear()  # still images: no video table (each record stands alone)
    writer.finish(self)
