import json
import os
import subprocess
import sys

import pytest

from vaflax import benchmark

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _taps(size: int, k: int, stride: int) -> int:
  """Kernel taps that land inside the image, summed over the output positions of one axis
  (XLA counts a conv's FLOPs without the taps on zero padding)."""
  pad = (k - 1) // 2
  out = (size + 2 * pad - k) // stride + 1
  return sum(1 for o in range(out) for t in range(k) if 0 <= o * stride - pad + t < size)


def _resnet_conv_flops(blocks: int, width: int, size: int) -> tuple[int, int]:
  """(forward FLOPs of all convs, of the stem conv alone) of a torchvision-layout ResNet of
  basic blocks, `blocks` per stage (1: ResNet-10, 2: ResNet-18)."""
  conv = lambda k, s, cin, cout, hw: 2 * cin * cout * _taps(hw, k, s) ** 2
  stem = conv(7, 2, 3, width, size)
  total = stem
  hw = size // 4  # stem stride 2, max pool stride 2
  cin = width
  for stage in range(4):
    w = width * 2**stage
    for i in range(blocks):
      stride = 2 if (i == 0 and stage > 0) else 1
      total += conv(3, stride, cin, w, hw) + conv(3, 1, w, w, hw // stride)
      if stride != 1 or cin != w:
        total += conv(1, stride, cin, w, hw)
      cin, hw = w, hw // stride
  return total, stem


def test_peak_table():
  assert benchmark.peak_flops('cpu') is None
  assert benchmark.peak_flops('NVIDIA H100 80GB HBM3') == 989e12
  assert benchmark.peak_flops('NVIDIA H100 PCIe') == 756e12  # the specific name wins
  assert benchmark.peak_flops('NVIDIA A100-SXM4-40GB') == 312e12
  assert benchmark.peak_flops('TPU v5 lite') == 197e12


@pytest.mark.slow
def test_cli_json_fields(synthetic_data_dir):
  width, size, batch = 8, 32, 8
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  r = subprocess.run(
      [sys.executable, '-m', 'vaflax.benchmark', '--config=configs/resnet_va.py:runlocal',
       f'--config.input.data_dir={synthetic_data_dir}', '--config.model.depth=10',
       f'--config.model.width={width}',
       f'--config.image_size={size}', f'--config.batch_size={batch}', '--config.mesh.num_devices=1',
       '--steps=3', '--warmup=1', '--json', '--peak_tflops=0.001'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])  # the only stdout line is the JSON object
  assert out['global_batch'] == batch and out['num_devices'] == 1 and out['steps'] == 3
  assert out['platform'] == 'cpu' and out['finite'] is True
  # Throughput agrees with the step time (examples/s = batch / median step).
  assert out['step_time_ms_median'] > 0
  assert out['examples_per_sec'] == pytest.approx(batch * 1e3 / out['step_time_ms_median'])
  assert out['step_time_ms_p10'] <= out['step_time_ms_median'] <= out['step_time_ms_p90']
  assert 0.0 <= out['input_wait_frac'] <= 1.0
  # XLA's FLOPs of fwd + bwd + Adam: the backward pass has two convs (input and weight
  # gradients) per forward conv, except no input gradient for the stem; then BN, ReLU, the head
  # and Adam (~20 FLOPs for each of the 87k parameters, shared by only 8 examples) add 25 %.
  fwd, stem = _resnet_conv_flops(1, width, size)  # ResNet-10
  convs = 3 * fwd - stem
  assert convs < out['flops_per_example'] < 1.5 * convs, (out['flops_per_example'], convs)
  # MFU from the given peak (1 GFLOP/s per device).
  want = out['flops_per_example'] * out['examples_per_sec'] / 1e9
  assert out['peak_flops_per_device'] == pytest.approx(1e9)
  assert out['mfu'] == pytest.approx(want, rel=1e-6)
  m = out['memory_bytes']
  assert m['argument_size'] > 0 and m['temp_size'] > 0
  assert m['peak_estimate'] == (m['argument_size'] + m['output_size'] - m['alias_size']
                                + m['temp_size'])
  assert m['alias_size'] > 0  # the state is donated
  assert out['compile_s'] > 0 and len(out['load_average']) == 3


def test_a_step_that_does_not_fit_fails_before_training():
  """vaflax/aot.py: the compiled step's memory estimate against the device's limit (GPU/TPU
  report one; CPU does not, and then nothing is refused)."""
  import types  # noqa: PLC0415

  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import pytest  # noqa: PLC0415

  from vaflax import aot  # noqa: PLC0415

  compiled = jax.jit(lambda x: (x @ x.T).sum()).lower(jnp.ones((256, 512))).compile()
  info = {'compile_s': 0.1, 'memory_bytes': aot.memory_report(compiled)}
  peak = info['memory_bytes']['peak_estimate']
  assert peak >= 256 * 512 * 4  # at least its argument

  def device(limit):
    return types.SimpleNamespace(device_kind='Fake GPU',
                                 memory_stats=lambda: {'bytes_limit': limit})

  assert 'of ' in aot.check_fits(info, device(peak + 1))  # fits: the line names the limit
  with pytest.raises(aot.DoesNotFitError, match='does not fit.*batch_size'):
    aot.check_fits(info, device(peak - 1))
  assert 'GiB' in aot.check_fits(info, jax.devices('cpu')[0])  # no limit on CPU: no refusal
