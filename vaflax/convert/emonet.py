"""face-analysis/emonet's EmoNet (Toisoul et al. 2021; `emonet_5.pth`, `emonet_8.pth`) -> the
'emonet' head variant of models/fan.py, exactly (configs/emofan_va.py:arch=emonet).

EmoNet is the FAN trunk (convert/fan.py's layout, `map_trunk`, 2 stacks, max pooling) plus
`conv1x1_input_emo_2` (1x1 conv with bias over the stem and every stack's attended features),
`emo_net_2` (ConvBlock, MaxPool2d(2, 2)) x 4 (the pools are parameterless: the ConvBlocks are the
even indices), `avg_pool_2` and `emo_fc_2` (Linear 0, BatchNorm1d 1, ReLU, Linear 3). The last
Linear's outputs are the expression logits first, then valence and arousal; vaflax's VAHead puts
valence/arousal first, so its rows are reordered. Nothing is new and nothing is ignored.

Input: RGB in [0, 1], the face crop resized to 256x256 (EmoNet's demo: cv2.resize, /255, no
mean/std), no flip averaging: the run's config says so (presets.converted_fan). EmoNet's published
numbers average each image with its mirror: `eval.flip_tta=True` (docs/pretrained.md).
"""

from __future__ import annotations

import re

import numpy as np

from vaflax import presets
from vaflax.convert import fan, layers

LICENCE = ('EmoNet code and pretrained weights (face-analysis/emonet): CC BY-NC-ND 4.0 '
           '(non-commercial use only, no derivatives may be distributed). Converting them for '
           'your own research use is your responsibility under that licence; do not redistribute '
           'the converted run.')
NEW = ()
IGNORED = re.compile(r'$^')


def _head_blocks(src) -> list[int]:
  return sorted({int(m.group(1)) for k in src if (m := re.match(r'emo_net_2\.(\d+)\.', k))})


def make_config(src, variant: str = ''):
  if 'emo_fc_2.3.weight' not in src:
    raise KeyError('emo_fc_2.3.weight')
  n_out = int(src['emo_fc_2.3.weight'].shape[0])
  if variant and int(variant) != n_out - 2:
    raise ValueError(f'--variant={variant} but the file\'s head has {n_out - 2} expressions')
  blocks = len(_head_blocks(src))
  model = dict(fan.trunk_fields(src), pool='max', num_emotions=n_out - 2, head_blocks=blocks,
               head_width=int(src['conv1x1_input_emo_2.weight'].shape[0]))
  # EmoNet's AvgPool2d(4) after the blocks expects a 4x4 map: 256 px for its 4 blocks.
  return presets.converted_fan(model, image_size=16 * 2**blocks, emonet=True)


def map_weights(src, config) -> layers.Mapping:
  m = layers.Mapping(src)
  fan.map_trunk(m, fan.trunk_fields(src))
  m.conv('conv1x1_input_emo_2', 'head_in', bias=True)
  for k, idx in enumerate(_head_blocks(src)):
    fan.conv_block(m, f'emo_net_2.{idx}', f'head_blocks/{k}')
  m.linear('emo_fc_2.0', 'head/hidden')
  m.batch_norm('emo_fc_2.1', 'head/hidden_norm')
  # (expressions..., valence, arousal) -> (valence, arousal, expressions...)
  n = int(src['emo_fc_2.3.weight'].shape[0])
  order = np.r_[n - 2, n - 1, 0:n - 2]
  m.copy('emo_fc_2.3.weight', 'head/out/kernel', lambda w: layers.linear(w[order]))
  m.copy('emo_fc_2.3.bias', 'head/out/bias', lambda b: b[order])
  return m
