"""sewa: SEWA (Kossaifi et al., TPAMI 2019) video-chat recordings, AVEC 2017/2019 CES release.

Labels are the AVEC gold standard (fused annotators) of arousal, valence and liking every 0.1 s
(`labels/<Partition>[_<Culture>]_<nn>.csv`, `name;timestamp;arousal;valence;liking`). One record
per 0.1 s step from the first to the last label (a step whose row is missing or bad is kept,
masked): frame k is the video frame nearest to k * 0.1 s, its face found with OpenCV's Haar
cascade (vaflax.detect), its audio the 0.1 s from k * 0.1 s. Layout and bad input: README.md.
"""

from __future__ import annotations

import math
import os
import re

import av
import numpy as np
import tensorflow_datasets as tfds

from vaflax import detect, faces
from vaflax.data import builder_utils as bu
from vaflax.data import video_io

CROP = faces.CropSpec(size=256)  # the default box crop around the Haar box, as in other builders
FPS = 10  # the AVEC CES label rate (0.1 s hop, AVEC2019 CES_data.py)
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
MAX_HOLD = 20  # frames (2 s) a missed detection may reuse the last face box: webcam, one sitter
PARTITIONS = {'train': 'Train', 'validation': 'Devel', 'test': 'Test'}
_LABEL_FILE = re.compile(r'^(Train|Devel|Test)(?:_([A-Za-z]{2}))?_(\d+)\.csv$')
COLUMNS = ('name', 'timestamp', 'arousal', 'valence', 'liking')  # AVEC order without a header
VIDEO_EXTS = ('.avi', '.mp4', '.mkv', '.mov', '.webm')
MAX_DEPTH = 5
NO_FACE = 'no face detected (none before or held > 2 s): zero image, masks 0, frame kept'
HELD = 'no face detected: previous face box reused'


