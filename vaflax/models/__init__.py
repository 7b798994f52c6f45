"""VA models: each module exports `Model(...)` built from its config dict.

Tensors in model code are named with their shape (nanodo style): `x_BxTxD` is (B, T, D). One
letter, one meaning:

  B  batch
  T  sequence positions: the video frames of a window, or the tokens of a Transformer
  H  image height           W  image width
  h  height of a downsampled map (FAN heatmaps, H/4)   w  its width
  C  channels of an image or feature map (also a concatenation of feature vectors)
  D  model width: features per position
  P  patches of an image (the tokens after the CLS prefix)
  V  visible (kept) patches of the MAE encoder
  Y  values of one patch (p * p * C)
  G  width of the MAE decoder
  N  attention heads        Z  width of one attention head (D = N * Z)
  R  units of a recurrent (GRU) cell, per direction
  K  bins per VA dimension (Deng et al. 2020: 20)
  E  emotion (expression) classes
  L  landmarks (iBUG-68: 68)
  S  audio samples per video frame
  X  samples of a waveform (a window's or a clip's; models/speech.py)
  I  hidden states of a speech encoder (its layers + 1)
  F  STFT frames per video frame
  U  STFT frequency bins (n_fft // 2 + 1)
  M  mel bins
  J  taps of a window (the STFT window, a local argmax window)
  A  anchors of a detector (BlazeFace: 48 x 48 = 2304)
  O  candidate anchors a detector keeps before non-maximum suppression
  Q  face slots of a detector's fixed-size output (max faces per frame)

A digit is a literal size (`va_Bx2`: valence, arousal); letters written together multiply
(`BT` = B * T, `2R` = 2 * R, `hw` = h * w); `p` adds (`1pV` = 1 + V); a leading `x` stands for
any leading axes (`feats_xD` is (..., D)).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from flax import nnx


def count_params(module_or_state, filter_: Callable | type = nnx.Param) -> int:
  """Number of scalars in the `filter_` variables of a module (or in a state, e.g. an
  `nnx.eval_shape` result's `nnx.state`)."""
  state = (nnx.state(module_or_state, filter_) if isinstance(module_or_state, nnx.Module)
           else module_or_state)
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))
