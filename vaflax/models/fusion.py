"""Audio-visual temporal fusion, the last stage of Zhang et al. 2023 (ABAW5).

Per video frame: ViT features of the face crop (the encoder of a VA-fine-tuned `vit.Model`;
configs/mae_va.py freezes it with config.frozen) and, with `use_audio`, audio-encoder features of the waveform of that frame.
They are concatenated, projected to `width`, given a learned temporal position embedding and
passed through a Transformer encoder over the window; a per-frame head gives VA.

`{'frames': (B,T,H,W,3), 'audio': (B,T,S)} -> {'va': (B,T,2), 'features': (B,T,width)}`.
With `audio_kind='speech'` the audio features are a learned layer-weighted sum of a frozen
pretrained speech encoder's states per frame (models/audio.SpeechFeatures), read from
batch['speech'] (B, T, I, D), which the data pipeline fills from the per-clip cache
(vaflax/speech_features.py).
`use_audio=False` is the video-only baseline on the same code path (the audio branch is not
built and `batch['audio']` is not read).

The paper's temporal model has 6 layers (the seed); the authors' released code uses 4 layers of
width 128, which is the default here.
"""

from __future__ import annotations

from typing import Any

import einops
import jax.numpy as jnp
from flax import nnx

from vaflax.models import audio as audio_lib
from vaflax.models import heads, vit


