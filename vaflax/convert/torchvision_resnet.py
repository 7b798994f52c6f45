"""torchvision ResNet-18/34/50 (v1.5: the bottleneck's stride on its 3x3 conv) -> models/resnet.py.

torchvision's layout is vaflax's: 7x7/2 stem conv without bias, BatchNorm (eps 1e-5), ReLU, 3x3/2
max pool with padding 1, four stages whose first block downsamples through a 1x1 conv + BN,
global average pool. `fc` (the ImageNet classifier) is dropped: the vaflax VA head is new. The
run evaluates as torchvision's models were: the crop resized to 224 px (no centre crop),
value_range(0, 1) then the ImageNet mean/std (presets.converted_resnet).
"""

from __future__ import annotations

import re

from vaflax import presets
from vaflax.convert import layers
from vaflax.models import resnet

LICENCE = ('torchvision (pytorch/vision) code and its ImageNet weights: BSD-3-Clause. Check the '
           'licence of the data the weights were trained on for your use.')
NEW = ('head',)  # target prefixes that the conversion leaves at their initial value
IGNORED = re.compile(r'fc\.')  # source keys that are dropped on purpose


def _blocks(src) -> list[int]:
  """Number of blocks of each of the four stages, from the keys."""
  counts = []
  for layer in range(1, 5):
    ids = {int(m.group(1)) for k in src if (m := re.match(rf'layer{layer}\.(\d+)\.', k))}
    counts.append(len(ids))
  return counts


def make_config(src, variant: str = ''):
  counts = _blocks(src)
  kind = 'bottleneck' if 'layer1.0.conv3.weight' in src else 'basic'
  depth = next((d for d, v in resnet.STAGES.items() if v == (kind, tuple(counts))), None)
  if depth is None:
    raise ValueError(f'torchvision ResNet with {kind} blocks {counts}: vaflax has ResNet-'
                     f'{"/".join(map(str, resnet.STAGES))} only')
  if variant and int(variant) != depth:
    raise ValueError(f'--variant={variant} but the file holds a ResNet-{depth}')
  return presets.converted_resnet(depth, int(src['conv1.weight'].shape[0]))


def map_weights(src, config) -> layers.Mapping:
  m = layers.Mapping(src)
  m.conv('conv1', 'backbone/stem_conv')
  m.batch_norm('bn1', 'backbone/stem_bn')
  k = 0
  for layer, n in enumerate(_blocks(src), start=1):
    for i in range(n):
      t, v = f'layer{layer}.{i}', f'backbone/blocks/{k}'
      for j in (1, 2, 3) if f'{t}.conv3.weight' in src else (1, 2):
        m.conv(f'{t}.conv{j}', f'{v}/conv{j}')
        m.batch_norm(f'{t}.bn{j}', f'{v}/bn{j}')
      if f'{t}.downsample.0.weight' in src:
        m.conv(f'{t}.downsample.0', f'{v}/down_conv')
        m.batch_norm(f'{t}.downsample.1', f'{v}/down_bn')
      k += 1
  return m
