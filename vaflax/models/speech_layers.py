"""Building blocks of the wav2vec 2.0 family (models/speech.py assembles them).

Written from the papers (wav2vec 2.0: Baevski et al. 2020; HuBERT: Hsu et al. 2021; WavLM: Chen
et al. 2022) and checked against transformers' Wav2Vec2Model / HubertModel / WavLMModel by
tests/speech_test.py. Parameter names follow the public state_dicts where NNX allows, so that the
converter (vaflax/convert/speech.py) is a list of renames.
"""

from __future__ import annotations

import math

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

CONV_NORM_EPS = 1e-5  # torch's GroupNorm / LayerNorm default, used by the feature encoder


def _layer_norm(dim, eps, dtype, param_dtype, rngs):
  # The two-pass variance (not E[x^2] - E[x]^2): the feature encoder's outputs have a large mean
  # relative to their spread, where the one-pass form loses the 1e-4 parity.
  return nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False, dtype=dtype,
                       param_dtype=param_dtype, rngs=rngs)


class FeatureEncoder(nnx.Module):
  """Raw waveform -> 50 Hz features: 1-D convolutions, each followed by GELU.

  norm='group' (base models): one GroupNorm with a group per channel after the first conv, i.e.
  each channel normalised over the whole window's time axis. norm='layer' (large/lv60 models):
  a LayerNorm over the channels after every conv, per time step (so padding cannot leak)."""

  def __init__(self, conv_dim, conv_kernel, conv_stride, *, conv_bias: bool, norm: str,
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if norm not in ('group', 'layer'):
      raise ValueError(f"feat_extract_norm must be 'group' or 'layer', got {norm!r}")
    if not len(conv_dim) == len(conv_kernel) == len(conv_stride):
      raise ValueError(f'conv_dim {conv_dim}, conv_kernel {conv_kernel} and conv_stride '
                       f'{conv_stride} must have one entry per layer')
    self.kernels, self.strides = tuple(conv_kernel), tuple(conv_stride)
    dims = (1, *conv_dim)
    self.convs = nnx.List([
        nnx.Conv(dims[i], dims[i + 1], kernel_size=(k,), strides=(s,), padding='VALID',
                 use_bias=conv_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        for i, (k, s) in enumerate(zip(conv_kernel, conv_stride, strict=True))])
    if norm == 'group':
      self.norms = nnx.List([nnx.GroupNorm(conv_dim[0], num_groups=conv_dim[0],
                                           epsilon=CONV_NORM_EPS, use_fast_variance=False,
                                           dtype=dtype, param_dtype=param_dtype, rngs=rngs)])
    else:
      self.norms = nnx.List([_layer_norm(c, CONV_NORM_EPS, dtype, param_dtype, rngs)
                             for c in conv_dim])

  def num_frames(self, num_samples):
    """Frames of a waveform of `num_samples` (a number or an integer array): floor((n - k) / s)
    + 1 per layer, as torch's Conv1d without padding."""
    for k, s in zip(self.kernels, self.strides, strict=True):
      num_samples = (num_samples - k) // s + 1
    return num_samples

  @property
  def hop(self) -> int:
    """Samples between frames (320 in the released models: 50 Hz at 16 kHz)."""
    return int(np.prod(self.strides))

  @property
  def receptive_field(self) -> int:
    """Samples one frame sees (400 in the released models: 25 ms)."""
    field, jump = 1, 1
    for k, s in zip(self.kernels, self.strides, strict=True):
      field, jump = field + (k - 1) * jump, jump * s
    return field

  def __call__(self, wave_BxX):
    x_BxTxC = wave_BxX[..., None]
    for i, conv in enumerate(self.convs):
      x_BxTxC = conv(x_BxTxC)
      if i < len(self.norms):
        x_BxTxC = self.norms[i](x_BxTxC)
      x_BxTxC = jax.nn.gelu(x_BxTxC, approximate=False)
    return x_BxTxC


class PositionalConv(nnx.Module):
  """The convolutional relative position embedding: a grouped conv over time (kernel 128, 16
  groups in the released models) + GELU. The checkpoints store its weight normalised (g * v /
  |v|); the converter folds that into one kernel, so here it is an ordinary conv. An even kernel
  is padded K/2 on the left and K/2 - 1 on the right: torch pads K/2 on both sides and drops the
  last output frame, which is the same thing."""

  def __init__(self, dim: int, kernel: int, groups: int, *, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    pad = (kernel // 2, kernel // 2 - (1 - kernel % 2))
    self.conv = nnx.Conv(dim, dim, kernel_size=(kernel,), padding=(pad,),
                         feature_group_count=groups, dtype=dtype, param_dtype=param_dtype,
                         rngs=rngs)

  def __call__(self, x_BxTxD):
    return jax.nn.gelu(self.conv(x_BxTxD), approximate=False)


def relative_buckets(num_frames: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """WavLM's bucket of key j for query i, (T, T) int: half the buckets for each sign of j - i;
  the first half of those exact distances, the rest logarithmic up to `max_distance` (T5's
  scheme, Raffel et al. 2020). float32 as the reference computes it, so boundaries agree."""
  half = num_buckets // 2
  exact = half // 2
  rel = np.arange(num_frames)[None, :] - np.arange(num_frames)[:, None]
  buckets = (rel > 0).astype(np.int64) * half
  dist = np.abs(rel)
  # log(0) never reaches the output (distance 0 is exact); 1 keeps the cast below finite.
  far = np.log(np.maximum(dist, 1).astype(np.float32) / np.float32(exact))
  far = far / np.float32(math.log(max_distance / exact)) * np.float32(half - exact)
  far = np.minimum((np.float32(exact) + far).astype(np.int64), half - 1)
  return buckets + np.where(dist < exact, dist, far)


class Attention(nnx.Module):
  """Multi-head self-attention (q/k/v/out projections with biases, scale Z^-0.5) through
  `jax.nn.dot_product_attention`; an optional additive bias (WavLM's) of shape (B, N, T, T)."""

  def __init__(self, dim: int, num_heads: int, *, dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f'hidden size {dim} is not a multiple of {num_heads} heads')
    self.num_heads = num_heads
    lin = lambda: nnx.Linear(dim, dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q_proj, self.k_proj, self.v_proj, self.out_proj = lin(), lin(), lin(), lin()

  def __call__(self, x_BxTxD, mask_BxT=None, bias_BxNxTxT=None):
    split = lambda y: einops.rearrange(y, 'b t (n z) -> b t n z', n=self.num_heads)
    q, k, v = split(self.q_proj(x_BxTxD)), split(self.k_proj(x_BxTxD)), split(self.v_proj(x_BxTxD))
    mask = None if mask_BxT is None else mask_BxT[:, None, None, :]
    if bias_BxNxTxT is not None:
      bias_BxNxTxT = bias_BxNxTxT.astype(q.dtype)
    y_BxTxNxZ = jax.nn.dot_product_attention(q, k, v, bias=bias_BxNxTxT, mask=mask)
    return self.out_proj(einops.rearrange(y_BxTxNxZ, 'b t n z -> b t (n z)'))


class GatedPositionBias(nnx.Module):
  """WavLM's gated relative position bias (Chen et al. 2022, eq. 3-4), one per layer: a gate per
  query and head from that head's slice of the layer's attention input scales the shared bucket
  bias (the table lives in the first layer only; later layers reuse its values)."""

  def __init__(self, num_heads: int, head_dim: int, *, dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.gru_rel_pos_linear = nnx.Linear(head_dim, 8, dtype=dtype, param_dtype=param_dtype,
                                         rngs=rngs)
    self.gru_rel_pos_const = nnx.Param(jnp.ones((1, num_heads, 1, 1), param_dtype))

  def __call__(self, x_BxTxD, bias_1xNxTxT):
    x_BxNxTxZ = einops.rearrange(x_BxTxD, 'b t (n z) -> b n t z', n=self.num_heads)
    proj = einops.reduce(self.gru_rel_pos_linear(x_BxNxTxZ), 'b n t (two four) -> b n t two',
                         'sum', two=2)
    gate_a, gate_b = jnp.split(jax.nn.sigmoid(proj), 2, axis=-1)
    gate_BxNxTx1 = gate_a * (gate_b * self.gru_rel_pos_const[...] - 1.0) + 2.0
    return gate_BxNxTx1 * bias_1xNxTxT


class FeedForward(nnx.Module):
  def __init__(self, dim: int, intermediate: int, *, dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.intermediate_dense = nnx.Linear(dim, intermediate, dtype=dtype,
                                         param_dtype=param_dtype, rngs=rngs)
    self.output_dense = nnx.Linear(intermediate, dim, dtype=dtype, param_dtype=param_dtype,
                                   rngs=rngs)

  def __call__(self, x_BxTxD):
    return self.output_dense(jax.nn.gelu(self.intermediate_dense(x_BxTxD), approximate=False))


class Layer(nnx.Module):
  """One Transformer block. Post-LN (base): x = LN(x + attn(x)); x = LN'(x + ff(x)). Pre-LN
  ("stable layer norm", large): x = x + attn(LN(x)); x = x + ff(LN'(x))."""

  def __init__(self, dim: int, num_heads: int, intermediate: int, *, pre_ln: bool, eps: float,
               gated_bias: bool, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.pre_ln = pre_ln
    self.attention = Attention(dim, num_heads, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate = (GatedPositionBias(num_heads, dim // num_heads, dtype=dtype,
                                   param_dtype=param_dtype, rngs=rngs) if gated_bias else None)
    self.layer_norm = _layer_norm(dim, eps, dtype, param_dtype, rngs)
    self.feed_forward = FeedForward(dim, intermediate, dtype=dtype, param_dtype=param_dtype,
                                    rngs=rngs)
    self.final_layer_norm = _layer_norm(dim, eps, dtype, param_dtype, rngs)

  def __call__(self, x_BxTxD, mask_BxT=None, bias_1xNxTxT=None):
    y = self.layer_norm(x_BxTxD) if self.pre_ln else x_BxTxD
    bias = None if self.gate is None else self.gate(y, bias_1xNxTxT)
    x_BxTxD = x_BxTxD + self.attention(y, mask_BxT, bias)
    if self.pre_ln:
      return x_BxTxD + self.feed_forward(self.final_layer_norm(x_BxTxD))
    x_BxTxD = self.layer_norm(x_BxTxD)
    return self.final_layer_norm(x_BxTxD + self.feed_forward(x_BxTxD))
