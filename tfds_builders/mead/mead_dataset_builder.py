"""mead: MEAD (Wang et al., ECCV 2020) emotional talking-face clips, frame-level examples.

Category + intensity dataset: each frame gets the emotion of its clip's folder, the intensity
level, and the VA point of the emotion from vaflax.circumplex (va_derived True; contempt has no
point: va_mask 0). Frames are taken every `frame_stride` frames of a 30 fps grid, faces found with
the Haar cascade (vaflax.detect) and cropped with vaflax.faces.crop_face; audio per frame from
the actor's audio/<emotion>/level_<k>/<nnn>.m4a or else the video's own track.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from vaflax import circumplex, detect, faces
from vaflax.data import builder_utils as bu
from vaflax.data import video_io

CROP = faces.CropSpec(size=256)  # box crop, margin 0.2 around the Haar box (brows to mouth)
FPS = 30  # MEAD is commonly 30 fps (datasets.md section 7, unverified): the frame grid rate
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 533
VIEWS = ('front', 'down', 'top', 'left_30', 'left_60', 'right_30', 'right_60')
# Folder names (datasets.md section 7); 'surprise' is a spelling seen in third-party lists.
EMOTION_NAMES = ['angry', 'contempt', 'disgusted', 'fear', 'happy', 'neutral', 'sad', 'surprised']
EMOTION_ALIASES = {'surprise': 'surprised'}
ACTOR_RE = re.compile(r'^[MW]\d{3}$')
CLIP_RE = re.compile(r'^(?P<view>[a-z_0-9]+)/(?P<emotion>[a-z]+)/level_(?P<level>\d+)/'
                     r'(?P<clip>\d+)\.mp4$')


def actor_split(actor: str) -> str:
  """Deterministic identity-disjoint pseudo-split (MEAD has no official one): md5 of the actor
  id mod 10 -> 8 validation, 9 test, else train (about 80/10/10 of the 60 actors)."""
  h = int(hashlib.md5(actor.encode()).hexdigest(), 16) % 10
  return {8: 'validation', 9: 'test'}.get(h, 'train')


@dataclasses.dataclass(eq=False)
class MeadConfig(tfds.core.BuilderConfig):
  views: tuple = ('front',)
  frame_stride: int = 5  # keep every 5th frame of the 30 fps grid (6 frames per second)


class Builder(tfds.core.GeneratorBasedBuilder):
  """MEAD: emotion + intensity + derived VA on sampled face frames, with audio."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      MeadConfig(name='front', description='front view, every 5th frame (6 fps)'),
      MeadConfig(name='all_views', views=VIEWS, frame_stride=10,
                 description='all 7 views, every 10th frame (3 fps)'),
  ]
  DEFAULT_CONFIG_NAME = 'front'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Request MEAD at https://wywu.github.io/projects/MEAD/MEAD.html (Google Drive / Baidu links
  after agreeing to the licence). Download the per-actor archives (e.g. video.tar, audio.tar for
  M003 ... W040) and extract each into its actor folder, giving
  manual_dir/<...>/M003/video/<view>/<emotion>/level_<k>/<nnn>.mp4 and
  manual_dir/<...>/M003/audio/<emotion>/level_<k>/<nnn>.m4a (the audio is optional).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=bu.frame_features(
            CROP.size, audio_samples_per_frame=SAMPLES_PER_FRAME, extra={
                'audio_mask': tfds.features.Scalar(dtype=np.float32),
                'intensity': tfds.features.Scalar(dtype=np.int32),
                'view': tfds.features.Text(),
            }),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(
            fps=FPS, frame_stride=self.builder_config.frame_stride,
            views=list(self.builder_config.views), sample_rate=SAMPLE_RATE, crop=CROP.to_dict(),
            emotion_names=EMOTION_NAMES,
            va_scale='derived from emotion via vaflax.circumplex.EMOTION_VA (Russell & Mehrabian '
                     '1977), in [-1, 1]; contempt unmapped (va_mask 0)',
            face_detector=f'vaflax.detect (OpenCV Haar {detect.CASCADE}), largest face, '
                          f'margin {CROP.margin}',
            split_rule='md5(actor) % 10: 8 validation, 9 test, else train'),
        homepage='https://wywu.github.io/projects/MEAD/MEAD.html',
    )

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    actors = _find_actors(root)
    if not actors:
      raise bu.BadInputError(root, 'no actor folder (M### / W###) with a video/ folder found',
                             self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip())
    by_split = {'train': [], 'validation': [], 'test': []}
    for actor, path in actors:
      by_split[actor_split(actor)].append((actor, path))
    return bu.non_empty_splits(
        self, {s: self._generate_examples(s, a, root) for s, a in by_split.items()})

  def _generate_examples(self, split, actors, root):
    cfg = self.builder_config
    writer = bu.SplitWriter(split)
    for actor, actor_dir in actors:
      for rel, m in _clips(os.path.join(actor_dir, 'video')):
        item = os.path.relpath(os.path.join(actor_dir, 'video', rel), root)
        if m is None:
          writer.skips.skip('mp4 not at <view>/<emotion>/level_<k>/<nnn>.mp4', item)
          continue
        if m['view'] not in cfg.views:
          continue  # other views belong to other configs
        emotion = EMOTION_ALIASES.get(m['emotion'], m['emotion'])
        if emotion not in EMOTION_NAMES:
          writer.skips.skip(f'unknown emotion folder {m["emotion"]!r}', item)
          continue
        level = int(m['level'])
        audio = os.path.join(actor_dir, 'audio', m['emotion'], f'level_{level}',
                             f'{m["clip"]}.m4a')
        labels = dict(emotion=EMOTION_NAMES.index(emotion), intensity=level, view=m['view'])
        va = circumplex.emotion_to_va(emotion)
        if va is not None:
          labels.update(valence=va[0], arousal=va[1], valence_raw=va[0], arousal_raw=va[1],
                        va_mask=np.ones((2,), np.float32), va_derived=True)
        frames = video_io.face_frames(
            os.path.join(actor_dir, 'video', rel), fps=FPS, sample_rate=SAMPLE_RATE,
            spec=CROP, box_fn=detect.largest_face, skips=writer.skips,
            stride=cfg.frame_stride, item=item,
            audio_path=audio if os.path.isfile(audio) else None)
        vid = f'{actor}/{m["view"]}/{emotion}/level_{level}/{m["clip"]}'
        yield from writer.emit(vid, (bu.default_example(file=item, **f, **labels)
                                     for f in frames))
    writer.finish(self)


