"""synthetic_va_heldout: synthetic_va validation/test frames of many identities (no download).

Evidence for calibrated intervals (docs/uncertainty.md). synthetic_va's validation and test
splits hold 6 identities each (24 clips x 24 frames); a model's errors are correlated within a
clip and within an identity (measured: 576 frames are worth about 30-45 independent ones), so a
coverage measured on them scatters by +-5 points around its true value whatever the method.
Here each split draws CLIPS clips, each of its own identity, with synthetic_va's drawing and
24-frame clips, and keeps every STRIDE-th frame (frames of one clip are nearly copies of each
other: 6 of them are worth almost as much as 24). Identities are disjoint from synthetic_va's
(other seeds) and between the two splits. Frames are not contiguous: for per-frame models only.
"""

from __future__ import annotations

import numpy as np

from tfds_builders.synthetic_va import synthetic_va_dataset_builder as base
from vaflax.data import builder_utils as bu
from vaflax.data import synthetic_faces as sf

CLIPS = 320  # per split, one identity each
STRIDE = 4  # frames 0, 4, ..., 20 of each 24-frame clip


class Builder(base.Builder):
  """synthetic_va's drawing: 320 identities per split, 6 frames of one clip each."""

  SPLITS = {'validation': (CLIPS, 300_000), 'test': (CLIPS, 400_000)}

  def _generate_examples(self, split):
    num_clips, offset = self.SPLITS[split]
    keep = np.arange(0, base.FRAMES_PER_CLIP, STRIDE)
    writer = bu.SplitWriter(split)
    for c in range(num_clips):
      frames, lms, va, audio = sf.make_clip(
          offset + c, base.FRAMES_PER_CLIP, base.CROP.size, identity_seed=offset + c, keep=keep)
      vid = f'{split}_{c:04d}'
      yield from writer.emit(vid, (
          bu.default_example(
              image=bu.encode_image(frames[i], 'png'),
              valence=float(va[i, 0]), arousal=float(va[i, 1]),
              va_mask=np.ones((2,), np.float32),
              valence_raw=float(va[i, 0]), arousal_raw=float(va[i, 1]),
              landmarks=(lms[i] / base.CROP.size).astype(np.float32), landmarks_mask=1.0,
              frame=int(t), file=f'{vid}/{t:05d}', audio=audio[i])
          for i, t in enumerate(keep)))
    writer.finish(self)
