"""affwild2_va: Aff-Wild2, valence-arousal track of the ABAW challenges (Kollias et al.).

Every line of a video's annotation file is one frame (line k <-> frame k <->
cropped_aligned/<video>/<k:05d>.jpg, 1-based). All lines are emitted, in order, so that record
i + 1 is always the next video frame: frames without a face crop get a zero image, `face_mask` 0
and `va_mask` 0; -5 ("not annotated") masks the value. The official crops are used as they are.
When the raw videos are present, each frame also gets its audio. Layout and bad input: README.md.
"""

from __future__ import annotations

import math
import os
import re

import av
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from vaflax import faces
from vaflax.data import builder_utils as bu
from vaflax.data import video_io

# The ABAW cropped_aligned faces (112 x 112, aligned by the challenge's own pipeline) are stored as
# they are. The spec recorded for runs is vaflax's nearest framing of them: an aligned crop with the
# default margin (eyes ~0.31 of the crop apart, as in 112 px ArcFace-style aligned crops).
CROP = faces.CropSpec(aligned=True, size=112)
AS_STORED = faces.CropSpec(margin=0.0, size=CROP.size)  # a file of another size: squared, resized
SAMPLE_RATE = 16000
# Audio per frame: 640 samples (40 ms) centred on the middle of the frame's interval
# [k / fps, (k + 1) / fps). At 25 fps that is exactly the interval, as in the other builders;
# Aff-Wild2 videos run at 24-60 fps, so chunks overlap a little (> 25 fps) or leave gaps (< 25).
SAMPLES_PER_FRAME = SAMPLE_RATE // 25
INVALID = -5.0  # ABAW marker: frame not annotated
ANNOTATION_DIRS = ('VA_Estimation_Challenge', 'VA_Set')  # ABAW 2022+ / ABAW 2020-2021
SPLIT_DIRS = {  # annotation sub-folder names per edition, matched case-insensitively
    'train': re.compile(r'^train(ing)?_set$', re.IGNORECASE),
    'validation': re.compile(r'^validation_set$', re.IGNORECASE),
    'test': re.compile(r'^test_set$', re.IGNORECASE),
}
CROP_DIR = re.compile(r'^cropped_aligned', re.IGNORECASE)  # also cropped_aligned_new_50_vids
VIDEO_EXTS = ('.mp4', '.avi', '.mkv', '.mov', '.webm')
MAX_DEPTH = 5
_EDITION = re.compile(r'(\d+)\s*(?:st|nd|rd|th)[\s_-]*ABAW', re.IGNORECASE)
_NAME_FPS = re.compile(r'^[^-]+-(\d+)-\d+x\d+')  # <id>-<fps>-<W>x<H>[-<part>]
NO_FACE = 'no cropped_aligned image for the frame (no face): zero image, masks 0, frame kept'
MASKED = 'valence/arousal -5 (not annotated): masked, frame kept'


