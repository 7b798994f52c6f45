"""Tests for vaflax.plots: every plot writes a PNG of the requested pixel size that PIL opens."""

import json

import numpy as np
import pytest
from PIL import Image

from vaflax import circumplex, plots


def check_png(path, size):
  with Image.open(path) as im:
    assert im.format == 'PNG'
    assert im.size == size
    pixels = np.asarray(im.convert('L'))
  assert pixels.std() > 0  # something was drawn, not a blank canvas


@pytest.fixture
def va():
  rng = np.random.default_rng(0)
  target = np.tanh(rng.normal(size=(200, 2)))
  return np.clip(target + 0.2 * rng.normal(size=target.shape), -1, 1), target


def test_circumplex_scatter(tmp_path, va):
  pred, target = va
  mask = np.ones(len(pred))
  mask[:10] = 0
  out = plots.circumplex_scatter(tmp_path / 'sub' / 'c.png', pred, target, mask=mask, title='t',
                                 size=(500, 480))
  assert out == tmp_path / 'sub' / 'c.png'
  check_png(out, (500, 480))


def test_va_scatter(tmp_path, va):
  pred, target = va
  check_png(plots.va_scatter(str(tmp_path / 's.png'), pred, target, size=(800, 400)), (800, 400))


def test_confusion_heatmap(tmp_path, va):
  pred, target = va
  cm = circumplex.quadrant_confusion(circumplex.va_to_quadrant(target),
                                     circumplex.va_to_quadrant(pred))
  check_png(plots.confusion_heatmap(tmp_path / 'cm.png', cm), (640, 560))
  check_png(plots.confusion_heatmap(tmp_path / 'cm2.png', cm, normalise=False, size=(300, 300)),
            (300, 300))
  with pytest.raises(ValueError, match='class names'):
    plots.confusion_heatmap(tmp_path / 'x.png', cm, ['a', 'b'])


def test_va_over_time_and_trajectory(tmp_path):
  t = np.arange(100) / 25.0
  va = np.stack([np.sin(t), 0.5 * np.cos(2 * t)], 1)
  check_png(plots.va_over_time(tmp_path / 'time.png', t, va, target_va=0.9 * va), (960, 420))
  check_png(plots.circumplex_trajectory(tmp_path / 'traj.png', va, t), (640, 640))
  with pytest.raises(ValueError, match='time_s'):
    plots.va_over_time(tmp_path / 'bad.png', t[:5], va)


def test_training_curves(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  with open(path, 'w') as f:
    for step in range(1, 21):
      f.write(json.dumps({'step': step, 'train/loss': 2.0 / step, 'train/lr': 1e-3}) + '\n')
      if step % 5 == 0:
        rec = {'step': step, 'eval/ccc_mean': step / 25, 'eval/pcc_mean': None}
        f.write(json.dumps(rec) + '\n')
  series = plots.read_metrics_jsonl(path)
  assert sorted(series) == ['eval/ccc_mean', 'train/loss', 'train/lr']  # null values dropped
  np.testing.assert_array_equal(series['eval/ccc_mean'][0], [5, 10, 15, 20])
  check_png(plots.training_curves(tmp_path / 'curves.png', path), (1000, 440))
  check_png(plots.training_curves(tmp_path / 'c2.png', path, keys=['eval/ccc_mean'],
                                  size=(400, 300)), (400, 300))
  with pytest.raises(ValueError, match='no numeric series'):
    plots.training_curves(tmp_path / 'c3.png', path, keys=['nope'])
