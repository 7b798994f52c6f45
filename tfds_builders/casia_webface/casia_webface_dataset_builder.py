"""casia_webface: CASIA-WebFace (Yi et al., 2014), one folder of images per identity.

The images (250x250 in the original release) carry no face box: the face is found with
`vaflax.detect` (the detection nearest the image centre among those at least half as large as the
largest; the subject is centred) and cropped with `vaflax.faces.crop_face`. Where the detector
finds nothing, the centred box of side min(H, W) / 2.2 is used (the LFW-style framing these images
follow, see README) and `face_detected` is False. No valence/arousal labels (va_mask 0, emotion
-1); the identity is a feature. One `train` split. Distributions that ship a binary record file
(MXNet .rec, LMDB, TFRecord, ...) instead of images are refused with a message that says what was
found and what is supported.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from vaflax import detect, faces
from vaflax.data import builder_utils as bu

CROP = faces.CropSpec(size=256)  # box crop, margin 0.2 around the Haar box, as the other builders
MIN_FACE_FRACTION = 0.15  # smallest face searched, as a fraction of the image side
FALLBACK_SIDE = 1 / 2.2  # centred box side / min(H, W) when no face is detected
IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
RECORD_HINTS = {  # file name patterns of the non-image distributions
    '.rec': 'MXNet RecordIO (e.g. insightface faces_webface_112x112/train.rec)',
    '.idx': 'MXNet RecordIO index', '.lst': 'MXNet image list',
    '.tfrecord': 'TFRecord', '.tfrecords': 'TFRecord', '.mdb': 'LMDB', '.lmdb': 'LMDB',
    '.parquet': 'Parquet', '.arrow': 'Arrow', '.h5': 'HDF5', '.hdf5': 'HDF5', '.bin': 'binary',
    '.pkl': 'pickle', '.npy': 'NumPy array', '.npz': 'NumPy archive',
    '.zip': 'zip archive', '.tar': 'tar archive', '.gz': 'gzip archive', '.7z': '7z archive',
    '.rar': 'rar archive'}


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTS) and not name.startswith('.')


def find_identity_root(root: str, max_depth: int = 4) -> tuple[str, list[str]]:
  """The folder whose sub-folders (the identities) hold the most image-bearing folders."""
  root = os.fspath(root)
  base = root.rstrip(os.sep).count(os.sep)
  holders: dict[str, list[str]] = {}
  seen_files = []
  for dirpath, dirnames, filenames in os.walk(root):
    depth = dirpath.rstrip(os.sep).count(os.sep) - base
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
    if depth >= max_depth:
      dirnames[:] = []
    if len(seen_files) < 20:
      seen_files += [os.path.relpath(os.path.join(dirpath, f), root) for f in sorted(filenames)]
    if depth >= 1 and any(_is_image(f) for f in filenames):
      holders.setdefault(os.path.dirname(dirpath), []).append(os.path.basename(dirpath))
  if holders:
    parent = max(sorted(holders), key=lambda p: len(holders[p]))
    return parent, sorted(holders[parent])
  found = ', '.join(seen_files[:20]) or 'nothing'
  kinds = sorted({h for f in seen_files for ext, h in RECORD_HINTS.items()
                  if f.lower().endswith(ext)})
  raise bu.BadInputError(
      root, f'no identity folders with images found; found: {found}'
      + (f' ({"; ".join(kinds)})' if kinds else ''),
      'casia_webface supports the folder layout only: <root>/<identity>/<image>.jpg, e.g. '
      'CASIA-WebFace/0000045/001.jpg. Record-file distributions (MXNet .rec/.idx, LMDB, '
      'TFRecord, ...) are not read: unpack them into that layout first (for .rec, insightface '
      'ships a rec2image script), and unpack .zip/.tar archives')


def choose_face(dets, height: int, width: int):
  """The detection nearest the image centre among those at least half the largest's side."""
  big = [d for d in dets if d[2] >= 0.5 * dets[0][2]]
  cx, cy = width / 2, height / 2
  return min(big, key=lambda d: (d[0] + d[2] / 2 - cx) ** 2 + (d[1] + d[3] / 2 - cy) ** 2)


def fallback_box(height: int, width: int) -> tuple[float, float, float, float]:
  side = FALLBACK_SIDE * min(height, width)
  return (width - side) / 2, (height - side) / 2, side, side


class Builder(tfds.core.GeneratorBasedBuilder):
  """CASIA-WebFace face crops with identities; no VA labels."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  CASIA-WebFace (research use; request it from the Institute of Automation, Chinese Academy of
  Sciences, CBSR: http://www.cbsr.ia.ac.cn/english/CASIA-WebFace-Database.html, or a mirror you
  are licensed to use). Unpack it so that manual_dir holds one folder per identity with its
  images, e.g. manual_dir/CASIA-WebFace/0000045/001.jpg (the identity root is found up to 4
  levels down). Record-file repackagings (insightface faces_webface_112x112 train.rec/.idx,
  LMDB, TFRecord) must be converted to that folder layout first.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=bu.frame_features(CROP.size, extra={
            'identity': tfds.features.Text(),
            'identity_index': tfds.features.Scalar(dtype=np.int32),
            'face_box': tfds.features.Tensor(shape=(4,), dtype=np.float32),
            'face_detected': tfds.features.Scalar(dtype=np.bool_),
        }),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(
            crop=CROP.to_dict(), emotion_names=[],
            va_scale='none: no valence/arousal labels (va_mask 0)',
            face_detector=f'vaflax.detect (OpenCV Haar {detect.CASCADE}), most central of the '
                          f'large detections, min face {MIN_FACE_FRACTION} of the image side, '
                          f'crop_face margin {CROP.margin}',
            fallback=f'centred box of side min(H, W) * {FALLBACK_SIDE:.4f} when no face is found'),
        homepage='http://www.cbsr.ia.ac.cn/english/CASIA-WebFace-Database.html',
    )

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    parent, identities = find_identity_root(root)
    return bu.non_empty_splits(self, {'train': self._generate_examples(root, parent, identities)})

  def _generate_examples(self, root, parent, identities):
    writer = bu.SplitWriter('train')
    fallbacks = 0
    for index, ident in enumerate(identities):
      folder = os.path.join(parent, ident)
      for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        rel = os.path.relpath(path, root)
        if os.path.isdir(path) or name.startswith('.'):
          continue
        if not _is_image(name):
          writer.skips.skip('not an image file', rel)
          continue
        try:
          img = bu.read_image(path)
        except bu.BadInputError as e:
          writer.skips.skip('unreadable image file', f'{rel} ({e.problem})')
          continue
        h, w = img.shape[:2]
        dets = detect.detect_faces(img, min_size=max(20, round(MIN_FACE_FRACTION * min(h, w))))
        if dets:
          box = choose_face(dets, h, w)[:4]
        else:
          box = fallback_box(h, w)
          fallbacks += 1
        crop, _ = faces.crop_face(img, box=box, spec=CROP)
        ex = bu.default_example(
            image=bu.encode_image(crop), file=rel, identity=ident, identity_index=index,
            face_box=np.asarray(box, np.float32), face_detected=bool(dets))
        yield from writer.emit(ident, [ex])
    self.info.metadata['num_identities'] = len(identities)
    self.info.metadata['fallback_crops'] = fallbacks
    writer.videos.clear()  # still images: no video table (video_id is the identity)
    writer.finish(self)
