"""celebv_hq: CelebV-HQ (Zhu et al., ECCV 2022) attribute-labelled face clips, frame-level.

Each clip of celebvhq_info.json is cut from its downloaded YouTube video (duration start/end) and
cropped with the clip's face box the way the official download_and_process.py does it, or taken
as is from an already processed <clip>.mp4. Frames carry the clip's emotion (per time segment
where the json splits the clip), a VA point derived from it (va_derived True), and the 40
appearance and 35 action attributes. Layout: see README.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np
import tensorflow_datasets as tfds

from vaflax import circumplex, faces
from vaflax.data import builder_utils as bu
from vaflax.data import video_io

CROP = faces.CropSpec(margin=0.0, size=256)  # the square of the json bbox, as the official script
FPS = 25  # frames are resampled to this rate
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
NUM_APPEARANCE, NUM_ACTION = 40, 35  # CelebV-HQ README: 40 appearance + 35 action attributes
BOX_EXPAND = 0.02  # download_and_process.py widens the box by 0.02 (of width/height) per side
# The 8 emotions of the paper; labels outside it are appended to the vocabulary at build time.
EMOTION_NAMES = ['neutral', 'happy', 'sad', 'anger', 'fear', 'surprise', 'contempt', 'disgust']
JSON_NAME = 'celebvhq_info.json'


def ytb_split(ytb_id: str) -> str:
  """Deterministic pseudo-split (CelebV-HQ has none) by YouTube video, so that clips of one video
  stay together: md5(ytb_id) % 10 -> 8 validation, 9 test, else train."""
  h = int(hashlib.md5(ytb_id.encode()).hexdigest(), 16) % 10
  return {8: 'validation', 9: 'test'}.get(h, 'train')


def official_box(bbox: dict, width: int, height: int) -> tuple[int, int, int, int]:
  """(x, y, w, h) pixel square that download_and_process.py crops for a normalised bbox.

  The box is widened by BOX_EXPAND on each side (clipped to the frame), scaled to pixels, then
  replaced by the square of side 2 * (min(w, h) // 2) with the same centre.
  """
  top, bottom = max(bbox['top'] - BOX_EXPAND, 0.0), min(bbox['bottom'] + BOX_EXPAND, 1.0)
  left, right = max(bbox['left'] - BOX_EXPAND, 0.0), min(bbox['right'] + BOX_EXPAND, 1.0)
  top, bottom = round(top * height), round(bottom * height)
  left, right = round(left * width), round(right * width)
  half = min(bottom - top, right - left) // 2
  cy, cx = (top + bottom) / 2, (left + right) / 2
  return int(cx - half), int(cy - half), 2 * half, 2 * half


def canonical(label) -> str | None:
  if not isinstance(label, str) or not label.strip():
    return None
  try:
    name = circumplex.canonical_emotion(label)
  except ValueError:
    return label.strip().lower()  # outside the table: kept as its own class, no VA
  return name


class Builder(tfds.core.GeneratorBasedBuilder):
  """CelebV-HQ clips: emotion (+ derived VA), appearance and action attributes, audio."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  CelebV-HQ (non-commercial research only): get celebvhq_info.json and download_and_process.py
  from https://github.com/CelebV-HQ/CelebV-HQ and run the script's download step, which saves
  each YouTube video as <raw>/<ytb_id>.mp4 (yt-dlp, video + audio). Put celebvhq_info.json and
  the raw folder anywhere under manual_dir. Clips already processed by the script
  (<processed>/<clip_id>.mp4, cut and cropped) are used as they are when present.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=bu.frame_features(
            CROP.size, audio_samples_per_frame=SAMPLES_PER_FRAME, extra={
                'audio_mask': tfds.features.Scalar(dtype=np.float32),
                'appearance': tfds.features.Tensor(shape=(NUM_APPEARANCE,), dtype=np.uint8),
                'action': tfds.features.Tensor(shape=(NUM_ACTION,), dtype=np.uint8),
            }),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(
            fps=FPS, sample_rate=SAMPLE_RATE, crop=CROP.to_dict(),
            emotion_names=list(EMOTION_NAMES), appearance_names=[], action_names=[],
            va_scale='derived from emotion via vaflax.circumplex.EMOTION_VA (Russell & Mehrabian '
                     '1977), in [-1, 1]; contempt and unknown labels unmapped (va_mask 0)',
            crop_note='official download_and_process.py square of the json bbox',
            split_rule='md5(ytb_id) % 10: 8 validation, 9 test, else train'),
        homepage='https://celebv-hq.github.io/',
    )

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    found = bu.find_paths(root, JSON_NAME, max_depth=4, want_dir=False)
    if not found:
      raise bu.BadInputError(os.path.join(root, JSON_NAME), 'not found under manual_dir',
                             self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip())
    path = found[0]
    try:
      with open(path, encoding='utf-8') as f:
        info = json.load(f)
      meta, clips = info['meta_info'], info['clips']
      app_names, act_names = list(meta['appearance_mapping']), list(meta['action_mapping'])
    except (ValueError, KeyError, TypeError) as e:
      raise bu.BadInputError(path, f'not a CelebV-HQ info json ({type(e).__name__}: {e})',
                             'expected {"meta_info": {...mappings}, "clips": {...}}') from e
    if (len(app_names), len(act_names)) != (NUM_APPEARANCE, NUM_ACTION):
      raise bu.BadInputError(path, f'{len(app_names)} appearance / {len(act_names)} action '
                             f'attributes, expected {NUM_APPEARANCE} / {NUM_ACTION}')
    md = self.info.metadata
    md['appearance_names'], md['action_names'] = app_names, act_names
    # Data-driven vocabulary: the paper's 8 emotions, then any other label the json uses.
    extra = sorted({n for c in clips.values() for n in _label_names(c)} - set(EMOTION_NAMES))
    md['emotion_names'] = EMOTION_NAMES + extra
    videos = _index_mp4(root)
    by_split = {'train': [], 'validation': [], 'test': []}
    for key in sorted(clips):
      ytb = clips[key].get('ytb_id') if isinstance(clips[key], dict) else None
      by_split[ytb_split(str(ytb or key))].append(key)
    return bu.non_empty_splits(self, {s: self._generate_examples(s, keys, clips, videos, root)
            for s, keys in by_split.items()})

  def _generate_examples(self, split, keys, clips, videos, root):
    writer = bu.SplitWriter(split)
    names = self.info.metadata['emotion_names']
    for key in keys:
      clip, problem = _check_clip(clips[key])
      if problem:
        writer.skips.skip(f'bad clip entry: {problem}', key)
        continue
      processed = videos.get(f'{key}.mp4')
      raw = videos.get(f'{clip["ytb_id"]}.mp4')
      if processed:  # cut and cropped by download_and_process.py: the whole frame is the crop
        path, span, box_fn = processed, {}, lambda rgb: (0, 0, rgb.shape[1], rgb.shape[0])
      elif raw:
        d = clip['duration']
        span = dict(start=float(d['start_sec']), end=float(d['end_sec']))
        box_fn = _raw_box(clip['bbox'])
        path = raw
      else:
        writer.skips.skip('video not downloaded (neither <ytb_id>.mp4 nor <clip>.mp4)', key)
        continue
      rel = os.path.relpath(path, root)
      attrs = dict(appearance=np.asarray(clip['attributes']['appearance'], np.uint8),
                   action=np.asarray(clip['attributes']['action'], np.uint8))
      frames = video_io.face_frames(
          path, fps=FPS, sample_rate=SAMPLE_RATE, spec=CROP, box_fn=box_fn,
          skips=writer.skips, item=f'{key} ({rel})', **span)
      emotion_at = _emotion_timeline(clip['attributes']['emotion'])

      def examples(frames=frames, emotion_at=emotion_at, attrs=attrs, rel=rel):
        for f in frames:
          name = emotion_at(f['frame'] / FPS)
          ex = bu.default_example(file=rel, emotion=names.index(name) if name else -1,
                                  **f, **attrs)
          va = circumplex.EMOTION_VA.get(name) if name else None
          if va is not None:
            ex.update(valence=va[0], arousal=va[1], valence_raw=va[0], arousal_raw=va[1],
                      va_mask=np.ones((2,), np.float32), va_derived=True)
          yield ex

      yield from writer.emit(key, examples())
    writer.finish(self)


