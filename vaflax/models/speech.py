"""Pretrained speech encoders of the wav2vec 2.0 family: wav2vec 2.0, HuBERT and WavLM.

  wave (B, X) 16 kHz, normalised -> hidden states (I, B, T, D), T at 50 Hz, I = layers + 1

The three share one architecture (models/speech_layers.py); a config says which parts a
checkpoint has:
- the convolutional feature encoder (7 convs, 320x downsampling: one frame per 20 ms, receptive
  field 25 ms), with `feat_extract_norm` 'group' (base models) or 'layer' (large/lv60);
- the feature projection (LayerNorm, absent in some HuBERT configs, then a Linear to the width);
- the convolutional position embedding, added before the Transformer;
- the Transformer: post-LN (`stable_layer_norm=False`, base) or pre-LN with a final LayerNorm
  (`stable_layer_norm=True`, large); WavLM adds its gated relative position bias
  (`num_buckets` > 0).

Hidden states are those of transformers' `output_hidden_states` (4.x): the first layer's input
(after the position embedding, and in the post-LN layout after the encoder LayerNorm), then each
layer's output; in the pre-LN layout the last one after the final LayerNorm.

Input: the hub feature extractors normalise every utterance to zero mean and unit variance
(`normalize_wave`; Wav2Vec2FeatureExtractor's do_normalize). Padding: `mask_BxX` (1 = sample)
for a batch of unequal lengths; padded frames are zeroed before the position conv and never
attended to, as in the reference. Models with the group-norm feature encoder (the base ones)
normalise each channel over the whole window, padding included, so there a padded batch is not
the same as each utterance alone (why their feature extractors return no attention mask): give
them equal-length windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vaflax.models import speech_layers as sl
from vaflax.models import vit

SAMPLE_RATE = 16_000  # every released model of the family
FAMILIES = ('wav2vec2', 'hubert', 'wavlm')
# The released base models' feature encoder (Baevski et al. 2020, 2.1): 512 channels.
CONV_KERNEL = (10, 3, 3, 3, 3, 2, 2)
CONV_STRIDE = (5, 2, 2, 2, 2, 2, 2)


def normalize_wave(wave_BxX, mask_BxX=None, eps: float = 1e-7):
  """Zero mean, unit variance per utterance over its real samples (the hub feature extractors'
  `(x - mean) / sqrt(var + 1e-7)`); padding stays 0."""
  wave_BxX = jnp.asarray(wave_BxX, jnp.float32)
  m = jnp.ones_like(wave_BxX) if mask_BxX is None else jnp.asarray(mask_BxX, jnp.float32)
  n = jnp.maximum(m.sum(-1, keepdims=True), 1.0)
  mean = (wave_BxX * m).sum(-1, keepdims=True) / n
  var = (jnp.square(wave_BxX - mean) * m).sum(-1, keepdims=True) / n
  return (wave_BxX - mean) / jnp.sqrt(var + eps) * m


def frame_pooling(num_video_frames: int, samples_per_frame: int, num_frames: int, hop: int,
                  field: int) -> np.ndarray:
  """(T_video, T) float32 averaging the encoder's frames onto video frames: encoder frame j
  (samples [j * hop, j * hop + field)) belongs to the video frame holding its centre; a video
  frame that holds no centre (video faster than 50 fps) takes the nearest encoder frame."""
  centre_T = np.arange(num_frames) * hop + field / 2
  owner_T = np.minimum(centre_T // samples_per_frame, num_video_frames - 1).astype(np.int64)
  pool = np.zeros((num_video_frames, num_frames), np.float64)
  pool[owner_T, np.arange(num_frames)] = 1.0
  empty = pool.sum(1) == 0
  mid = (np.arange(num_video_frames) + 0.5) * samples_per_frame
  nearest = np.abs(mid[:, None] - centre_T[None, :]).argmin(1)
  pool[empty, nearest[empty]] = 1.0
  return (pool / pool.sum(1, keepdims=True)).astype(np.float32)


class Model(nnx.Module):
  """A wav2vec 2.0 / HuBERT / WavLM encoder: waveform -> all hidden states."""

  def __init__(
      self,
      *,
      family: str = 'wav2vec2',
      conv_dim: Sequence[int] = (512,) * 7,
      conv_kernel: Sequence[int] = CONV_KERNEL,
      conv_stride: Sequence[int] = CONV_STRIDE,
      conv_bias: bool = False,
      feat_extract_norm: str = 'group',
      feat_proj_layer_norm: bool = True,
      hidden_size: int = 768,
      num_layers: int = 12,
      num_heads: int = 12,
      intermediate_size: int = 3072,
      num_conv_pos_embeddings: int = 128,
      num_conv_pos_embedding_groups: int = 16,
      stable_layer_norm: bool = False,
      layer_norm_eps: float = 1e-5,
      num_buckets: int = 0,
      max_bucket_distance: int = 800,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      rngs: nnx.Rngs,
  ):
    """Defaults: wav2vec 2.0 base. `family` is recorded (docs, errors); `num_buckets` > 0 builds
    WavLM's gated relative position bias (320 buckets, distance 800 in the released models).
    `dtype` 'bfloat16' computes in bfloat16 with float32 weights."""
    if family not in FAMILIES:
      raise ValueError(f'speech.Model: family must be one of {FAMILIES}, got {family!r}')
    dtype, param_dtype = vit.as_dtype(dtype), vit.as_dtype(param_dtype)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.family = family
    self.num_layers, self.width = num_layers, hidden_size
    self.stable_layer_norm = stable_layer_norm
    self.num_buckets, self.max_bucket_distance = num_buckets, max_bucket_distance
    self.feature_extractor = sl.FeatureEncoder(conv_dim, conv_kernel, conv_stride,
                                               conv_bias=conv_bias, norm=feat_extract_norm, **kw)
    self.projection_norm = (sl._layer_norm(conv_dim[-1], layer_norm_eps, dtype, param_dtype, rngs)
                            if feat_proj_layer_norm else None)
    self.projection = nnx.Linear(conv_dim[-1], hidden_size, **kw)
    self.pos_conv_embed = sl.PositionalConv(hidden_size, num_conv_pos_embeddings,
                                            num_conv_pos_embedding_groups, **kw)
    self.layer_norm = sl._layer_norm(hidden_size, layer_norm_eps, dtype, param_dtype, rngs)
    self.rel_attn_embed = (nnx.Embed(num_buckets, num_heads, param_dtype=param_dtype, rngs=rngs)
                           if num_buckets else None)
    self.layers = nnx.List([
        sl.Layer(hidden_size, num_heads, intermediate_size, pre_ln=stable_layer_norm,
                 eps=layer_norm_eps, gated_bias=bool(num_buckets), **kw)
        for _ in range(num_layers)])

  @property
  def num_states(self) -> int:
    return self.num_layers + 1

  def num_frames(self, num_samples):
    return self.feature_extractor.num_frames(num_samples)

  def pool_to_video(self, hidden_IxBxTxD, num_video_frames: int, samples_per_frame: int):
    """Hidden states of a window of whole video frames averaged onto those frames (the same
    rule for the fusion's cache and for its uncached path): (I, B, T, D) -> (I, B, T_video, D)."""
    fx = self.feature_extractor
    pool = frame_pooling(num_video_frames, samples_per_frame, hidden_IxBxTxD.shape[2], fx.hop,
                         fx.receptive_field)
    return jnp.einsum('vt,ibtd->ibvd', pool, hidden_IxBxTxD.astype(jnp.float32))

  def frame_mask(self, mask_BxX, num_frames: int):
    """(B, T) bool: frames inside each utterance's real length (transformers'
    _get_feature_vector_attention_mask)."""
    lengths_B = self.num_frames(jnp.asarray(mask_BxX).astype(jnp.int32).sum(-1))
    return jnp.arange(num_frames)[None, :] < lengths_B[:, None]

  def _position_bias(self, t: int):
    buckets_TxT = sl.relative_buckets(t, self.num_buckets, self.max_bucket_distance)
    return jnp.transpose(self.rel_attn_embed(jnp.asarray(buckets_TxT)), (2, 0, 1))[None]

  def __call__(self, wave_BxX, mask_BxX=None):
    """(I, B, T, D) hidden states of a normalised waveform batch (see normalize_wave)."""
    if wave_BxX.ndim != 2:
      raise ValueError(f'speech.Model expects a waveform batch (B, X), got {wave_BxX.shape}')
    feats_BxTxC = self.feature_extractor(wave_BxX)
    t = feats_BxTxC.shape[1]
    if t < 1:
      raise ValueError(f'speech.Model: {wave_BxX.shape[1]} samples give no frame (the feature '
                       'encoder needs at least 400 samples at 16 kHz, 25 ms)')
    if self.projection_norm is not None:
      feats_BxTxC = self.projection_norm(feats_BxTxC)
    x_BxTxD = self.projection(feats_BxTxC)
    mask_BxT = None
    if mask_BxX is not None:
      mask_BxT = self.frame_mask(mask_BxX, t)
      x_BxTxD = jnp.where(mask_BxT[..., None], x_BxTxD, 0)
    x_BxTxD = x_BxTxD + self.pos_conv_embed(x_BxTxD)
    if not self.stable_layer_norm:
      x_BxTxD = self.layer_norm(x_BxTxD)
    bias = self._position_bias(t) if self.rel_attn_embed is not None else None
    states = [x_BxTxD]
    for layer in self.layers:
      x_BxTxD = layer(x_BxTxD, mask_BxT, bias)
      states.append(x_BxTxD)
    if self.stable_layer_norm:
      states[-1] = self.layer_norm(x_BxTxD)
    return jnp.stack(states)


def hidden_states(model: Model, wave_BxX, mask_BxX=None, *, normalize: bool = True):
  """`model`'s hidden states of a raw waveform batch, normalised first when asked."""
  if normalize:
    wave_BxX = normalize_wave(wave_BxX, mask_BxX)
  return model(jnp.asarray(wave_BxX, jnp.float32), mask_BxX)