class Model(nnx.Module):

  def __init__(
      self,
      *,
      visual: dict | None = None,
      audio: dict | None = None,
      use_audio: bool = True,
      audio_kind: str = 'logmel',
      speech: dict | None = None,
      width: int = 128,
      num_layers: int = 4,
      num_heads: int = 4,
      mlp_dim: int | None = None,
      max_len: int = 256,
      drop_path: float = 0.0,
      visual_dropout: float = 0.0,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      attention_impl: str | None = None,
      rngs: nnx.Rngs,
  ):
    """`visual`: vit.Encoder kwargs (variant, image_size, pool_type, remat, ...);
    `audio`: audio.AudioEncoder kwargs (audio_kind='logmel', the default); with
    audio_kind='speech', `speech`: audio.SpeechFeatures kwargs (num_states, dim; `encoder` for the
    uncached path) over a frozen pretrained speech encoder, whose cached per-frame states come in
    batch['speech'] (B, T, I, D) (or, uncached, batch['audio']). The rest configure the temporal
    Transformer.
    `visual_dropout` (with audio only): in training, the visual features of a whole window are
    zeroed with this probability (modality dropout), so the model cannot ignore the audio
    when the visual features fit the training identities better than they generalise."""
    dtype, param_dtype = vit.as_dtype(dtype), vit.as_dtype(param_dtype)
    visual = dict(visual or {})
    visual.setdefault('dtype', dtype)
    visual.setdefault('param_dtype', param_dtype)
    visual.setdefault('attention_impl', attention_impl)
    self.visual = vit.Encoder(rngs=rngs, **visual)
    self.use_audio = bool(use_audio)
    in_dim = self.visual.width
    if self.use_audio:
      if audio_kind not in ('logmel', 'speech'):
        raise ValueError(f"fusion.Model: audio_kind must be 'logmel' or 'speech', got {audio_kind!r}")
      kwargs = dict((audio if audio_kind == 'logmel' else speech) or {})
      kwargs.setdefault('dtype', dtype)
      kwargs.setdefault('param_dtype', param_dtype)
      if audio_kind == 'logmel':
        self.audio = audio_lib.AudioEncoder(rngs=rngs, **kwargs)
      else:
        kwargs.setdefault('width', (audio or {}).get('width', 128))
        self.audio = audio_lib.SpeechFeatures(rngs=rngs, **kwargs)
      in_dim += self.audio.width
    if not 0.0 <= visual_dropout < 1.0:
      raise ValueError(f'fusion.Model: visual_dropout must be in [0, 1), got {visual_dropout}')
    # Dropout of whole windows: the mask broadcasts over frames and channels.
    self.visual_dropout = (nnx.Dropout(visual_dropout, broadcast_dims=(1, 2), rngs=rngs)
                           if self.use_audio and visual_dropout > 0 else None)
    self.max_len = max_len
    self.proj = nnx.Linear(
        in_dim, width, dtype=dtype, param_dtype=param_dtype,
        kernel_init=nnx.with_partitioning(nnx.initializers.xavier_uniform(), (None, 'embed')),
        rngs=rngs)
    self.temporal_pos_embed = nnx.Param(
        nnx.with_partitioning(nnx.initializers.normal(0.02), (None, None, 'embed'))(
            rngs.params(), (1, max_len, width), param_dtype))
    self.temporal = vit.Transformer(width, num_layers, num_heads, mlp_dim or 4 * width,
                                    drop_path=drop_path, dtype=dtype, param_dtype=param_dtype,
                                    attention_impl=attention_impl, rngs=rngs)
    self.head = heads.VAHead(width, out_init=nnx.initializers.zeros_init(),
                             param_dtype=param_dtype, rngs=rngs)

  def visual_features(self, frames_BxTxHxWxC):
    """Pooled ViT features per frame: (B, T, D)."""
    b = frames_BxTxHxWxC.shape[0]
    images = einops.rearrange(frames_BxTxHxWxC, 'b t h w c -> (b t) h w c')
    _, pooled = self.visual(images)
    feats_BxTxD = einops.rearrange(pooled, '(b t) d -> b t d', b=b)
    return feats_BxTxD

  def _speech_states(self, batch: dict, b: int, t: int):
    if self.audio.encoder is not None:
      if 'audio' not in batch:
        raise KeyError(f"fusion.Model (uncached speech) needs batch['audio'] (B, T, S); got "
                       f'{sorted(batch)}')
      return self.audio.encode(batch['audio'])
    if 'speech' not in batch:
      raise KeyError("fusion.Model(audio_kind='speech') needs batch['speech'] (B, T, I, D), the "
                     'cached speech-encoder states (config.input.speech_encoder); got '
                     f'{sorted(batch)}')
    s = batch['speech']
    if s.ndim != 4 or s.shape[:2] != (b, t):
      raise ValueError(f"fusion.Model: batch['speech'] must be (B={b}, T={t}, I, D), got {s.shape}")
    return s

  def __call__(self, batch: dict) -> dict:
    if 'frames' not in batch:
      raise KeyError(f"fusion.Model needs batch['frames'] (B, T, H, W, 3); got {sorted(batch)}")
    frames = batch['frames']
    if frames.ndim != 5:
      raise ValueError(f"fusion.Model: batch['frames'] must be (B, T, H, W, 3), got {frames.shape}")
    b, t = frames.shape[:2]
    if t > self.max_len:
      raise ValueError(f'fusion.Model: window of {t} frames exceeds max_len={self.max_len}')
    feats = [self.visual_features(frames)]
    if self.visual_dropout is not None:
      feats[0] = self.visual_dropout(feats[0])
    if self.use_audio and isinstance(self.audio, audio_lib.SpeechFeatures):
      feats.append(self.audio(self._speech_states(batch, b, t)))
    elif self.use_audio:
      if 'audio' not in batch:
        raise KeyError("fusion.Model(use_audio=True) needs batch['audio'] (B, T, S); got "
                       f'{sorted(batch)}')
      a = batch['audio']
      if a.ndim != 3 or a.shape[:2] != (b, t):
        raise ValueError(f"fusion.Model: batch['audio'] must be (B={b}, T={t}, S), got {a.shape}")
      feats.append(self.audio(a))
    x_BxTxC = jnp.concatenate(feats, axis=-1)  # promotes to the widest dtype
    x_BxTxD = self.proj(x_BxTxC)
    x_BxTxD = x_BxTxD + self.temporal_pos_embed[:, :t].astype(x_BxTxD.dtype)
    h_BxTxD = self.temporal(x_BxTxD).astype(jnp.float32)
    return dict(self.head(h_BxTxD), features=h_BxTxD)

