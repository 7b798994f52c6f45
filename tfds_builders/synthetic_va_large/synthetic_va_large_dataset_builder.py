"""synthetic_va_large: synthetic_va with 4x the training identities (no download).

The data-size control of issue 17: does a ViT that fits synthetic_va's 40 training identities
but not its 6 validation ones generalise with more identities? It does (docs/mae_va.md), so
configs/mae_va.py:runlocal reads it in every stage. Same drawing, same 4 clips per identity; its first 160 training clips
are synthetic_va's, and validation and test are synthetic_va's own (same seeds), so scores on
them compare directly.
"""

from __future__ import annotations

from tfds_builders.synthetic_va import synthetic_va_dataset_builder as base

TRAIN_CLIPS = 640  # 160 identities x 4 clips


class Builder(base.Builder):
  """synthetic_va drawn with 640 training clips (160 identities)."""

  SPLITS = dict(base.SPLITS, train=(TRAIN_CLIPS, base.SPLITS['train'][1]))
