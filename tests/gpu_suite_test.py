"""benchmarks/gpu_suite.py --smoke: every workload's path runs (2 steps, tiny shapes, CPU)."""

import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_smoke_reports_every_workload(synthetic_data_dir, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
  r = subprocess.run(
      [sys.executable, 'benchmarks/gpu_suite.py', '--smoke', f'--out={tmp_path}',
       f'--data_dir={synthetic_data_dir}', '--torch_python='],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
  assert r.returncode == 0, r.stderr[-3000:]
  report = json.loads((tmp_path / 'gpu_suite.json').read_text())
  assert report['smoke'] and report['steps'] == 2
  by_name = {w['name']: w['rows'] for w in report['workloads']}
  assert list(by_name) == ['mae', 'resnet', 'emofan', 'detector']
  for name in ('mae', 'resnet', 'emofan'):
    jax_row, *peers = by_name[name]
    assert jax_row['framework'] == 'vaflax' and jax_row['status'] == 'ok', jax_row
    for k in ('examples_per_sec', 'step_time_ms_median', 'flops_per_example',
              'peak_memory_bytes', 'compile_s'):
      assert math.isfinite(jax_row[k]) and jax_row[k] > 0, (name, k, jax_row[k])
    assert jax_row['batch'] == 4
    # No torch here: the peer rows say so instead of failing.
    assert [p['status'] for p in peers] == ['torch not installed'] * 2
  # The Grain-fed ResNet reports its input-wait share; the others are timed on a cached batch.
  assert 0.0 <= by_name['resnet'][0]['input_wait_frac'] <= 1.0
  assert by_name['mae'][0]['input_wait_frac'] is None
  det = by_name['detector'][0]
  assert det['status'] == 'ok: 2/2 frames with a face', det['status']  # BlazeFace finds the face
  assert det['detector_frames_per_sec'] > 0 and det['va_frames_per_sec'] > 0
  assert det['examples_per_sec'] == pytest.approx(
      1 / (1 / det['detector_frames_per_sec'] + 1 / det['va_frames_per_sec']))
  table = (tmp_path / 'gpu_suite.md').read_text()
  assert table.count('| vaflax |') == 4 and table in r.stdout
