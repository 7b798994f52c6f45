"""vaflax.main's last line: where a run's results are, and a finished run is not trained again.
(writers.results_line in process; vaflax.main itself in a subprocess, as a user runs it.)"""

import json
import os
import subprocess
import sys

import pytest

from vaflax import writers


def _finished_run(workdir):
  os.makedirs(workdir / 'checkpoints' / '800')
  evals = [(200, 0.81), (400, 0.93), (600, 0.95), (800, 0.94)]
  with open(workdir / 'metrics.jsonl', 'w') as f:
    for step, ccc in evals:
      f.write(json.dumps({'step': step, 'train/loss': 0.1}) + '\n')
      f.write(json.dumps({'step': step, 'val/ccc_mean': ccc, 'val/ccc_valence': ccc}) + '\n')
  (workdir / 'final_metrics.json').write_text(
      json.dumps({'step': 800, 'val/ccc_mean': 0.94, 'val/ccc_valence': 0.94, 'train_seconds': 9}))


def test_results_line_names_the_files_and_the_last_and_best_ccc(tmp_path):
  _finished_run(tmp_path)
  line = writers.results_line(str(tmp_path))
  assert line == (f'Run finished at step 800: val/ccc_mean 0.9400 (best 0.9500 at step 600). '
                  f'Results in {tmp_path}: final_metrics.json, metrics.jsonl (curves), checkpoints/.')


@pytest.mark.slow
def test_rerunning_a_finished_run_says_so_and_trains_nothing(tmp_path):
  _finished_run(tmp_path)
  before = (tmp_path / 'final_metrics.json').read_text()
  out = subprocess.run(
      [sys.executable, '-m', 'vaflax.main', '--config=configs/resnet_va.py:runlocal',
       f'--workdir={tmp_path}', '--config.input.data_dir=/nonexistent'],
      capture_output=True, text=True, timeout=120,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'Run finished earlier (nothing to train' in out.stdout
  assert f'Results in {tmp_path}' in out.stdout
  assert (tmp_path / 'final_metrics.json').read_text() == before  # not rewritten