class Builder(tfds.core.GeneratorBasedBuilder):
  """Aff-Wild2 (ABAW VA track): per-frame valence/arousal on the official face crops, audio."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Aff-Wild2: request it through the ABAW challenge (https://ibug.doc.ic.ac.uk/resources/aff-wild2/;
  sign the EULA, the organisers send the links). Put under manual_dir: the VA annotations of any
  edition ('<N>th ABAW Annotations/VA_Estimation_Challenge/{Train_Set,Validation_Set}/*.txt', or
  'annotations/VA_Set/{Train_Set|Training_Set,Validation_Set}/*.txt'), the cropped_aligned/ faces
  (plus cropped_aligned_new_50_vids/ if you have it) and, for audio, the raw videos
  (batch1/, batch2/, batch3/). Any unpacking root works.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=bu.frame_features(
            CROP.size, audio_samples_per_frame=SAMPLES_PER_FRAME,
            extra={'face_mask': tfds.features.Scalar(dtype=np.float32),
                   'audio_mask': tfds.features.Scalar(dtype=np.float32)}),
        disable_shuffling=True,  # frames of a video stay consecutive: windows are index ranges
        metadata=tfds.core.MetadataDict(
            crop=CROP.to_dict(), emotion_names=[], sample_rate=SAMPLE_RATE, fps=None,
            video_fps={}, annotation_dir=None,
            split_rule='annotation folder: Train_Set -> train, Validation_Set -> validation, '
                       'Test_Set -> test',
            crop_note="the release's cropped_aligned faces as stored; crop: vaflax's nearest spec",
            va_scale='valence, arousal in [-1, 1] (kept); -5 = not annotated -> va_mask 0',
            audio=f'{SAMPLES_PER_FRAME} samples at {SAMPLE_RATE} Hz centred on each frame '
                  'interval; zeros and audio_mask 0 without the raw video'),
        homepage='https://ibug.doc.ic.ac.uk/resources/aff-wild2/',
    )

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    ann_dir = _annotation_dir(root)
    if ann_dir is None:
      raise bu.BadInputError(
          root, 'no VA annotation folder (VA_Estimation_Challenge/ or VA_Set/) found',
          self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip())
    self.info.metadata['annotation_dir'] = os.path.relpath(ann_dir, root)
    splits = {}
    for d in sorted(os.listdir(ann_dir)):
      for split, pattern in SPLIT_DIRS.items():
        if pattern.match(d) and os.path.isdir(os.path.join(ann_dir, d)) and split not in splits:
          files = sorted(f for f in os.listdir(os.path.join(ann_dir, d)) if f.endswith('.txt'))
          if files:
            splits[split] = [os.path.join(ann_dir, d, f) for f in files]
    if not splits:
      raise bu.BadInputError(
          ann_dir, 'no Train_Set/, Validation_Set/ or Test_Set/ folder with .txt files in it',
          self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip())
    for split in ('train', 'validation'):  # a partial download: built without, named as empty
      splits.setdefault(split, [])
    crops = _crop_folders(root)
    if not crops:
      raise bu.BadInputError(root, 'no cropped_aligned/<video>/ folder found',
                             'unpack the cropped_aligned archive under manual_dir')
    videos = _video_files(root)
    if not videos:
      logging.warning('Aff-Wild2: no raw videos under %s: audio will be zeros (audio_mask 0)',
                      root)
    return bu.non_empty_splits(self, {s: self._generate_examples(s, files, crops, videos, root)
            for s, files in splits.items()})

  def _generate_examples(self, split, files, crops, videos, root):
    writer = bu.SplitWriter(split)
    blank = bu.encode_image(np.zeros((CROP.size, CROP.size, 3), np.uint8))
    fps_table = {}
    for path in files:
      name = os.path.splitext(os.path.basename(path))[0]
      rel_ann = os.path.relpath(path, root)
      labels = _read_annotation(path, writer.skips)
      if not labels:
        writer.skips.skip('annotation file without frame lines', rel_ann)
        continue
      crop_dir = crops.get(name)
      if crop_dir is None:
        writer.skips.skip('no cropped_aligned/<video>/ folder: video skipped', name)
        continue
      source = videos.get(_strip_person(name))
      audio, fps, t_first = None, None, 0.0
      if source is not None:
        audio, fps, t_first = _read_video_audio(source, writer.skips, os.path.relpath(source, root))
      if fps is None:
        fps = _fps_from_name(name)
      if fps:
        fps_table[name] = fps
      if source is None:
        writer.skips.skip('no raw video found: zero audio, audio_mask 0', name, log=False)
      yield from writer.emit(name, _video_examples(
          name, labels, crop_dir, audio, fps, t_first, blank, root, writer.skips))
    # Merged at the end: the splits' generators run interleaved (bu.non_empty_splits).
    self.info.metadata['video_fps'] = {**self.info.metadata['video_fps'], **fps_table}
    writer.finish(self)


def _annotation_dir(root):
  """The VA annotation folder of the newest ABAW edition found under root, or None."""
  found = []
  for name in ANNOTATION_DIRS:
    found += bu.find_paths(root, name, max_depth=MAX_DEPTH, want_dir=True)
  if not found:
    return None

  def edition(p):
    m = _EDITION.search(os.path.relpath(p, root))
    return int(m.group(1)) if m else 0  # VA_Set (ABAW 2020/2021) has no number

  best = max(sorted(found), key=edition)  # first of the newest edition in sorted order
  if len(found) > 1:
    logging.warning('Aff-Wild2: several annotation folders %s; using %s', found, best)
  return best


def _crop_folders(root):
  """{video name: folder} of the frames under every cropped_aligned* folder (first one wins)."""
  out = {}
  for top in sorted(p for p in _walk_dirs(root, MAX_DEPTH) if CROP_DIR.match(os.path.basename(p))):
    for dirpath, dirnames, filenames in os.walk(top):
      dirnames.sort()
      if dirpath.count(os.sep) - top.count(os.sep) >= 2:  # <video>/ or <extra level>/<video>/
        dirnames[:] = []
      if dirpath != top and any(f.lower().endswith('.jpg') for f in filenames):
        out.setdefault(os.path.basename(dirpath), dirpath)
  return out


def _walk_dirs(root, max_depth):
  base = root.rstrip(os.sep).count(os.sep)
  for dirpath, dirnames, _ in os.walk(root):
    dirnames.sort()
    keep = []
    for d in dirnames:
      p = os.path.join(dirpath, d)
      yield p
      if not CROP_DIR.match(d):  # do not descend into the (large) crop folders here
        keep.append(d)
    dirnames[:] = keep if dirpath.rstrip(os.sep).count(os.sep) - base < max_depth else []


def _video_files(root):
  """{stem: path} of the raw videos under root (bounded depth, crop folders not searched)."""
  out = {}
  base = root.rstrip(os.sep).count(os.sep)
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if not CROP_DIR.match(d))
    if dirpath.rstrip(os.sep).count(os.sep) - base >= MAX_DEPTH:
      dirnames[:] = []
    for f in sorted(filenames):
      stem, ext = os.path.splitext(f)
      if ext.lower() in VIDEO_EXTS:
        out.setdefault(stem, os.path.join(dirpath, f))
  return out


def _strip_person(name: str) -> str:
  """Two annotated people share one video: '<video>_left' / '<video>_right' -> '<video>'."""
  return re.sub(r'_(left|right)$', '', name)


def _fps_from_name(name: str):
  m = _NAME_FPS.match(name)
  return float(m.group(1)) if m else None


def _read_annotation(path, skips):
  """[(valence, arousal) or None for a bad line] per frame line, in order; [] if unusable."""
  name = os.path.basename(path)
  with open(path, encoding='utf-8-sig', errors='replace') as f:
    lines = [ln.strip() for ln in f.read().splitlines()]
  while lines and not lines[-1]:
    lines.pop()
  if not lines:
    return []
  order = (0, 1)
  head = [h.strip().lower() for h in lines[0].split(',')]
  if sorted(head) == ['arousal', 'valence']:
    order = (head.index('valence'), head.index('arousal'))
    lines = lines[1:]
  elif _two_numbers(lines[0]) is not None:
    skips.skip('annotation file has no header line: first line read as frame 1', name)
  else:
    raise bu.BadInputError(path, f'first line {lines[0]!r} is not the header "valence,arousal"',
                           'is this a VA annotation file?')
  out = []
  for k, line in enumerate(lines, start=1):
    vals = _two_numbers(line)
    if vals is None:
      skips.skip('annotation line is not two numbers: masked, frame kept', f'{name}:{k}')
      out.append(None)
      continue
    v, a = vals[order[0]], vals[order[1]]
    bad = [d for d, x in (('valence', v), ('arousal', a)) if not (-1 <= x <= 1 or x == INVALID)]
    if bad:
      skips.skip(f'{"/".join(bad)} not in [-1, 1] nor -5: masked, frame kept', f'{name}:{k}')
      v, a = (math.nan if 'valence' in bad else v), (math.nan if 'arousal' in bad else a)
    out.append((v, a))
  return out


def _two_numbers(line):
  parts = line.split(',')
  if len(parts) != 2:
    return None
  try:
    vals = (float(parts[0]), float(parts[1]))
  except ValueError:
    return None
  return vals  # NaN / inf stay: the range check masks them


def _read_video_audio(path, skips, item):
  """(Audio or None, fps or None, time of the first video frame) of a raw video."""
  fps, t_first = None, 0.0
  try:
    try:
      with video_io.Video(path) as video:
        fps, t_first = video.fps, video.first_frame_time
    except ValueError as e:  # an audio-only file: no frame times, the audio is still read
      if str(e) != video_io.NO_VIDEO_STREAM:
        raise
    audio = video_io.read_audio(path, sample_rate=SAMPLE_RATE)
  except (av.error.FFmpegError, OSError, ValueError) as e:
    skips.skip(f'raw video unreadable ({type(e).__name__}): zero audio, audio_mask 0', item)
    return None, fps, t_first
  if audio is None:
    skips.skip('raw video has no audio stream: zero audio, audio_mask 0', item)
  return audio, fps, t_first


def _crop_bytes(path):
  """JPEG bytes of a crop: the file itself when it is a CROP.size RGB JPEG, else re-encoded."""
  img = bu.read_image(path)  # decodes fully: truncated files raise BadInputError
  if img.shape[:2] == (CROP.size, CROP.size):
    with Image.open(path) as im:
      if im.format == 'JPEG' and im.mode == 'RGB':
        with open(path, 'rb') as f:
          return f.read()
    return bu.encode_image(img)
  h, w = img.shape[:2]
  crop, _ = faces.crop_face(img, box=(0, 0, w, h), spec=AS_STORED)
  return bu.encode_image(crop)


def _video_examples(name, labels, crop_dir, audio, fps, t_first, blank, root, skips):
  jpgs = {}
  for f in os.listdir(crop_dir):
    stem, ext = os.path.splitext(f)
    if ext.lower() == '.jpg' and stem.isdigit():
      jpgs[int(stem)] = f
  for k in sorted(j for j in jpgs if not 1 <= j <= len(labels)):
    skips.skip('crop image without annotation line', f'{name}/{jpgs[k]}', log=False)
  rel_dir = os.path.relpath(crop_dir, root)
  for k, va in enumerate(labels, start=1):
    file = os.path.join(rel_dir, jpgs.get(k, f'{k:05d}.jpg'))
    image, face = blank, 0.0
    if k in jpgs:
      try:
        image, face = _crop_bytes(os.path.join(crop_dir, jpgs[k])), 1.0
      except bu.BadInputError as e:
        skips.skip(f'{e.problem}: zero image, masks 0, frame kept', file)
    else:
      skips.skip(NO_FACE, f'{name}/{k:05d}', log=False)
    v, a = va if va is not None else (math.nan, math.nan)
    valid = [math.isfinite(x) and x != INVALID for x in (v, a)]
    if va is not None and INVALID in (v, a):
      skips.skip(MASKED, f'{name}:{k}', log=False)
    raw = [x if ok else math.nan for x, ok in zip((v, a), valid, strict=True)]
    mask = np.asarray(valid, np.float32) * face  # no face: no training target
    chunk, audio_mask = np.zeros((SAMPLES_PER_FRAME,), np.float32), 0.0
    if audio is not None and fps:
      centre = t_first + (k - 0.5) / fps  # middle of frame k-1's interval (0-based frame)
      chunk, covered = audio.chunk(centre - 0.5 * SAMPLES_PER_FRAME / SAMPLE_RATE,
                                   SAMPLES_PER_FRAME)
      audio_mask = float(covered >= 0.5)
    yield bu.default_example(
        image=image, face_mask=face,
        valence=float(raw[0]) if mask[0] else 0.0, arousal=float(raw[1]) if mask[1] else 0.0,
        va_mask=mask, valence_raw=float(raw[0]), arousal_raw=float(raw[1]),
        frame=k - 1, file=file, audio=chunk, audio_mask=audio_mask)
