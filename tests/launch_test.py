"""The launch/ scripts: the environment and command they give every process.

SLURM and Cloud TPU are replaced by fakes on PATH (`scontrol`, `srun`, `gcloud`) and the Python
interpreter by a script that records its environment and argv, so the tests check what each
process would run. The local multi-process launcher runs for real in tests/multiprocess_test.py.
"""

import json
import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD_PY = """#!{python}
import json, os, sys
keys = ('JAX_PROCESS_ID', 'JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_LOCAL_DEVICE_IDS')
rec = {{'argv': sys.argv[1:], **{{k: os.environ.get(k) for k in keys}}}}
with open(os.path.join({out!r}, 'rank%s.json' % os.environ['JAX_PROCESS_ID']), 'w') as f:
  json.dump(rec, f)
"""


def _exe(path, text):
  path.write_text(text)
  path.chmod(0o755)
  return str(path)


@pytest.mark.parametrize('per_gpu', [False, True])
def test_slurm_script_gives_each_task_its_rank_and_the_first_node(tmp_path, per_gpu):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  _exe(bin_dir / 'scontrol', '#!/bin/bash\necho gpu-node-07\necho gpu-node-08\n')
  # Fake srun: its options, then the command, run once per task with SLURM's per-task variables.
  _exe(bin_dir / 'srun', '#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
       'for i in 0 1 2; do SLURM_PROCID=$i SLURM_LOCALID=$((i % 2)) "$@" || exit $?; done\n')
  py = _exe(bin_dir / 'recpy', RECORD_PY.format(python=sys.executable, out=str(tmp_path)))
  env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}', SLURM_NTASKS='3',
             SLURM_JOB_NODELIST='gpu-node-[07-08]', PYTHON=py)
  env.pop('VAFLAX_PER_GPU', None)
  if per_gpu:
    env['VAFLAX_PER_GPU'] = '1'
  args = ['--config=configs/resnet_va.py:variant=50,dataset=afew_va', '--workdir=/shared/my run',
          "--config.input.dataset=affwild2_va:0.2,afew_va:1"]
  r = subprocess.run(['bash', os.path.join(REPO, 'launch/slurm_gpu.sbatch'), *args], env=env,
                     capture_output=True, text=True, timeout=60)
  assert r.returncode == 0, r.stderr
  for rank in range(3):
    rec = json.loads((tmp_path / f'rank{rank}.json').read_text())
    assert rec['argv'] == ['-m', 'vaflax.main', *args]  # every argument intact, spaces included
    assert rec['JAX_PROCESS_ID'] == str(rank)
    assert rec['JAX_NUM_PROCESSES'] == '3'
    assert rec['JAX_COORDINATOR_ADDRESS'] == 'gpu-node-07:12355'
    assert rec['JAX_LOCAL_DEVICE_IDS'] == (str(rank % 2) if per_gpu else None)
  # The same launcher runs predict over a collection: each task then takes its own shard.
  env['VAFLAX_MODULE'] = 'vaflax.predict'
  r = subprocess.run(['bash', os.path.join(REPO, 'launch/slurm_gpu.sbatch'), '--input=videos'],
                     env=env, capture_output=True, text=True, timeout=60)
  assert r.returncode == 0, r.stderr
  assert json.loads((tmp_path / 'rank2.json').read_text())['argv'] == [
      '-m', 'vaflax.predict', '--input=videos']


def test_slurm_script_without_arguments_says_how_to_call_it(tmp_path):
  r = subprocess.run(['bash', os.path.join(REPO, 'launch/slurm_gpu.sbatch')],
                     capture_output=True, text=True, timeout=60)
  assert r.returncode == 2 and 'usage: sbatch' in r.stderr


def test_tpu_script_runs_the_same_command_on_all_workers(tmp_path):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  _exe(bin_dir / 'gcloud', f'#!/bin/bash\nprintf "%s\\n" "$@" > {tmp_path}/gcloud_args\n')
  env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}', VAFLAX_DIR='/home/me/vaflax')
  args = ['--config=configs/mae_va.py', '--workdir=gs://bucket/runs/mae va',
          '--config.batch_size=1024']
  r = subprocess.run(['bash', os.path.join(REPO, 'launch/tpu_pod.sh'), 'my-tpu', 'us-central2-b',
                      *args], env=env, capture_output=True, text=True, timeout=60)
  assert r.returncode == 0, r.stderr
  got = (tmp_path / 'gcloud_args').read_text().splitlines()
  assert got[:5] == ['compute', 'tpus', 'tpu-vm', 'ssh', 'my-tpu']
  assert '--worker=all' in got and got[got.index('--zone') + 1] == 'us-central2-b'
  command = next(a for a in got if a.startswith('--command='))[len('--command='):]
  assert 'cd /home/me/vaflax' in command and 'VAFLAX_DISTRIBUTED=auto' in command
  # What the workers' shell will run: the arguments survive its word splitting unchanged.
  main = command.split('VAFLAX_DISTRIBUTED=auto ', 1)[1].split(' 2>&1')[0]
  assert shlex.split(main) == ['python3', '-m', 'vaflax.main', *args]

