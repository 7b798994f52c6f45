"""Horizontal-flip test-time augmentation: the mean of the outputs on an input and its mirror.

Valence, arousal, their quadrant and the emotion category do not change under a horizontal
mirror, so those outputs are averaged as they are. An output that does change (heatmaps of
mirrored landmarks) is averaged only when the caller says how to map the mirror's output back
(`unmirror`, e.g. models/fan.py `flip_heatmaps` for EmoFAN, as EmoNet's test.py does).
"""

from __future__ import annotations

MIRROR_INVARIANT = ('va', 'quadrant_logits', 'emotion_logits')
IMAGE_KEYS = ('image', 'frames')  # (B, H, W, C) and (B, T, H, W, C): the width axis is -2


def flip_tta(predict_fn, unmirror=None):
  """A predict_fn(model, batch, config) that averages `predict_fn` over the batch's images (or
  frames) and their mirror images. `unmirror`: {output key: function mapping the output on the
  mirrored input back to the original's frame}; other outputs are those of the original input."""
  unmirror = dict(unmirror or {})

  def fn(model, batch, config):
    keys = [k for k in IMAGE_KEYS if k in batch]
    if not keys:
      raise KeyError(f'flip_tta needs batch["image"] or batch["frames"]; got {sorted(batch)}')
    out = predict_fn(model, batch, config)
    out_m = predict_fn(model, dict(batch, **{k: batch[k][..., ::-1, :] for k in keys}), config)
    res = dict(out)
    for k in out:
      if k in unmirror:
        res[k] = 0.5 * (out[k] + unmirror[k](out_m[k]))
      elif k in MIRROR_INVARIANT:
        res[k] = 0.5 * (out[k] + out_m[k])
    return res

  return fn


def enabled(config) -> bool:
  """config.eval.flip_tta, the run's one switch for flip TTA; False for a run whose config
  predates the field."""
  return bool(config.get('eval', {}).get('flip_tta', False))
