"""Tests for vaflax/tta.py."""

import numpy as np
import pytest

from vaflax import tta


def test_flip_tta_averages_image_and_mirror():
  def fake_predict(model, batch, config):
    x = batch['image'] if 'image' in batch else batch['frames']
    # Depends on the left-right layout: column 0 differs from the last column.
    va = np.stack([x[..., 0, 0] * 2.0, x[..., -1, 1]], -1)
    return {'va': va, 'quadrant_logits': np.concatenate([va, -va], -1), 'other': 1}

  rng = np.random.default_rng(0)
  img = rng.normal(size=(3, 4, 5, 3)).astype(np.float32)  # (B, H, W, C)
  out = tta.flip_tta(fake_predict)(None, {'image': img}, None)
  mirror = img[:, :, ::-1]
  want = 0.5 * (np.stack([img[:, :, 0, 0] * 2, img[:, :, -1, 1]], -1)
                + np.stack([mirror[:, :, 0, 0] * 2, mirror[:, :, -1, 1]], -1))
  np.testing.assert_allclose(out['va'], want, rtol=1e-6)
  np.testing.assert_allclose(out['quadrant_logits'][..., :2], want, rtol=1e-6)
  assert out['other'] == 1
  frames = rng.normal(size=(2, 3, 4, 5, 3)).astype(np.float32)  # (B, T, H, W, C)
  out = tta.flip_tta(fake_predict)(None, {'frames': frames}, None)
  fm = frames[..., ::-1, :]
  want = 0.5 * (np.stack([frames[..., 0, 0] * 2, frames[..., -1, 1]], -1)
                + np.stack([fm[..., 0, 0] * 2, fm[..., -1, 1]], -1))
  np.testing.assert_allclose(out['va'], want, rtol=1e-6)
  with pytest.raises(KeyError, match='image'):
    tta.flip_tta(fake_predict)(None, {'audio': img}, None)


def test_unmirror_maps_the_mirror_output_back():
  def fake_predict(model, batch, config):
    x = batch['image']
    return {'va': x[:, :1, 0, :2], 'map': x[..., 0], 'kept': x[..., 1]}

  img = np.random.default_rng(1).normal(size=(2, 3, 4, 3)).astype(np.float32)
  out = tta.flip_tta(fake_predict, {'map': lambda m: m[..., ::-1]})(None, {'image': img}, None)
  # The map of the mirror, mirrored back, is the original's: the mean is the map itself.
  np.testing.assert_allclose(out['map'], img[..., 0], rtol=1e-6)
  np.testing.assert_array_equal(out['kept'], img[..., 1])  # not invariant, no unmirror: kept
  np.testing.assert_allclose(out['va'], 0.5 * (img[:, :1, 0, :2] + img[:, :1, -1, :2]), rtol=1e-6)


def test_the_run_config_is_the_one_switch(monkeypatch):
  """tasks.predict_fn wraps a task's predictions with flip TTA exactly when
  config.eval.flip_tta, and leaves a task that mirrors itself (EmoFAN) alone."""
  import ml_collections  # noqa: PLC0415

  from vaflax import tasks  # noqa: PLC0415

  def probe(model, batch, config):
    return {'va': batch['image'][:, 0, :2, 0]}  # columns 0 and 1: not mirror-symmetric

  for name, mirrors_itself in (('tta_probe', False), ('tta_probe_self', True)):
    # monkeypatch: the probe tasks leave tasks.TASKS when the test ends
    monkeypatch.setitem(tasks.TASKS, name, tasks.Task(name, None, probe,
                                                      mirrors_itself=mirrors_itself))
  img = np.arange(2 * 3 * 4 * 1, dtype=np.float32).reshape(2, 3, 4, 1)
  plain, mirrored = img[:, 0, :2, 0], img[:, 0, ::-1][:, :2, 0]
  for name, flip, want in (('tta_probe', False, plain),
                           ('tta_probe', True, 0.5 * (plain + mirrored)),
                           ('tta_probe_self', True, plain)):
    c = ml_collections.ConfigDict(dict(task=name, eval=dict(flip_tta=flip)))
    np.testing.assert_allclose(tasks.predict_fn(c)(None, {'image': img}, c)['va'], want)
  old = ml_collections.ConfigDict(dict(task='tta_probe'))  # a run from before the field
  assert tta.enabled(old) is False
  np.testing.assert_allclose(tasks.predict_fn(old)(None, {'image': img}, old)['va'], plain)
