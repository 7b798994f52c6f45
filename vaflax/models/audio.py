"""Audio front end (log-mel in jnp) and a small per-video-frame audio encoder (the audio branch
of models/fusion.py).

Alignment with video: the input is `audio` (B, T, S), the waveform cut into the S = sample_rate /
fps samples that belong to each of the T video frames. The front end treats it as one contiguous
signal (B, T*S) and computes F = `frames_per_video_frame` STFT frames per video frame, frame
(t, f) centred on sample t*S + floor(f*S/F) (librosa's center=True convention, zero padding of
n_fft//2 at both ends of the window). So every mel frame belongs to exactly one video frame even
when S is not a multiple of F, and the output keeps that grouping: (B, T, F, M).

The encoder flattens the F x M log-mels of each video frame, projects them and runs residual 1-D
convolutions over time, giving per-video-frame features (B, T, D).
"""

from __future__ import annotations

import inspect
from typing import Any

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vaflax.models import speech

# --- Front end --------------------------------------------------------------------------------


def hz_to_mel(f, scale: str = 'htk'):
  f = np.asarray(f, np.float64)
  if scale == 'htk':
    return 2595.0 * np.log10(1.0 + f / 700.0)
  if scale == 'slaney':  # linear below 1 kHz, logarithmic above (Slaney's Auditory Toolbox)
    lin = 3.0 * f / 200.0
    log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, lin)
  raise ValueError(f"mel scale must be 'htk' or 'slaney', got {scale!r}")


def mel_to_hz(m, scale: str = 'htk'):
  m = np.asarray(m, np.float64)
  if scale == 'htk':
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
  if scale == 'slaney':
    lin = 200.0 * m / 3.0
    log = 1000.0 * np.exp((m - 15.0) * (np.log(6.4) / 27.0))
    return np.where(m >= 15.0, log, lin)
  raise ValueError(f"mel scale must be 'htk' or 'slaney', got {scale!r}")


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, *, fmin: float = 0.0,
                   fmax: float | None = None, scale: str = 'htk', norm: str | None = None):
  """Triangular mel filters, (n_fft // 2 + 1, n_mels) float32, built in NumPy.

  Triangles are built in Hz between mel-spaced edges; norm='slaney' scales each to unit area.
  """
  fmax = sample_rate / 2.0 if fmax is None else float(fmax)
  if not 0.0 <= fmin < fmax <= sample_rate / 2.0:
    raise ValueError(f'mel_filterbank: need 0 <= fmin < fmax <= sr/2, got {fmin}, {fmax}')
  fft_hz = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
  edges_hz = mel_to_hz(np.linspace(hz_to_mel(fmin, scale), hz_to_mel(fmax, scale), n_mels + 2),
                       scale)
  lo, mid, hi = edges_hz[:-2], edges_hz[1:-1], edges_hz[2:]
  up = (fft_hz[:, None] - lo[None]) / (mid - lo)[None]
  down = (hi[None] - fft_hz[:, None]) / (hi - mid)[None]
  fb = np.maximum(0.0, np.minimum(up, down))
  if norm == 'slaney':
    fb = fb * (2.0 / (hi - lo))[None]
  elif norm is not None:
    raise ValueError(f"mel_filterbank: norm must be None or 'slaney', got {norm!r}")
  return fb.astype(np.float32)


def frame_centres(num_video_frames: int, samples_per_frame: int, frames_per_video_frame: int):
  """Sample index of the centre of STFT frame (t, f): t*S + floor(f*S/F), shape (T, F)."""
  t = np.arange(num_video_frames)[:, None]
  f = np.arange(frames_per_video_frame)[None]
  return t * samples_per_frame + (f * samples_per_frame) // frames_per_video_frame


def log_mel(
    audio_BxTxS,
    *,
    sample_rate: int = 16_000,
    n_fft: int = 512,
    n_mels: int = 64,
    frames_per_video_frame: int = 4,
    fmin: float = 0.0,
    fmax: float | None = None,
    mel_scale: str = 'htk',
    mel_norm: str | None = None,
    log_floor: float = 1e-6,
):
  """Log-mel power spectrogram aligned with video frames: (B, T, S) -> (B, T, F, M).

  Periodic Hann window of n_fft samples, power |rfft|^2, mel filters, log(max(mel, floor)).
  """
  if audio_BxTxS.ndim != 3:
    raise ValueError(f'log_mel expects audio (B, T, S), got shape {audio_BxTxS.shape}')
  b, t, s = audio_BxTxS.shape
  x_BxTS = jnp.reshape(audio_BxTxS.astype(jnp.float32), (b, t * s))
  half = n_fft // 2
  x_BxTS = jnp.pad(x_BxTS, ((0, 0), (half, n_fft - half)))
  # Frame (t, f) starts at its centre in padded coordinates (centre + half - half).
  idx_TxFxJ = frame_centres(t, s, frames_per_video_frame)[..., None] + np.arange(n_fft)
  frames_BxTxFxJ = x_BxTS[:, idx_TxFxJ]
  # Periodic Hann (scipy.signal.get_window('hann', n)): the STFT-standard window.
  window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
  spec = jnp.fft.rfft(frames_BxTxFxJ * jnp.asarray(window, jnp.float32), axis=-1)
  power_BxTxFxU = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2
  fb_UxM = jnp.asarray(mel_filterbank(sample_rate, n_fft, n_mels, fmin=fmin, fmax=fmax,
                                      scale=mel_scale, norm=mel_norm))
  mel = jnp.einsum('btfk,km->btfm', power_BxTxFxU, fb_UxM,
                   precision=jax.lax.Precision.HIGHEST)
  return jnp.log(jnp.maximum(mel, log_floor))


