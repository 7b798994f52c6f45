"""facebookresearch/mae checkpoints and timm-named ViTs -> models/vit.py (the MAE recipe's ViT).

MAE writes `{'model': state_dict}` with timm's ViT names (`patch_embed.proj`, `cls_token`,
`pos_embed`, `blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`, `norm`) plus, in
the pretraining checkpoints, the decoder (`decoder_*`, `mask_token`), which is dropped. Both use
LayerNorm eps 1e-6 and exact GELU, as vit.py does. The position embedding is taken from the file
(posemb='learn'): MAE's fixed sin-cos table puts the column in the first half of the channels,
vit.py's own 'sincos2d' the row, so recomputing it would not give the same model. The fused
`qkv` projection is split into vit.py's query/key/value (heads contiguous in both). The run pools
the CLS token after the final norm (`pool_type='cls'`); the VA head is new. The run evaluates at
the file's input side (224 for ViT-B/16), the crop resized (no centre crop), ImageNet's mean/std
(presets.converted_vit).
"""

from __future__ import annotations

import math
import re

import numpy as np

from vaflax import presets
from vaflax.convert import layers
from vaflax.models import vit

LICENCE = ('facebookresearch/mae code and released weights: CC BY-NC 4.0 (non-commercial use '
           'only). timm weights: see the model card of the file you downloaded.')
NEW = ('head',)
IGNORED = re.compile(r'(decoder_|mask_token$|head\.|fc_norm\.)')


def _depth(src) -> int:
  return len({int(m.group(1)) for k in src if (m := re.match(r'blocks\.(\d+)\.', k))})


def encoder_fields(src, variant: str = '') -> dict:
  """vit.Encoder keyword arguments for the ViT in `src` (a --variant 'B/16' names the heads,
  which the weights do not show; by default the standard variant of the same width)."""
  for key in ('patch_embed.proj.weight', 'cls_token', 'pos_embed'):
    if key not in src:
      raise KeyError(key)
  width, _, patch, _ = src['patch_embed.proj.weight'].shape
  depth = _depth(src)
  mlp_dim = int(src['blocks.0.mlp.fc1.weight'].shape[0])
  grid = math.isqrt(src['pos_embed'].shape[1] - 1)
  if grid * grid != src['pos_embed'].shape[1] - 1:
    raise ValueError(f'pos_embed of shape {src["pos_embed"].shape}: not one CLS token + a square '
                     'grid of patches')
  if variant:
    name = variant.split('/')[0]
  else:
    name = next((n for n, v in vit.VARIANTS.items() if v[0] == width), None)
    if name is None:
      raise ValueError(f'a ViT of width {width}: no standard variant of that width; pass '
                       '--variant=NAME/PATCH to give the number of heads')
  heads = vit.VARIANTS[name][2]
  return dict(variant=f'{name}/{patch}', width=int(width), depth=depth, num_heads=heads,
              mlp_dim=mlp_dim, patch_size=int(patch), image_size=grid * patch, posemb='learn',
              pool_type='cls')


def make_config(src, variant: str = ''):
  return presets.converted_vit(encoder_fields(src, variant))


def map_weights(src, config) -> layers.Mapping:
  m, e = layers.Mapping(src), 'encoder'

  def patch_kernel(w_DxCxPxP):
    d = w_DxCxPxP.shape[0]  # vit.patchify orders a patch's pixels (py, px, c)
    return np.transpose(w_DxCxPxP, (2, 3, 1, 0)).reshape(-1, d)

  m.copy('patch_embed.proj.weight', f'{e}/patch_embed/kernel', patch_kernel)
  m.copy('patch_embed.proj.bias', f'{e}/patch_embed/bias')
  m.copy('cls_token', f'{e}/cls_token')
  m.copy('pos_embed', f'{e}/pos_embed')
  for i in range(_depth(src)):
    t, v = f'blocks.{i}', f'{e}/transformer/blocks/{i}'
    m.layer_norm(f'{t}.norm1', f'{v}/norm1')
    m.layer_norm(f'{t}.norm2', f'{v}/norm2')
    qkv = f'{t}.attn.qkv'
    w_3DxD = m.take(f'{qkv}.weight')
    # timm's qkv_bias=False: zero biases compute the same.
    b_3D = m.take(f'{qkv}.bias') if f'{qkv}.bias' in src else np.zeros(len(w_3DxD), w_3DxD.dtype)
    for name, w, b in zip(('query', 'key', 'value'), np.split(w_3DxD, 3), np.split(b_3D, 3), strict=True):
      m.put(f'{v}/attn/{name}/kernel', layers.linear(w), f'{qkv}.weight')
      m.put(f'{v}/attn/{name}/bias', b, f'{qkv}.bias')
    m.linear(f'{t}.attn.proj', f'{v}/attn/out')
    m.linear(f'{t}.mlp.fc1', f'{v}/mlp/fc1')
    m.linear(f'{t}.mlp.fc2', f'{v}/mlp/fc2')
  m.layer_norm('norm', f'{e}/transformer/norm')
  return m