def _find_actors(root) -> list[tuple[str, str]]:
  """(actor id, folder) of every M###/W### folder with a video/ subfolder (bounded search)."""
  out, tars = {}, []
  base = root.rstrip(os.sep).count(os.sep)
  for dirpath, dirnames, filenames in os.walk(root):
    if dirpath.rstrip(os.sep).count(os.sep) - base >= 4:
      dirnames[:] = []
    dirnames.sort()
    name = os.path.basename(dirpath)
    if ACTOR_RE.match(name):
      if 'video' in dirnames:
        out.setdefault(name, dirpath)
      tars += [os.path.join(dirpath, f) for f in filenames if f.endswith(('.tar', '.zip'))]
      dirnames[:] = []  # nothing to find inside an actor folder
  if not out and tars:
    raise bu.BadInputError(tars[0], 'archive not extracted',
                           'extract each actor archive into its actor folder')
  return sorted(out.items())


def _clips(video_dir):
  """(path relative to video_dir, match or None) of every mp4, sorted; the match splits
  <view>/<emotion>/level_<k>/<nnn>.mp4."""
  out = []
  for dirpath, dirnames, filenames in os.walk(video_dir):
    dirnames.sort()
    for f in sorted(filenames):
      if f.lower().endswith('.mp4'):
        rel = os.path.relpath(os.path.join(dirpath, f), video_dir).replace(os.sep, '/')
        out.append((rel, CLIP_RE.match('/'.join(rel.split('/')[-4:]))))
  return out
