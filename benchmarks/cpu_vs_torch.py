r"""ResNet-18 train step on the CPU: vaflax (JAX/XLA) against PyTorch eager, side by side.

  .venv/bin/python benchmarks/cpu_vs_torch.py --torch_python=/work/torchvenv/bin/python

PyTorch is not a vaflax dependency: install it into a separate venv (a CPU wheel, no
torchvision), e.g.
  python3.11 -m venv /work/torchvenv && /work/torchvenv/bin/pip install torch==2.13.0 numpy

The step is the same on both sides: torchvision-layout ResNet-18 (BatchNorm in training mode,
momentum 0.1, eps 1e-5) + the VA head (Linear 512->128, ReLU, Linear 128->2, tanh), loss
(1 - CCC_valence) + (1 - CCC_arousal), backward, Adam (lr 1e-4), float32, batch 32 x 112 x 112 x 3
of fixed random data. The JAX side is vaflax's own jitted step (`vaflax.train.make_setup` on
configs/resnet_va.py:variant=18: donation, grad norm and the non-finite guard included). The
PyTorch side runs NCHW and channels_last.

The JAX side starts as vaflax's entry points do: `vaflax.cpu.keep_freed_memory()` first
(glibc keeps freed memory, synchronous CPU dispatch), so XLA's ~300 MB block of per-step
temporaries is not page-faulted in again every step; PyTorch runs with glibc's defaults, as its
users run it. `--malloc retain` gives every worker the same glibc settings as environment
variables (_RETAIN_MALLOC), `--malloc glibc` gives every worker glibc's defaults (vaflax's
settings off). The per-step kernel time and page faults of each side are reported
(sys_ms_median, page_faults_median).

The workers start once (compile / warm-up), then run in turn, A B C A B C ..., --steps steps
per turn, for --rounds rounds, so that the load of a shared machine hits every side alike. Each
worker reports wall-clock and process CPU time per step; the summary gives medians over all
steps, and the load average at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

BATCH, SIZE = 32, 112

# glibc malloc settings (read at process start) that keep freed memory for reuse: one arena
# (XLA:CPU runs the step on a thread of its own, whose arena would map big blocks anyway), no
# mmap'd blocks, no trimming. `--malloc retain` gives them to every worker alike.
_RETAIN_MALLOC = {'MALLOC_ARENA_MAX': '1', 'MALLOC_MMAP_MAX_': '0',
                  'MALLOC_TRIM_THRESHOLD_': str(2**40)}


def _batch_numpy():
  import numpy as np  # noqa: PLC0415

  rng = np.random.default_rng(0)
  return {'image': rng.uniform(-1, 1, (BATCH, SIZE, SIZE, 3)).astype(np.float32),
          'va': rng.uniform(-1, 1, (BATCH, 2)).astype(np.float32),
          'va_mask': np.ones((BATCH, 2), np.float32)}


# --- JAX worker -----------------------------------------------------------------------------------


def jax_worker(args):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from vaflax import cpu  # noqa: PLC0415

  # As vaflax's entry points do, before JAX starts its CPU client (vaflax/cpu.py).
  kept = cpu.keep_freed_memory() if args.malloc != 'glibc' else False
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from configs import resnet_va  # noqa: PLC0415
  from vaflax import sharding, train  # noqa: PLC0415

  c = resnet_va.get_config('variant=18')
  c.batch_size, c.image_size = BATCH, SIZE
  c.model.dtype = 'float32'  # the paper config computes in bfloat16; both sides here are float32
  c.model.conv_impl = args.conv_impl
  c.total_steps, c.total_epochs = 10**6, 0.0
  c.optimizer.lr = 1e-4
  c.schedule.name = 'constant'
  c.mesh.num_devices = 1
  s = train.make_setup(c, 10**6)
  batch = sharding.to_global(_batch_numpy(), s.mesh)
  state, i = s.state, 0

  def step():
    nonlocal state, i
    state, metrics, _ = s.train_step(state, batch, np.int32(i))
    i += 1
    return metrics

  t0 = time.perf_counter()
  jax.block_until_ready(step())
  first = time.perf_counter() - t0

  def run_one():
    jax.block_until_ready(step())

  _serve(run_one, {'side': 'jax', 'first_step_s': first, 'jax': jax.__version__,
                   'conv_impl': args.conv_impl, 'vaflax_keeps_freed_memory': kept,
                   'xla_flags': os.environ.get('XLA_FLAGS', '')})


# --- PyTorch worker -------------------------------------------------------------------------------


def torch_worker(args):
  import torch  # noqa: PLC0415
  from torch import nn  # noqa: PLC0415

  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  cl = args.worker == 'torch_cl'

  def bn(c):
    return nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)

  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = bn(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = bn(cout)
      self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), bn(cout))
                   if stride != 1 or cin != cout else None)

    def forward(self, x):
      y = torch.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      return torch.relu(y + (x if self.down is None else self.down(x)))

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), bn(64), nn.ReLU(),
                                nn.MaxPool2d(3, 2, 1))
      blocks, cin = [], 64
      for stage in range(4):
        w = 64 * 2**stage
        for i in range(2):
          blocks.append(Block(cin, w, 2 if (i == 0 and stage > 0) else 1))
          cin = w
      self.blocks = nn.Sequential(*blocks)
      self.hidden = nn.Linear(512, 128)
      self.out = nn.Linear(128, 2)

    def forward(self, x):
      f = self.blocks(self.stem(x)).mean((2, 3))
      return torch.tanh(self.out(torch.relu(self.hidden(f))))

  def ccc(p, t, eps=1e-8):
    pm, tm = p.mean(0), t.mean(0)
    cov = ((p - pm) * (t - tm)).mean(0)
    return 2 * cov / (p.var(0, unbiased=False) + t.var(0, unbiased=False) + (pm - tm) ** 2 + eps)

  net = Net()
  b = _batch_numpy()
  x = torch.from_numpy(b['image']).permute(0, 3, 1, 2).contiguous()
  if cl:
    net = net.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
  y = torch.from_numpy(b['va'])
  opt = torch.optim.Adam(net.parameters(), lr=1e-4)
  net.train()

  def run_one():
    opt.zero_grad(set_to_none=True)
    loss = (1.0 - ccc(net(x), y)).sum()
    loss.backward()
    opt.step()

  t0 = time.perf_counter()
  run_one()
  first = time.perf_counter() - t0
  _serve(run_one, {'side': args.worker, 'first_step_s': first, 'torch': torch.__version__,
                   'threads': torch.get_num_threads()})


# --- worker protocol ------------------------------------------------------------------------------


def _serve(run_one, hello):
  """Reads 'run K' lines; answers each with the wall and CPU seconds of K steps, one JSON line."""
  run_one()  # second warm-up step
  print(json.dumps(hello), flush=True)
  for line in sys.stdin:
    cmd = line.split()
    if not cmd or cmd[0] == 'quit':
      break
    wall, cpu, sys_, faults = [], [], [], []
    for _ in range(int(cmd[1])):
      t, c, u = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
      run_one()
      wall.append(time.perf_counter() - t)
      cpu.append(time.process_time() - c)
      v = resource.getrusage(resource.RUSAGE_SELF)
      sys_.append(v.ru_stime - u.ru_stime)
      faults.append(v.ru_minflt - u.ru_minflt)
    print(json.dumps({'wall': wall, 'cpu': cpu, 'sys': sys_, 'minflt': faults,
                      'load1': os.getloadavg()[0]}), flush=True)


# --- orchestrator ---------------------------------------------------------------------------------


def _median(xs):
  xs = sorted(xs)
  n = len(xs)
  return 0.5 * (xs[(n - 1) // 2] + xs[n // 2])


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--torch_python', default='/work/torchvenv/bin/python',
                  help='interpreter of a venv with torch (not vaflax\'s venv)')
  ap.add_argument('--rounds', type=int, default=8)
  ap.add_argument('--steps', type=int, default=3, help='steps per worker per round')
  ap.add_argument('--threads', type=int, default=2, help='torch intra-op threads')
  ap.add_argument('--pin_cpu', type=int, default=-1,
                  help='>= 0: run every worker on this one core (taskset) with one thread; '
                       'steadier than 2 threads on a loaded machine')
  ap.add_argument('--sides', default='jax,torch_nchw,torch_cl')
  ap.add_argument('--conv_impl', default='auto',
                  help="the ResNet's conv_impl (vaflax/models/resnet.py): 'auto' (= 'cpu' here) or "
                       "'xla' (XLA's own convolution gradients, for comparison)")
  ap.add_argument('--malloc', default='default', choices=('default', 'retain', 'glibc'),
                  help="'default': each side as its users run it: vaflax keeps freed memory "
                       "(vaflax/cpu.py: XLA:CPU allocates a step's ~300 MB of temporaries "
                       "as one block, which glibc would map and unmap every step), PyTorch with "
                       "glibc's defaults. 'retain': every worker runs with the same settings as "
                       "glibc environment variables (_RETAIN_MALLOC). 'glibc': every worker with "
                       "glibc's defaults, vaflax's settings off")
  ap.add_argument('--json', default='', help='also write the summary here')
  ap.add_argument('--worker', default='', help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.worker == 'jax':
    return jax_worker(args)
  if args.worker.startswith('torch'):
    return torch_worker(args)

  here = os.path.abspath(__file__)
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  prefix = []
  if args.pin_cpu >= 0:
    # XLA sizes its thread pools from the CPU affinity; Eigen's own pool is switched off too.
    prefix = ['taskset', '-c', str(args.pin_cpu)]
    args.threads = 1
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' --xla_cpu_multi_thread_eigen=false '
                        'intra_op_parallelism_threads=1').strip()
  if args.malloc == 'retain':
    env.update(_RETAIN_MALLOC)
  procs = {}
  for side in args.sides.split(','):
    py = sys.executable if side == 'jax' else args.torch_python
    procs[side] = subprocess.Popen(
        [*prefix, py, here, f'--worker={side}', f'--threads={args.threads}',
         f'--conv_impl={args.conv_impl}', f'--malloc={args.malloc}'], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, env=env)
  hello = {s: json.loads(p.stdout.readline()) for s, p in procs.items()}
  load_start = os.getloadavg()
  wall = {s: [] for s in procs}
  cpu = {s: [] for s in procs}
  sys_ = {s: [] for s in procs}
  faults = {s: [] for s in procs}
  round_medians = {s: [] for s in procs}
  for r in range(args.rounds):
    for s, p in procs.items():
      p.stdin.write(f'run {args.steps}\n')
      p.stdin.flush()
      res = json.loads(p.stdout.readline())
      wall[s] += res['wall']
      cpu[s] += res['cpu']
      sys_[s] += res['sys']
      faults[s] += res['minflt']
      round_medians[s].append(_median(res['wall']))
    print(f'round {r}: ' + '  '.join(f'{s} {1e3 * round_medians[s][-1]:.0f} ms' for s in procs)
          + f'  (load {os.getloadavg()[0]:.1f})', file=sys.stderr, flush=True)
  for p in procs.values():
    p.stdin.write('quit\n')
    p.stdin.flush()
    p.wait(timeout=60)
  summary = {
      'date': time.strftime('%Y-%m-%d'),
      'model': f'ResNet-18 train step, batch {BATCH} x {SIZE}px, float32, Adam',
      'rounds': args.rounds, 'steps_per_round': args.steps,
      'load_average_start': load_start, 'load_average_end': os.getloadavg(),
      'cpu_count': os.cpu_count(), 'threads': args.threads, 'pin_cpu': args.pin_cpu,
      'malloc': args.malloc,
      'workers': hello,
      'wall_ms_median': {s: 1e3 * _median(v) for s, v in wall.items()},
      'wall_ms_min': {s: 1e3 * min(v) for s, v in wall.items()},
      'cpu_ms_median': {s: 1e3 * _median(v) for s, v in cpu.items()},
      'sys_ms_median': {s: 1e3 * _median(v) for s, v in sys_.items()},
      'page_faults_median': {s: _median(v) for s, v in faults.items()},
  }
  if 'jax' in procs:
    j = summary['wall_ms_median']['jax']
    jc = summary['cpu_ms_median']['jax']
    summary['torch_time_over_jax'] = {s: summary['wall_ms_median'][s] / j for s in procs if s != 'jax'}
    summary['torch_cpu_time_over_jax'] = {s: summary['cpu_ms_median'][s] / jc for s in procs if s != 'jax'}
  text = json.dumps(summary, indent=2)
  print(text)
  if args.json:
    with open(args.json, 'w') as f:
      f.write(text + '\n')


if __name__ == '__main__':
  main()