# --- Encoder ----------------------------------------------------------------------------------


class AudioEncoder(nnx.Module):
  """Log-mel -> BatchNorm per mel bin -> per-frame Linear -> residual temporal convs -> (B,T,D).

  `frontend`: the keyword arguments of `log_mel` (sample_rate, n_fft, n_mels, ...), checked
  against its signature and filled with its defaults here."""

  def __init__(self, *, width: int = 128, num_layers: int = 2, kernel_size: int = 3,
               dropout: float = 0.0, dtype: Any = None, param_dtype: Any = jnp.float32,
               rngs: nnx.Rngs, **frontend):
    try:
      bound = inspect.signature(log_mel).bind(None, **frontend)
    except TypeError as e:
      raise TypeError(f'AudioEncoder: {e}') from None
    bound.apply_defaults()
    self.frontend = f = {k: v for k, v in bound.arguments.items() if k != 'audio_BxTxS'}
    mel_filterbank(f['sample_rate'], f['n_fft'], f['n_mels'], fmin=f['fmin'], fmax=f['fmax'],
                   scale=f['mel_scale'], norm=f['mel_norm'])  # validates them at construction
    n_mels, frames_per_video_frame = f['n_mels'], f['frames_per_video_frame']
    dtype = None if dtype is None else jnp.dtype(dtype)
    param_dtype = jnp.dtype(param_dtype)
    self.width = width
    # Batch statistics per mel bin instead of a fixed offset: learns the level and spread of the
    # log-mels without removing absolute loudness within a window (as PANNs' bn0, Kong et al.
    # 2020), which matters because loudness carries arousal.
    self.input_norm = nnx.BatchNorm(n_mels, param_dtype=param_dtype, rngs=rngs)
    self.proj = nnx.Linear(
        frames_per_video_frame * n_mels, width, dtype=dtype, param_dtype=param_dtype,
        kernel_init=nnx.with_partitioning(nnx.initializers.xavier_uniform(), (None, 'embed')),
        rngs=rngs)
    self.norms = nnx.List([
        nnx.LayerNorm(width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        for _ in range(num_layers)
    ])
    self.convs = nnx.List([
        nnx.Conv(width, width, kernel_size=(kernel_size,), padding='SAME', dtype=dtype,
                 param_dtype=param_dtype,
                 kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(),
                                                   (None, 'conv_in', 'conv_out')),
                 rngs=rngs)
        for _ in range(num_layers)
    ])
    self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
    self.out_norm = nnx.LayerNorm(width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, audio_BxTxS):
    mel_BxTxFxM = log_mel(audio_BxTxS, **self.frontend)
    mel_BxTxFxM = self.input_norm(mel_BxTxFxM)
    x_BxTxD = jax.nn.gelu(self.proj(einops.rearrange(mel_BxTxFxM, 'b t f m -> b t (f m)')))
    for norm, conv in zip(self.norms, self.convs, strict=True):
      y = conv(norm(x_BxTxD))
      if self.dropout is not None:
        y = self.dropout(y)
      x_BxTxD = x_BxTxD + jax.nn.gelu(y)
    return self.out_norm(x_BxTxD)



# --- Pretrained speech encoder features ---------------------------------------------------------


class SpeechFeatures(nnx.Module):
  """The audio branch on a frozen speech encoder (wav2vec 2.0 / HuBERT / WavLM, models/speech.py):
  its I hidden states per video frame -> a learned softmax-weighted sum over the layers (the
  SUPERB recipe, Yang et al. 2021; each state LayerNorm-ed without parameters first, as s3prl's
  featurizer with normalize=True, so that no layer wins by scale) -> Linear -> LayerNorm.

  Input: `feats_BxTxIxD`, the states already averaged onto the video frames (read from the
  per-clip cache, vaflax/speech_features.py); or, with `encoder` (speech.Model kwargs), the
  window's audio (B, T, S), run through the encoder here at every step (the uncached path:
  its context is the window, the cache's the window-long chunk of the clip)."""

  def __init__(self, num_states: int, dim: int, *, width: int = 128, encoder: dict | None = None,
               dtype: Any = None, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.width = width
    self.layer_logits = nnx.Param(jnp.zeros((num_states,), param_dtype))
    self.proj = nnx.Linear(dim, width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.out_norm = nnx.LayerNorm(width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.encoder = speech.Model(**dict(encoder), rngs=rngs) if encoder else None
    if self.encoder is not None and self.encoder.num_states != num_states:
      raise ValueError(f'SpeechFeatures: num_states={num_states} but the encoder gives '
                       f'{self.encoder.num_states}')

  def layer_weights(self):
    return jax.nn.softmax(self.layer_logits[...].astype(jnp.float32))

  def encode(self, audio_BxTxS):
    """(B, T, I, D) per-video-frame states of a window's audio (the encoder frozen)."""
    b, t, s = audio_BxTxS.shape
    wave = speech.normalize_wave(audio_BxTxS.reshape(b, t * s))
    hidden_IxBxTxD = jax.lax.stop_gradient(self.encoder(wave))
    return jnp.transpose(self.encoder.pool_to_video(hidden_IxBxTxD, t, s), (1, 2, 0, 3))

  def __call__(self, feats_BxTxIxD):
    x = feats_BxTxIxD.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    x = (x - mean) * jax.lax.rsqrt(jnp.square(x - mean).mean(-1, keepdims=True) + 1e-5)
    x_BxTxD = jnp.einsum('btid,i->btd', x, self.layer_weights())
    return self.out_norm(self.proj(x_BxTxD))
