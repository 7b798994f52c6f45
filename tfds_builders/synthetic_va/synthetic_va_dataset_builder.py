"""synthetic_va: procedural talking faces with valence/arousal labels (no download).

The embedded default dataset of vaflax. See vaflax/data/synthetic_faces.py for how faces and
voices follow the valence/arousal trajectory. Splits use disjoint identities (different seeds).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from vaflax import faces
from vaflax.data import builder_utils as bu
from vaflax.data import synthetic_faces as sf

# Faces are drawn directly as crops, framed like the default box crop of a Haar box.
CROP = faces.CropSpec(size=112)
FRAMES_PER_CLIP = 24
CLIPS_PER_IDENTITY = 4  # each identity shows several unrelated VA trajectories
# (number of clips, seed offset) per split; offsets keep identities disjoint across splits.
SPLITS = {'train': (160, 0), 'validation': (24, 100_000), 'test': (24, 200_000)}


class Builder(tfds.core.GeneratorBasedBuilder):
  """Procedurally generated faces + voice with per-frame valence/arousal."""

  SPLITS = SPLITS  # (clips, seed offset) per split; a subclass may draw more clips (synthetic_va_large)
  CLIPS_PER_IDENTITY = CLIPS_PER_IDENTITY
  FRAME_STRIDE = 1  # every FRAME_STRIDE-th frame of each clip is kept (synthetic_va_heldout: 4)
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=bu.frame_features(
            CROP.size, encoding='png', audio_samples_per_frame=sf.SAMPLES_PER_FRAME),
        disable_shuffling=True,  # records stay in (clip, frame) order: windows are index ranges
        metadata=tfds.core.MetadataDict(
            fps=sf.FPS, sample_rate=sf.SAMPLE_RATE, crop=CROP.to_dict(), emotion_names=[],
            va_scale='generated directly in [-1, 1]'),
        homepage='https://github.com/vaflax/vaflax',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return bu.non_empty_splits(self, {name: self._generate_examples(name) for name in self.SPLITS})

  def _generate_examples(self, split):
    num_clips, offset = self.SPLITS[split]
    keep = np.arange(0, FRAMES_PER_CLIP, self.FRAME_STRIDE)
    writer = bu.SplitWriter(split)
    jobs = ((offset + c, FRAMES_PER_CLIP, CROP.size, offset + c // self.CLIPS_PER_IDENTITY,
             None if self.FRAME_STRIDE == 1 else keep) for c in range(num_clips))
    for c, (frames, lms, va, audio) in enumerate(sf.make_clips(jobs)):
      vid = f'{split}_{c:04d}'
      yield from writer.emit(vid, (
          bu.default_example(
              image=bu.encode_image(frames[i], 'png'),
              valence=float(va[i, 0]), arousal=float(va[i, 1]),
              va_mask=np.ones((2,), np.float32),
              valence_raw=float(va[i, 0]), arousal_raw=float(va[i, 1]),
              landmarks=(lms[i] / CROP.size).astype(np.float32), landmarks_mask=1.0,
              frame=int(t), file=f'{vid}/{t:05d}', audio=audio[i])
          for i, t in enumerate(keep)))
    writer.finish(self)
