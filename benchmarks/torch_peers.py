r"""PyTorch peers of the GPU suite's workloads (benchmarks/gpu_suite.py): the same models, batch
and image size, trained with AdamW, bf16 autocast on CUDA, channels_last for the CNNs, eager and
torch.compile.

  python3 benchmarks/torch_peers.py --spec='{"workload": "resnet", ...}' --modes=eager,compile

gpu_suite.py imports this module when `import torch` works, or runs it with --torch_python in a
venv that has torch; it prints one JSON list of rows. Each peer is fed one batch of random data
already on the device (compute only), like the suite's cached phase. vaflax never imports torch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import torch_models as tm  # noqa: E402

MODES = ('eager', 'compile')


class Objective(nn.Module):
  """model + loss of one workload as one module (what torch.compile compiles)."""

  def __init__(self, spec):
    super().__init__()
    self.kind = spec['workload']
    m = spec['model']
    if self.kind == 'mae':
      tm.Attention.fused = True  # flash / memory-efficient SDPA kernels, as vaflax's fast path
      self.net = tm.MaskedAutoencoderViT(
          spec['image_size'], m['patch_size'], m['width'], m['depth'], m['num_heads'],
          m['decoder_width'], m['decoder_depth'], m['decoder_num_heads'])
      self.mask_ratio = m['mask_ratio']
    elif self.kind == 'resnet':
      block, layers = tm.RESNETS[m['depth']]
      self.net = tm.ResNet(block, layers, width=m['width'])
      self.net.fc = tm.va_head(self.net.fc.in_features)
    elif self.kind == 'emofan':
      self.net = tm.EmoFAN(m['num_stacks'], m['hourglass_depth'], m['width'], m['num_landmarks'],
                           m['head_width'], m['head_blocks'])
    else:
      raise ValueError(f'no PyTorch peer for workload {self.kind!r}')

  def forward(self, x, va, hm_target):
    if self.kind == 'mae':
      return self.net.pretrain_loss(x, self.mask_ratio)
    if self.kind == 'resnet':
      return tm.ccc_loss(self.net(x), va)
    va_pred, hm_SxBxLxhxw = self.net(x)
    # CCC for VA + 10 x heatmap MSE on every stack (vaflax's emofan trainer, landmark_weight 10).
    return tm.ccc_loss(va_pred, va) + 10.0 * ((hm_SxBxLxhxw.float() - hm_target) ** 2).mean()


def run(spec: dict, mode: str, steps: int, warmup: int) -> dict:
  """Times `steps` train steps (after `warmup`) of one workload in one mode; returns a row."""
  cuda = torch.cuda.is_available()
  dev = torch.device('cuda' if cuda else 'cpu')
  torch.manual_seed(0)
  b, s = spec['batch'], spec['image_size']
  obj = Objective(spec).to(dev)
  x = torch.rand(b, 3, s, s, device=dev) * 2 - 1
  if cuda and spec['workload'] != 'mae':
    obj = obj.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
  va = torch.rand(b, 2, device=dev) * 2 - 1
  hm = torch.rand(b, spec['model'].get('num_landmarks', 1), s // 4, s // 4, device=dev)
  opt = torch.optim.AdamW(obj.parameters(), lr=1e-4, weight_decay=0.05, fused=cuda)
  obj.train()
  fn = torch.compile(obj) if mode == 'compile' else obj

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda and spec['bf16']):
      loss = fn(x, va, hm)
    loss.backward()
    opt.step()
    return loss

  def sync():
    if cuda:
      torch.cuda.synchronize()

  if cuda:
    torch.cuda.reset_peak_memory_stats()
  t0 = time.perf_counter()
  loss = step()
  sync()
  first_s = time.perf_counter() - t0  # torch.compile's compile (or eager's warm-up)
  for _ in range(warmup):
    step()
  sync()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    loss = step()
    sync()
    times.append(time.perf_counter() - t)
  med = statistics.median(times)
  return {
      'framework': f'torch {mode}', 'status': 'ok', 'batch': b, 'image_size': s,
      'examples_per_sec': b / med, 'step_time_ms_median': 1e3 * med,
      'peak_memory_bytes': int(torch.cuda.max_memory_allocated()) if cuda else None,
      'compile_s': first_s, 'finite': bool(torch.isfinite(loss).item()),
      'device_kind': torch.cuda.get_device_name() if cuda else 'cpu',
      'torch_version': torch.__version__,
  }


def run_all(spec: dict, modes, steps: int, warmup: int) -> list[dict]:
  """One row per mode; a failing mode (out of memory, a compile error) becomes an error row."""
  rows = []
  for mode in modes:
    try:
      rows.append(run(spec, mode, steps, warmup))
    except Exception as e:  # noqa: BLE001 -- one peer's failure must not end the suite
      rows.append({'framework': f'torch {mode}', 'status': f'error: {type(e).__name__}: {e}'[:300]})
    finally:
      if torch.cuda.is_available():
        torch.cuda.empty_cache()
  return rows


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--spec', required=True, help="a workload's spec as JSON (gpu_suite.py)")
  ap.add_argument('--modes', default=','.join(MODES))
  ap.add_argument('--steps', type=int, default=20)
  ap.add_argument('--warmup', type=int, default=3)
  args = ap.parse_args()
  rows = run_all(json.loads(args.spec), args.modes.split(','), args.steps, args.warmup)
  print(json.dumps(rows), flush=True)


if __name__ == '__main__':
  main()
