"""face-alignment's 2D FAN (Bulat & Tzimiropoulos 2017; the `face_alignment` package) -> the FAN
trunk of models/fan.py, inside an EmoFAN whose emotion head is new (EmoNet's recipe: a pretrained
face-alignment network, frozen, under a trained emotion head; configs/emofan_va.py:pretrained=).

The released layout, shared with EmoNet (convert/emonet.py, which reuses `map_trunk`): `conv1`
(7x7/2 with bias), `bn1`, ConvBlocks `conv2`-`conv4` (bn1/conv1, bn2/conv2, bn3/conv3, and
`downsample.0` BN + `downsample.2` 1x1 conv when the width changes), then per stack i: the
hourglass `m<i>` with levels `b1_<l>` (skip), `b2_<l>` (after the pooling), `b2_plus_1` (the
innermost block) and `b3_<l>` (before the upsampling), level `depth` outermost; `top_m_<i>`,
`conv_last<i>` + `bn_end<i>`, the heatmap conv `l<i>`, and between stacks `bl<i>` (features) and
`al<i>` (heatmaps) back into the next stack.

The weights do not tell the pooling: face-alignment used 2x2 max pooling up to its 1.2 release
and average pooling since 1.3 (whose models are TorchScript archives; the older ones pickled
`.pth.tar` files). --variant=max|avg says which; by default avg for a TorchScript archive, max
otherwise. The input is RGB in [0, 1] (face-alignment divides by 255, no mean/std), 256 px.
"""

from __future__ import annotations

import re

from vaflax import presets
from vaflax.convert import layers

LICENCE = ('face-alignment (1adrianb/face-alignment) code: BSD-3-Clause. Its pretrained FAN '
           'weights are distributed by the authors for research use; check the terms of the '
           'release you downloaded.')
NEW = ('head', 'head_in', 'head_blocks')  # the emotion head is trained on top (EmoNet's recipe)
IGNORED = re.compile(r'$^')  # a FAN file has nothing else: every tensor must be used


def trunk_fields(src) -> dict:
  """models/fan.py FAN fields of the trunk in `src` (the released names)."""
  stacks = len({int(m.group(1)) for k in src if (m := re.match(r'm(\d+)\.', k))})
  depth = max(int(m.group(1)) for k in src if (m := re.match(r'm0\.b1_(\d+)\.', k)))
  return dict(num_stacks=stacks, hourglass_depth=depth, width=int(src['conv_last0.weight'].shape[0]),
              num_landmarks=int(src['l0.weight'].shape[0]))


def conv_block(m: layers.Mapping, t: str, v: str) -> None:
  for j in (1, 2, 3):
    m.batch_norm(f'{t}.bn{j}', f'{v}/bn{j}')
    m.conv(f'{t}.conv{j}', f'{v}/conv{j}')
  if f'{t}.downsample.0.weight' in m.src:
    m.batch_norm(f'{t}.downsample.0', f'{v}/proj_bn')
    m.conv(f'{t}.downsample.2', f'{v}/proj')


def map_trunk(m: layers.Mapping, fields: dict) -> None:
  m.conv('conv1', 'fan/stem_conv', bias=True)
  m.batch_norm('bn1', 'fan/stem_bn')
  for j in (2, 3, 4):
    conv_block(m, f'conv{j}', f'fan/stem{j}')
  depth = fields['hourglass_depth']
  for i in range(fields['num_stacks']):
    v = f'fan/hourglass/{i}'
    for level in range(depth, 0, -1):  # models/fan.py nests the next level under `inner`
      conv_block(m, f'm{i}.b1_{level}', f'{v}/up')
      conv_block(m, f'm{i}.b2_{level}', f'{v}/low1')
      conv_block(m, f'm{i}.b3_{level}', f'{v}/low3')
      v = f'{v}/inner'
    conv_block(m, f'm{i}.b2_plus_1', v)
    conv_block(m, f'top_m_{i}', f'fan/top/{i}')
    m.conv(f'conv_last{i}', f'fan/last_conv/{i}', bias=True)
    m.batch_norm(f'bn_end{i}', f'fan/last_bn/{i}')
    m.conv(f'l{i}', f'fan/heatmap/{i}', bias=True)
    if i < fields['num_stacks'] - 1:
      m.conv(f'bl{i}', f'fan/remap_feat/{i}', bias=True)
      m.conv(f'al{i}', f'fan/remap_hm/{i}', bias=True)


def make_config(src, variant: str = ''):
  pool = variant or ('avg' if getattr(src, 'kind', '') == 'torchscript' else 'max')
  if pool not in ('avg', 'max'):
    raise ValueError(f'--variant={variant}: a FAN file takes --variant=max (face-alignment < 1.3) '
                     'or avg (1.3+)')
  return presets.converted_fan(dict(trunk_fields(src), pool=pool), emonet=False)


def map_weights(src, config) -> layers.Mapping:
  m = layers.Mapping(src)
  map_trunk(m, trunk_fields(src))
  return m
