"""Two processes x 4 CPU devices on loopback train like one process with 8 devices.

Each worker process (this file run as a script) joins a local coordinator, reads its own shard of
the training data (`pipeline.make_train_dataset(config, process_index, 2)`), and runs a few steps
of the real sharded train step on a (data 4, fsdp 2) mesh spanning both processes. The test then
feeds the same global batches to one process with 8 devices and compares losses and parameters.
Workers are subprocesses with their own timeout: a peer that never joins makes jax.distributed
abort its process (SIGABRT after initialization_timeout) instead of raising.
"""

import os
import socket
import subprocess
import sys

import numpy as np

STEPS = 3
NUM_PROCESSES = 2
LOCAL_DEVICES = 4
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(data_dir):
  sys.path.insert(0, REPO)
  from configs import resnet_va  # noqa: PLC0415

  c = resnet_va.get_config('runlocal')
  c.input.data_dir = data_dir
  c.model.width, c.model.head_hidden = 8, 16
  c.image_size, c.batch_size = 32, 16  # global batch: 8 per process, 2 per device
  c.total_steps = 10
  c.optimizer.name, c.optimizer.lr = 'sgd', 0.01  # SGD: fp32 noise stays small; Adam amplifies it
  c.schedule.name, c.schedule.warmup_steps = 'constant', 0
  c.mesh.data, c.mesh.fsdp, c.mesh.num_devices = -1, 2, 0
  return c


def _leaves(tree):
  import jax  # noqa: PLC0415

  out = []
  for x in jax.tree.leaves(tree):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    out.append(np.asarray(x))
  return out


def worker(process_id: int, port: int, data_dir: str, out_dir: str) -> None:
  import jax  # noqa: PLC0415

  jax.config.update('jax_num_cpu_devices', LOCAL_DEVICES)
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}',
                             num_processes=NUM_PROCESSES, process_id=process_id,
                             initialization_timeout=60)
  from jax.experimental import multihost_utils  # noqa: PLC0415

  from vaflax import sharding, train  # noqa: PLC0415
  from vaflax.data import pipeline  # noqa: PLC0415

  assert jax.process_count() == NUM_PROCESSES and jax.device_count() == 8
  c = _config(data_dir)
  ds, _ = pipeline.make_train_dataset(c, jax.process_index(), jax.process_count())
  s = train.make_setup(c, 1000)
  it = iter(ds)
  state, local, glob, losses = s.state, [], [], []
  for i in range(STEPS):
    batch = next(it)
    gbatch = sharding.to_global(batch, s.mesh)
    state, metrics, ok = s.train_step(state, gbatch, np.int32(i))
    assert bool(ok)
    losses.append(float(metrics['loss']))
    local.append({k: batch[k] for k in ('image', 'va', 'va_mask', 'index')})
    # The global batch as the step saw it (rows in the order of the mesh's batch shards).
    glob.append(multihost_utils.process_allgather(
        {k: gbatch[k] for k in ('image', 'va', 'va_mask', 'index')}, tiled=True))
  # Which global rows this process's devices hold.
  rows = sorted({sh.index[0].start or 0 for sh in gbatch['index'].addressable_shards})
  keyless = jax.tree.map(
      lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
      else x, state)
  params = multihost_utils.process_allgather(keyless, tiled=True)
  np.savez(os.path.join(out_dir, f'p{process_id}.npz'),
           losses=np.asarray(losses), rows=np.asarray(rows),
           **{f'local{i}_{k}': v for i, b in enumerate(local) for k, v in b.items()},
           **{f'global{i}_{k}': np.asarray(v) for i, b in enumerate(glob) for k, v in b.items()},
           **{f'param{j}': v for j, v in enumerate(_leaves(params))})
  jax.distributed.shutdown()


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    return sock.getsockname()[1]


def test_two_processes_match_one_process(tmp_path, synthetic_data_dir):
  import jax  # noqa: PLC0415

  from vaflax import sharding, train  # noqa: PLC0415

  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
  env.pop('XLA_FLAGS', None)
  procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), str(i), str(port),
                             synthetic_data_dir, str(tmp_path)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(NUM_PROCESSES)]
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=240)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, log in zip(procs, logs, strict=True):
    assert p.returncode == 0, log[-3000:]
  res = [dict(np.load(tmp_path / f'p{i}.npz')) for i in range(NUM_PROCESSES)]

  for i in range(STEPS):
    idx = [r[f'local{i}_index'] for r in res]
    # Each host reads its own shard of the records: ds[process_index::process_count].
    assert np.all(idx[0] % 2 == 0) and np.all(idx[1] % 2 == 1)
    g = res[0][f'global{i}_index']
    np.testing.assert_array_equal(g, res[1][f'global{i}_index'])
    # The global batch is the hosts' local batches placed at their devices' rows.
    for r, local in zip(res, idx, strict=True):
      start = r['rows'][0]
      np.testing.assert_array_equal(g[start : start + len(local)], local)
  np.testing.assert_array_equal(res[0]['losses'], res[1]['losses'])

  # The same global batches through one process with 8 devices.
  c = _config(synthetic_data_dir)
  s = train.make_setup(c, 1000)
  assert dict(s.mesh.shape) == {'data': 4, 'fsdp': 2} and jax.process_count() == 1
  state, losses = s.state, []
  init = _leaves(state)
  for i in range(STEPS):
    batch = {k: res[0][f'global{i}_{k}'] for k in ('image', 'va', 'va_mask', 'index')}
    state, metrics, ok = s.train_step(state, sharding.to_global(batch, s.mesh), np.int32(i))
    losses.append(float(metrics['loss']))
  # Same parameters and batches: only the order of fp32 reductions differs (Gloo across
  # processes vs in-process), measured 1.5e-6 relative on the first loss.
  np.testing.assert_allclose(res[0]['losses'][0], losses[0], rtol=1e-5)
  np.testing.assert_allclose(res[0]['losses'], losses, rtol=2e-4)
  ref = _leaves(state)
  got = [res[0][f'param{j}'] for j in range(len(ref))]
  assert len([k for k in res[0] if k.startswith('param')]) == len(ref)
  # Each leaf agrees to a small fraction of its own 3-step update (as tests/train_test.py:
  # reduction-order noise through BatchNorm and the CCC loss); a missing all-reduce or a host
  # training on its own shard alone would disagree by the size of the update.
  for a0, a, b in zip(init, ref, got, strict=True):
    if not np.issubdtype(a.dtype, np.floating):
      np.testing.assert_array_equal(b, a)
      continue
    update = np.linalg.norm(a - a0)
    assert np.linalg.norm(b - a) <= 0.1 * update + 1e-6, (a.shape, np.linalg.norm(b - a), update)


if __name__ == '__main__':
  worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