class Builder(tfds.core.GeneratorBasedBuilder):
  """SEWA (AVEC CES): 10 Hz valence/arousal/liking gold standard on video-chat face crops."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  SEWA: request the database at https://db.sewaproject.eu/ (academic EULA); the valence/arousal
  gold standard is distributed with the AVEC 2017 / AVEC 2019 CES challenge data. Put under
  manual_dir (any depth) the label files labels/<Partition>[_<Culture>]_<nn>.csv (e.g.
  Train_DE_01.csv, Devel_HU_14.csv) and the recordings with the same names,
  <name>.avi|.mp4 (video) and optionally <name>.wav (audio; else the video's own audio track).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=bu.frame_features(
            CROP.size, audio_samples_per_frame=SAMPLES_PER_FRAME,
            extra={'liking': tfds.features.Scalar(dtype=np.float32),
                   'face_mask': tfds.features.Scalar(dtype=np.float32),
                   'audio_mask': tfds.features.Scalar(dtype=np.float32)}),
        disable_shuffling=True,  # frames of a recording stay consecutive
        metadata=tfds.core.MetadataDict(
            fps=FPS, sample_rate=SAMPLE_RATE, crop=CROP.to_dict(), emotion_names=[],
            va_scale='AVEC gold standard, valence/arousal in [-1, 1] kept as is',
            split_rule='label file name: Train_* -> train, Devel_* -> validation, '
                       'Test_* -> test',
            face_detector=f'vaflax.detect (OpenCV Haar), box held <= {MAX_HOLD}'
                          ' frames'),
        homepage='https://db.sewaproject.eu/',
    )

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    labels, media = _index(root)
    by_split = {s: sorted((n, p) for n, p in labels.items() if n.startswith(prefix + '_'))
                for s, prefix in PARTITIONS.items()}
    if not any(by_split.values()):
      raise bu.BadInputError(root, 'no Train_*.csv label file (nor Devel_, Test_) found under '
                             'manual_dir', self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip())
    # A partial download builds the partitions it has; the others are named as empty.
    return bu.non_empty_splits(self, {s: self._generate_examples(s, files, media, root)
                                      for s, files in by_split.items()})

  def _generate_examples(self, split, files, media, root):
    writer = bu.SplitWriter(split)
    for name, path in files:
      rows = _read_labels(path, writer.skips)
      if not rows:
        writer.skips.skip('label file without usable rows', os.path.relpath(path, root))
        continue
      video = media.get((name, 'video'))
      if video is None:
        writer.skips.skip('no video file for the recording: skipped', name)
        continue
      yield from writer.emit(name, _recording_examples(
          name, rows, video, media.get((name, 'audio')), root, writer.skips))
    writer.finish(self)


def _index(root):
  """({recording: label csv}, {(recording, 'video' | 'audio'): path}) under root, bounded."""
  labels, media = {}, {}
  base = root.rstrip(os.sep).count(os.sep)
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    if dirpath.rstrip(os.sep).count(os.sep) - base >= MAX_DEPTH:
      dirnames[:] = []
    for f in sorted(filenames):
      stem, ext = os.path.splitext(f)
      path = os.path.join(dirpath, f)
      if _LABEL_FILE.match(f):
        labels.setdefault(stem, path)
      elif ext.lower() in VIDEO_EXTS:
        media.setdefault((stem, 'video'), path)
      elif ext.lower() == '.wav':
        media.setdefault((stem, 'audio'), path)
  return labels, media


def _read_labels(path, skips):
  """{k: (arousal, valence, liking) raw, NaN where invalid} for label rows at t = k * 0.1 s."""
  name = os.path.basename(path)
  with open(path, encoding='utf-8-sig', errors='replace') as f:
    lines = [ln.strip() for ln in f.read().splitlines() if ln.strip()]
  if not lines:
    return {}
  sep = ';' if ';' in lines[0] else ','
  first = [c.strip().strip('\'"').lower() for c in lines[0].split(sep)]
  columns = list(COLUMNS)
  if 'timestamp' in first:
    missing = [c for c in ('timestamp', 'arousal', 'valence') if c not in first]
    if missing:
      raise bu.BadInputError(path, f'header {first} lacks {missing}',
                             'expected name;timestamp;arousal;valence;liking')
    columns = first
    lines = lines[1:]
  idx = {c: columns.index(c) for c in ('timestamp', 'arousal', 'valence', 'liking')
         if c in columns}
  out = {}
  for i, line in enumerate(lines, start=1):
    fields = line.split(sep)
    item = f'{name}:{i}'
    if len(fields) != len(columns):
      skips.skip(f'row has {len(fields)} fields, expected {len(columns)}', item)
      continue
    try:
      t = float(fields[idx['timestamp']])
    except ValueError:
      t = math.nan
    k = round(t * FPS) if math.isfinite(t) and t >= 0 else None
    if k is None or abs(t * FPS - k) > 0.25:
      skips.skip('timestamp not a time on the 0.1 s label grid', item)
      continue
    if k in out:
      skips.skip('second row for the same timestamp', item)
      continue
    vals = []
    for c in ('arousal', 'valence', 'liking'):
      try:
        v = float(fields[idx[c]]) if c in idx else math.nan
      except ValueError:
        v = math.nan
      if not (math.isfinite(v) and -1.0 <= v <= 1.0):
        if c in idx:
          skips.skip(f'{c} not a number in [-1, 1]: masked, frame kept', item)
        v = math.nan
      vals.append(v)
    out[k] = tuple(vals)
  return out


def _recording_examples(name, rows, video, audio_path, root, skips):
  rel = os.path.relpath(video, root)
  audio = None
  try:
    audio = video_io.read_audio(audio_path or video, sample_rate=SAMPLE_RATE)
  except (av.error.FFmpegError, OSError, ValueError) as e:
    skips.skip(f'audio unreadable ({type(e).__name__}): zero audio, audio_mask 0', name)
  if audio is None:
    skips.skip('no audio: zero audio, audio_mask 0', name, log=False)
  blank = bu.encode_image(np.zeros((CROP.size, CROP.size, 3), np.uint8))
  first_k, last_k = min(rows), max(rows)
  seen, box, held, n = set(), None, MAX_HOLD + 1, 0
  try:
    for k, t, rgb in video_io.iter_frames(video, fps=FPS, start=0.0):
      n += 1
      if k > last_k:
        break
      if k < first_k:  # before the first label: not part of the annotated recording
        continue
      seen.add(k)
      found = detect.largest_face(rgb)
      if found is not None:
        box, held = found, 0
      else:
        held += 1
        if held <= MAX_HOLD:
          skips.skip(HELD, f'{name}#{k}', log=False)
      face = box is not None and held <= MAX_HOLD
      image = blank
      if face:
        crop, _ = faces.crop_face(rgb, box=box, spec=CROP)
        image = bu.encode_image(crop)
      else:
        skips.skip(NO_FACE, f'{name}#{k}', log=False)
      if k not in rows:  # a skipped row inside the recording: keep the frame, no label
        skips.skip('no label row for the frame time: masked, frame kept', f'{name}#{k}', log=False)
      a, v, liking = rows.get(k, (math.nan,) * 3)
      valid = np.isfinite([v, a]).astype(np.float32) * float(face)
      chunk, audio_mask = np.zeros((SAMPLES_PER_FRAME,), np.float32), 0.0
      if audio is not None:
        chunk, covered = audio.chunk(t, SAMPLES_PER_FRAME)
        audio_mask = float(covered >= 0.5)
      yield bu.default_example(
          image=image, face_mask=float(face),
          valence=float(v) if valid[0] else 0.0, arousal=float(a) if valid[1] else 0.0,
          va_mask=valid, valence_raw=v, arousal_raw=a, liking=liking,
          frame=k, file=rel, audio=chunk, audio_mask=audio_mask)
  except (av.error.FFmpegError, OSError, ValueError) as e:
    reason = 'unreadable video' if n == 0 else 'video breaks while decoding (earlier frames kept)'
    skips.skip(f'{reason} ({type(e).__name__})', rel)
    return
  for k in sorted(set(rows) - seen):  # after the end (or before the first frame) of the video
    skips.skip('label time outside the decoded video', f'{name}#{k}', log=False)