def _raw_box(bbox):
  cache = {}

  def box_fn(rgb):
    h, w = rgb.shape[:2]
    if (w, h) not in cache:
      cache[(w, h)] = official_box(bbox, w, h)
    return cache[(w, h)]

  return box_fn


def _label_names(clip) -> list[str]:
  try:
    emo = clip['attributes']['emotion']
    labels = [emo['labels']] if not emo['sep_flag'] else [s['emotion'] for s in emo['labels']]
  except (KeyError, TypeError):
    return []
  return [n for n in map(canonical, labels) if n]


def _emotion_timeline(emo):
  """clip time (s) -> canonical emotion name, or None in a gap between labelled segments."""
  if not emo['sep_flag']:
    name = canonical(emo['labels'])
    return lambda t: name
  segs = [(float(s['start_sec']), float(s['end_sec']), canonical(s['emotion']))
          for s in emo['labels']]

  def at(t):
    for a, b, name in segs:
      if a <= t < b:
        return name
    return None

  return at


def _check_clip(clip) -> tuple[dict | None, str | None]:
  """The clip if its entry is usable, else (None, what is wrong)."""
  try:
    d, b, attrs = clip['duration'], clip['bbox'], clip['attributes']
    start, end = float(d['start_sec']), float(d['end_sec'])
    if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
      return None, f'duration {start}..{end} is not a time span'
    t, bo, le, ri = (float(b[k]) for k in ('top', 'bottom', 'left', 'right'))
    if not (0 <= t < bo <= 1 and 0 <= le < ri <= 1):
      return None, f'bbox {b} is not a box inside [0, 1]'
    for name, n in (('appearance', NUM_APPEARANCE), ('action', NUM_ACTION)):
      v = attrs[name]
      if len(v) != n or any(x not in (0, 1) for x in v):
        return None, f'{name} has {len(v)} values, expected {n} zeros/ones'
    emo = attrs['emotion']
    if emo['sep_flag']:
      for s in emo['labels']:
        if not float(s['start_sec']) < float(s['end_sec']) or canonical(s['emotion']) is None:
          return None, f'emotion segment {s} is not a labelled time span'
    elif canonical(emo['labels']) is None:
      return None, f'emotion label {emo["labels"]!r} is not a name'
    str(clip['ytb_id'])
  except (KeyError, TypeError, ValueError) as e:
    return None, f'{type(e).__name__}: {e}'
  return clip, None


def _index_mp4(root) -> dict:
  """file name -> path of every .mp4 under root (bounded depth; first in sorted order wins)."""
  out = {}
  base = root.rstrip(os.sep).count(os.sep)
  for dirpath, dirnames, filenames in os.walk(root):
    if dirpath.rstrip(os.sep).count(os.sep) - base >= 5:
      dirnames[:] = []
    dirnames.sort()
    for f in sorted(filenames):
      if f.lower().endswith('.mp4'):
        out.setdefault(f, os.path.join(dirpath, f))
  return out

