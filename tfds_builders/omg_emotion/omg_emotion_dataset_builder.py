"""omg_emotion: OMG-Emotion (Barros et al., IJCNN 2018) utterance videos, frame-level examples.

Each utterance has one gold-standard valence in [-1, 1], arousal in [0, 1] and a max-vote emotion;
every frame of the utterance carries them. Frames are resampled to FPS, faces found with OpenCV's
Haar cascade (the dataset ships no boxes) and cropped with vaflax.faces.crop_face; the audio of
each frame comes from the utterance's own audio track. Layout: see README.md.
"""

from __future__ import annotations

import csv
import math
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from vaflax import detect, faces
from vaflax.data import builder_utils as bu
from vaflax.data import video_io

CROP = faces.CropSpec(size=256)  # box crop, margin 0.2 around the Haar box (brows to mouth)
FPS = 25  # frames are resampled to this rate; YouTube sources mix 24/25/30 fps
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS

# EmotionMaxVote codes 0-6 (README of github.com/knowledgetechnologyuhh/OMGEmotionChallenge).
EMOTION_NAMES = ['anger', 'disgust', 'fear', 'happy', 'neutral', 'sad', 'surprise']
SPLIT_CSVS = {
    'train': ['omg_TrainVideos.csv'],
    'validation': ['omg_ValidationVideos.csv'],
    # Labels were released after the challenge; without them the test split has masks of 0.
    'test': ['omg_TestVideos_WithLabels.csv', 'omg_TestVideos_WithoutLabels.csv'],
}
REQUIRED = ('start', 'end', 'video', 'utterance')
LABELS = ('arousal', 'valence', 'EmotionMaxVote')
FULL_VIDEO_DIR = 'youtube_videos_temp'  # where prepare_data.py keeps the uncut YouTube videos


