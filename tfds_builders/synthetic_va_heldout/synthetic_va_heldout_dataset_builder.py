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

from tfds_builders.synthetic_va import synthetic_va_dataset_builder as base

CLIPS = 320  # per split, one identity each


class Builder(base.Builder):
  """synthetic_va's drawing: 320 identities per split, 6 frames of one clip each (0, 4, ..., 20)."""

  SPLITS = {'validation': (CLIPS, 300_000), 'test': (CLIPS, 400_000)}
  CLIPS_PER_IDENTITY = 1
  FRAME_STRIDE = 4
