"""PyTorch definitions shared by the parity fixtures (tests/fixtures/make_torch_fixtures.py) and
the PyTorch peers of the GPU suite (benchmarks/torch_peers.py). PyTorch is never a vaflax
dependency: only those two scripts import this module.

The ResNet and the MAE ViT are written from the public definitions (torchvision
`models/resnet.py`, facebookresearch/mae `models_mae.py` with timm's `vision_transformer.py`
blocks) with the same module and parameter names, so a real checkpoint's state_dict keys are
theirs. The FAN/EmoFAN follows vaflax/models/fan.py (itself EmoNet's layout), for speed peers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# --- torchvision ResNet (models/resnet.py names: conv1, bn1, layerN.i.*, downsample.0/1, fc) ---


def conv3x3(cin, cout, stride=1):
  return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = conv3x3(cin, planes, stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = conv3x3(planes, planes)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
  expansion = 4  # v1.5: the stride is on conv2 (3x3)

  def __init__(self, cin, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = conv3x3(planes, planes, stride)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = downsample

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
  def __init__(self, block, layers, width=64, num_classes=1000):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    cin = width
    for i, n in enumerate(layers):
      planes, stride = width * 2**i, (1 if i == 0 else 2)
      blocks = []
      for j in range(n):
        down = None
        if j == 0 and (stride != 1 or cin != planes * block.expansion):
          down = nn.Sequential(nn.Conv2d(cin, planes * block.expansion, 1, stride, bias=False),
                               nn.BatchNorm2d(planes * block.expansion))
        blocks.append(block(cin, planes, stride if j == 0 else 1, down))
        cin = planes * block.expansion
      setattr(self, f'layer{i + 1}', nn.Sequential(*blocks))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(cin, num_classes)

  def features(self, x):
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    for i in range(4):
      x = getattr(self, f'layer{i + 1}')(x)
    return torch.flatten(self.avgpool(x), 1)

  def forward(self, x):
    return self.fc(self.features(x))


RESNETS = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]),
           50: (Bottleneck, [3, 4, 6, 3])}


# --- MAE ViT (models_mae.py names; timm Block: norm1, attn.qkv, attn.proj, norm2, mlp.fc1/fc2) ---


class PatchEmbed(nn.Module):
  def __init__(self, patch, dim):
    super().__init__()
    self.proj = nn.Conv2d(3, dim, patch, patch)

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
  # Class attribute, not an argument: the fixtures' state_dicts stay those of MAE's timm blocks.
  fused = False  # True: F.scaled_dot_product_attention (flash/cuDNN kernels on GPU)

  def __init__(self, dim, heads):
    super().__init__()
    self.heads = heads
    self.qkv = nn.Linear(dim, 3 * dim, bias=True)  # MAE builds its blocks with qkv_bias=True
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, t, d = x.shape
    q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
    if self.fused:
      y = F.scaled_dot_product_attention(q, k, v)
    else:
      y = ((q * (d // self.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v
    return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(F.gelu(self.fc1(x)))  # exact GELU (nn.GELU default)


class Block(nn.Module):
  def __init__(self, dim, heads, mlp_ratio=4.0):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-6)  # MAE: partial(nn.LayerNorm, eps=1e-6)
    self.attn = Attention(dim, heads)
    self.norm2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = Mlp(dim, int(dim * mlp_ratio))

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class MaskedAutoencoderViT(nn.Module):
  """The MAE model's parameters; `features` is the unmasked encoder (models_vit's path)."""

  def __init__(self, img=224, patch=16, dim=768, depth=12, heads=12, dec_dim=512, dec_depth=8,
               dec_heads=16):
    super().__init__()
    n = (img // patch) ** 2
    self.patch_embed = PatchEmbed(patch, dim)
    self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
    # Fixed sin-cos in MAE; random here so that a test proves it is read from the file.
    self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02, requires_grad=False)
    self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
    self.norm = nn.LayerNorm(dim, eps=1e-6)
    self.decoder_embed = nn.Linear(dim, dec_dim)
    self.mask_token = nn.Parameter(torch.randn(1, 1, dec_dim) * 0.02)
    self.decoder_pos_embed = nn.Parameter(torch.randn(1, n + 1, dec_dim), requires_grad=False)
    self.decoder_blocks = nn.ModuleList([Block(dec_dim, dec_heads) for _ in range(dec_depth)])
    self.decoder_norm = nn.LayerNorm(dec_dim, eps=1e-6)
    self.decoder_pred = nn.Linear(dec_dim, patch * patch * 3)

  def features(self, x):
    x = self.patch_embed(x) + self.pos_embed[:, 1:]
    cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], 1)
    for blk in self.blocks:
      x = blk(x)
    return self.norm(x)

  def pretrain_loss(self, imgs_BxCxHxW, mask_ratio=0.75, norm_pix_loss=True):
    """MAE pretraining loss (models_mae.py forward): random masking, encoder on the kept
    patches, decoder on all tokens, MSE on the masked patches' (normalised) pixels."""
    p = self.patch_embed.proj.kernel_size[0]
    x = self.patch_embed(imgs_BxCxHxW) + self.pos_embed[:, 1:]
    b, n, d = x.shape
    keep = int(n * (1 - mask_ratio))
    ids_shuffle = torch.argsort(torch.rand(b, n, device=x.device), dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    x = torch.gather(x, 1, ids_shuffle[:, :keep, None].expand(-1, -1, d))
    mask = torch.ones(b, n, device=x.device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1)
    x = torch.cat([cls, x], 1)
    for blk in self.blocks:
      x = blk(x)
    x = self.decoder_embed(self.norm(x))
    g = x.shape[-1]
    tokens = torch.cat([x[:, 1:], self.mask_token.expand(b, n - keep, -1)], 1)
    tokens = torch.gather(tokens, 1, ids_restore[:, :, None].expand(-1, -1, g))
    x = torch.cat([x[:, :1], tokens], 1) + self.decoder_pos_embed
    for blk in self.decoder_blocks:
      x = blk(x)
    pred = self.decoder_pred(self.decoder_norm(x))[:, 1:]
    h = imgs_BxCxHxW.shape[2] // p
    target = imgs_BxCxHxW.reshape(b, 3, h, p, h, p).permute(0, 2, 4, 3, 5, 1).reshape(b, n, -1)
    if norm_pix_loss:
      target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** .5
    loss = ((pred.float() - target) ** 2).mean(-1)
    return (loss * mask).sum() / mask.sum()


# --- FAN / EmoFAN (vaflax/models/fan.py; Bulat & Tzimiropoulos 2017, Toisoul et al. 2021) -------


class PublicConvBlock(nn.Module):
  """FAN's block (three pre-activated 3x3 convs of C/2, C/4, C/4 channels, concatenated,
  residual) under the released names (bn1..conv3, downsample); also the speed peers' block."""

  def __init__(self, cin, cout):
    super().__init__()
    self.bn1, self.conv1 = nn.BatchNorm2d(cin), conv3x3(cin, cout // 2)
    self.bn2, self.conv2 = nn.BatchNorm2d(cout // 2), conv3x3(cout // 2, cout // 4)
    self.bn3, self.conv3 = nn.BatchNorm2d(cout // 4), conv3x3(cout // 4, cout // 4)
    self.downsample = (None if cin == cout else nn.Sequential(
        nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False)))

  def forward(self, x):
    y1 = self.conv1(F.relu(self.bn1(x)))
    y2 = self.conv2(F.relu(self.bn2(y1)))
    y3 = self.conv3(F.relu(self.bn3(y2)))
    res = x if self.downsample is None else self.downsample(x)
    return torch.cat([y1, y2, y3], 1) + res


class Hourglass(nn.Module):
  def __init__(self, depth, c):
    super().__init__()
    self.up, self.low1 = PublicConvBlock(c, c), PublicConvBlock(c, c)
    self.low3 = PublicConvBlock(c, c)
    self.inner = Hourglass(depth - 1, c) if depth > 1 else PublicConvBlock(c, c)

  def forward(self, x):
    low = self.low3(self.inner(self.low1(F.avg_pool2d(x, 2))))
    return self.up(x) + F.interpolate(low, scale_factor=2, mode='nearest')


class EmoFAN(nn.Module):
  """FAN stem + stacked hourglasses + EmoNet's attention head: image -> (va, heatmaps per stack)."""

  def __init__(self, num_stacks=2, depth=4, width=256, num_landmarks=68, head_width=256,
               head_blocks=4):
    super().__init__()
    w = width
    self.stem = nn.Sequential(nn.Conv2d(3, w // 4, 7, 2, 3), nn.BatchNorm2d(w // 4), nn.ReLU())
    self.stem2 = PublicConvBlock(w // 4, w // 2)
    self.stem3, self.stem4 = PublicConvBlock(w // 2, w // 2), PublicConvBlock(w // 2, w)
    self.hourglass = nn.ModuleList([Hourglass(depth, w) for _ in range(num_stacks)])
    self.top = nn.ModuleList([PublicConvBlock(w, w) for _ in range(num_stacks)])
    self.last = nn.ModuleList([nn.Sequential(nn.Conv2d(w, w, 1), nn.BatchNorm2d(w), nn.ReLU())
                               for _ in range(num_stacks)])
    self.heatmap = nn.ModuleList([nn.Conv2d(w, num_landmarks, 1) for _ in range(num_stacks)])
    self.remap_feat = nn.ModuleList([nn.Conv2d(w, w, 1) for _ in range(num_stacks - 1)])
    self.remap_hm = nn.ModuleList([nn.Conv2d(num_landmarks, w, 1) for _ in range(num_stacks - 1)])
    self.head_in = PublicConvBlock(2 * w + num_landmarks, head_width)
    self.head_blocks = nn.ModuleList([PublicConvBlock(head_width, head_width)
                                      for _ in range(head_blocks)])
    self.head_bn = nn.BatchNorm2d(head_width)
    self.fc = nn.Sequential(nn.Linear(head_width, head_width // 2), nn.BatchNorm1d(head_width // 2),
                            nn.ReLU(), nn.Linear(head_width // 2, 2))

  def forward(self, x):
    x = F.avg_pool2d(self.stem2(self.stem(x)), 2)
    stem = prev = self.stem4(self.stem3(x))
    heatmaps = []
    for i in range(len(self.hourglass)):
      feats = self.last[i](self.top[i](self.hourglass[i](prev)))
      heatmaps.append(self.heatmap[i](feats))
      if i < len(self.hourglass) - 1:
        prev = prev + self.remap_feat[i](feats) + self.remap_hm[i](heatmaps[-1])
    hm = heatmaps[-1].detach()  # vaflax's detach_heatmaps: only the landmark loss shapes them
    y = self.head_in(torch.cat([stem, feats * hm.sum(1, keepdim=True), hm], 1))
    for blk in self.head_blocks:
      y = F.max_pool2d(blk(y), 2, ceil_mode=True)
    y = F.relu(self.head_bn(y)).float().mean((2, 3))
    return torch.tanh(self.fc(y)), torch.stack(heatmaps)


# --- The released FAN and EmoNet (face-alignment's models/fan.py, face-analysis/emonet's ---------
# emonet.py): their module and parameter names, so the fixtures' keys are a real checkpoint's;
# the width (256 in the releases) is a parameter so that the fixtures stay small.


def _pool2(x, pool):
  return F.max_pool2d(x, 2, stride=2) if pool == 'max' else F.avg_pool2d(x, 2, stride=2)


class PublicHourGlass(nn.Module):
  """Levels named b1_<level>, b2_<level>, b2_plus_1, b3_<level> (level `depth` outermost)."""

  def __init__(self, depth, c, pool):
    super().__init__()
    self.depth, self.pool = depth, pool
    for level in range(depth, 0, -1):
      self.add_module(f'b1_{level}', PublicConvBlock(c, c))
      self.add_module(f'b2_{level}', PublicConvBlock(c, c))
      if level == 1:
        self.add_module('b2_plus_1', PublicConvBlock(c, c))
      self.add_module(f'b3_{level}', PublicConvBlock(c, c))

  def level(self, n, x):
    up = self._modules[f'b1_{n}'](x)
    low = self._modules[f'b2_{n}'](_pool2(x, self.pool))
    low = self.level(n - 1, low) if n > 1 else self._modules['b2_plus_1'](low)
    low = self._modules[f'b3_{n}'](low)
    return up + F.interpolate(low, scale_factor=2, mode='nearest')

  def forward(self, x):
    return self.level(self.depth, x)


class PublicFAN(nn.Module):
  """face-alignment's FAN (2D-FAN: 4 stacks; max pooling before its 1.3 release, average after).
  forward -> (stem features, per-stack features as EmoNet collects them, per-stack heatmaps)."""

  def __init__(self, num_modules=4, width=256, depth=4, num_landmarks=68, pool='avg'):
    super().__init__()
    w, self.num_modules, self.pool = width, num_modules, pool
    self.conv1 = nn.Conv2d(3, w // 4, 7, 2, 3)
    self.bn1 = nn.BatchNorm2d(w // 4)
    self.conv2 = PublicConvBlock(w // 4, w // 2)
    self.conv3 = PublicConvBlock(w // 2, w // 2)
    self.conv4 = PublicConvBlock(w // 2, w)
    for i in range(num_modules):
      self.add_module(f'm{i}', PublicHourGlass(depth, w, pool))
      self.add_module(f'top_m_{i}', PublicConvBlock(w, w))
      self.add_module(f'conv_last{i}', nn.Conv2d(w, w, 1))
      self.add_module(f'bn_end{i}', nn.BatchNorm2d(w))
      self.add_module(f'l{i}', nn.Conv2d(w, num_landmarks, 1))
      if i < num_modules - 1:
        self.add_module(f'bl{i}', nn.Conv2d(w, w, 1))
        self.add_module(f'al{i}', nn.Conv2d(num_landmarks, w, 1))

  def trunk(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.conv4(self.conv3(_pool2(self.conv2(x), self.pool)))
    prev, feats, heatmaps = x, [], []
    for i in range(self.num_modules):
      ll = self._modules[f'top_m_{i}'](self._modules[f'm{i}'](prev))
      ll = F.relu(self._modules[f'bn_end{i}'](self._modules[f'conv_last{i}'](ll)))
      hm = self._modules[f'l{i}'](ll)
      heatmaps.append(hm)
      if i < self.num_modules - 1:
        ll = self._modules[f'bl{i}'](ll)
        prev = prev + ll + self._modules[f'al{i}'](hm)
      feats.append(ll)
    return x, feats, heatmaps

  def forward(self, x):
    return self.trunk(x)[2]


class PublicEmoNet(PublicFAN):
  """EmoNet (attention=True): the FAN trunk with max pooling and 2 stacks, then the emotion head
  on the stem and every stack's features weighted by the summed last heatmaps."""

  def __init__(self, num_modules=2, n_expression=8, width=256, depth=4, n_blocks=4,
               head_width=256):
    super().__init__(num_modules, width, depth, 68, pool='max')
    self.conv1x1_input_emo_2 = nn.Conv2d(width * (num_modules + 1), head_width, 1)
    convs = []
    for _ in range(n_blocks):
      convs += [PublicConvBlock(head_width, head_width), nn.MaxPool2d(2, 2)]
    self.emo_net_2 = nn.Sequential(*convs)
    self.avg_pool_2 = nn.AvgPool2d(4)
    self.emo_fc_2 = nn.Sequential(nn.Linear(head_width, head_width // 2),
                                  nn.BatchNorm1d(head_width // 2), nn.ReLU(),
                                  nn.Linear(head_width // 2, n_expression + 2))

  def forward(self, x):
    stem, feats, heatmaps = self.trunk(x)
    mask = heatmaps[-1].sum(1, keepdim=True)
    y = self.emo_net_2(self.conv1x1_input_emo_2(torch.cat([stem] + [f * mask for f in feats], 1)))
    y = self.emo_fc_2(torch.flatten(self.avg_pool_2(y), 1))  # a 4x4 map (256 px) to 1x1
    return {'heatmap': heatmaps[-1], 'expression': y[:, :-2], 'valence': y[:, -2],
            'arousal': y[:, -1]}


# --- VA head and losses ---------------------------------------------------------------------------


def va_head(features):
  """vaflax's VAHead(hidden=128) of the ResNet configs: Linear, ReLU, Linear to 2, tanh."""
  return nn.Sequential(nn.Linear(features, 128), nn.ReLU(), nn.Linear(128, 2), nn.Tanh())


def ccc_loss(pred_Bx2, target_Bx2, eps=1e-8):
  """(1 - CCC_valence) + (1 - CCC_arousal), population moments, in float32."""
  p, t = pred_Bx2.float(), target_Bx2.float()
  pm, tm = p.mean(0), t.mean(0)
  cov = ((p - pm) * (t - tm)).mean(0)
  ccc = 2 * cov / (p.var(0, unbiased=False) + t.var(0, unbiased=False) + (pm - tm) ** 2 + eps)
  return (1 - ccc).sum()