class Builder(tfds.core.GeneratorBasedBuilder):
  """OMG-Emotion: per-utterance valence/arousal/emotion on every face frame, with audio."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  OMG-Emotion (CC BY-NC-SA 3.0 DE): clone or download
  https://github.com/knowledgetechnologyuhh/OMGEmotionChallenge (omg_TrainVideos.csv,
  omg_ValidationVideos.csv, omg_TestVideos_WithLabels.csv, ...) and run its prepare_data.py, which
  downloads the YouTube videos and cuts them into <target>/<video>/utterance_<n>.mp4. Put the
  csv files and the <target> folder anywhere under manual_dir (e.g. manual_dir/OMGEmotionChallenge/
  and manual_dir/omg_videos/). Utterances that were not cut are taken from
  <target>/youtube_videos_temp/<video>.mp4 with the csv's start/end times when that file exists.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=bu.frame_features(
            CROP.size, audio_samples_per_frame=SAMPLES_PER_FRAME,
            extra={'audio_mask': tfds.features.Scalar(dtype=np.float32)}),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(
            fps=FPS, sample_rate=SAMPLE_RATE, crop=CROP.to_dict(), emotion_names=EMOTION_NAMES,
            va_scale='valence_raw in [-1, 1] (kept); arousal_raw in [0, 1] -> arousal = 2a - 1',
            face_detector=f'vaflax.detect (OpenCV Haar {detect.CASCADE}), largest face',
            test_labels=True,
            split_rule='the official split: omg_TrainVideos.csv -> train, '
                       'omg_ValidationVideos.csv -> validation, omg_TestVideos_*.csv -> test'),
        homepage='https://github.com/knowledgetechnologyuhh/OMGEmotionChallenge',
    )

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    csvs = {}
    for split, names in SPLIT_CSVS.items():
      found = [p for n in names for p in bu.find_paths(root, n, max_depth=4, want_dir=False)]
      csvs[split] = found[0] if found else None
    if not any(csvs.values()):
      raise bu.BadInputError(
          os.path.join(root, SPLIT_CSVS['train'][0]), 'no annotation csv found under manual_dir',
          self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip())
    if csvs['test'] and os.path.basename(csvs['test']) != SPLIT_CSVS['test'][0]:
      logging.warning('%s not found: the test split has no labels (va_mask 0, emotion -1)',
                      SPLIT_CSVS['test'][0])
      self.info.metadata['test_labels'] = False
    videos = _index_videos(root)
    return bu.non_empty_splits(
        self, {s: self._generate_examples(s, p, videos, root) for s, p in csvs.items()})

  def _generate_examples(self, split, csv_path, videos, root):
    writer = bu.SplitWriter(split)
    if csv_path is None:  # a partial download: this split's csv is not there
      writer.skips.skip(f'{" or ".join(SPLIT_CSVS[split])} not found: split empty', root)
      writer.finish(self)
      return
    for row_no, row in _read_rows(csv_path, writer.skips):
      item = f'{os.path.basename(csv_path)}:{row_no}'
      labels = _labels(row, item, writer.skips)
      if labels is None:
        continue
      vid, utt = row['video'], row['utterance']
      span = {}
      path = videos.get((vid, utt))
      if path is None:
        path = videos.get((FULL_VIDEO_DIR, f'{vid}.mp4'))
        span = dict(start=float(row['start']), end=float(row['end']))
        if path is None or not (math.isfinite(span['start']) and span['end'] > span['start']):
          writer.skips.skip('utterance video missing (neither cut nor full video found)',
                            f'{vid}/{utt}')
          continue
      rel = os.path.relpath(path, root)
      frames = video_io.face_frames(
          path, fps=FPS, sample_rate=SAMPLE_RATE, spec=CROP, box_fn=detect.largest_face,
          skips=writer.skips, item=rel, **span)
      vid_id = f'{vid}/{os.path.splitext(utt)[0]}'
      yield from writer.emit(vid_id, (bu.default_example(file=rel, **f, **labels) for f in frames))
    writer.finish(self)


def _index_videos(root) -> dict:
  """(parent folder, file name) -> path of every .mp4 under root (bounded depth)."""
  out = {}
  base = root.rstrip(os.sep).count(os.sep)
  for dirpath, dirnames, filenames in os.walk(root):
    if dirpath.rstrip(os.sep).count(os.sep) - base >= 5:
      dirnames[:] = []
    dirnames.sort()
    for f in sorted(filenames):
      if f.lower().endswith('.mp4'):
        out.setdefault((os.path.basename(dirpath), f), os.path.join(dirpath, f))
  return out


def _read_rows(path, skips):
  """(line number, row dict with stripped keys and values) of an OMG video csv."""
  with open(path, newline='', encoding='utf-8') as f:
    reader = csv.reader(f)
    header = [h.strip() for h in next(reader, [])]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
      raise bu.BadInputError(path, f'header {header} lacks columns {missing}',
                             'expected link,start,end,video,utterance[,arousal,valence,...]')
    for line_no, fields in enumerate(reader, start=2):
      if not fields or all(not x.strip() for x in fields):
        continue
      if len(fields) != len(header):
        skips.skip(f'row has {len(fields)} fields, header has {len(header)}',
                   f'{os.path.basename(path)}:{line_no}')
        continue
      yield line_no, {h: x.strip() for h, x in zip(header, fields, strict=True)}


def _float(s):
  try:
    return float(s)
  except (TypeError, ValueError):
    return math.nan


def _labels(row, item, skips) -> dict | None:
  """Normalised labels of an utterance; None (counted) when the row has no usable label."""
  if not any(c in row for c in LABELS):  # test csv without labels: frames kept, nothing valid
    return {}
  a, v = _float(row.get('arousal')), _float(row.get('valence'))
  v_ok = math.isfinite(v) and -1.0 <= v <= 1.0
  a_ok = math.isfinite(a) and 0.0 <= a <= 1.0
  emo = _float(row.get('EmotionMaxVote'))
  emo = int(emo) if math.isfinite(emo) and emo == int(emo) and 0 <= emo < len(EMOTION_NAMES) else -1
  if not (v_ok or a_ok or emo >= 0):
    skips.skip('no valid valence, arousal or emotion in row', item)
    return None
  for ok, name in ((v_ok, 'valence'), (a_ok, 'arousal')):
    if not ok:
      skips.skip(f'{name} missing or out of range: masked, frames kept', item)
  return dict(
      valence=v if v_ok else 0.0, arousal=2.0 * a - 1.0 if a_ok else 0.0,
      va_mask=np.array([v_ok, a_ok], np.float32),
      valence_raw=v, arousal_raw=a, emotion=emo)
