"""Tests for vaflax/models/fusion.py and vaflax/tasks/fusion.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vaflax import checkpoint, losses
from vaflax.models import fusion, vit
from vaflax.tasks import fusion as fusion_task

VISUAL = dict(variant='mu/8', image_size=16)
AUDIO = dict(n_mels=8, n_fft=128, frames_per_video_frame=2, width=16, num_layers=1)
B, T, S = 2, 5, 160


def _model(**kw):
  args = dict(visual=VISUAL, audio=AUDIO, width=16, num_layers=2, num_heads=2, max_len=8)
  args.update(kw)
  m = fusion.Model(**args, rngs=nnx.Rngs(0))
  # Non-zero head so that the output depends on its inputs (the default head starts at 0).
  m.head.out.kernel[...] = jnp.asarray(np.random.default_rng(9).normal(size=(16, 2)), jnp.float32)
  m.eval()  # the audio BatchNorm uses running statistics: outputs are per-example functions
  return m


@nnx.jit
def _apply(model, batch):
  return model(batch)


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), {
      'frames': rng.uniform(-1, 1, (B, T, 16, 16, 3)),
      'audio': 0.1 * rng.normal(size=(B, T, S)),
      'va': rng.uniform(-1, 1, (B, T, 2)),
  })


@pytest.mark.slow
def test_audio_changes_output_only_with_audio():
  batch = _batch()
  louder = dict(batch, audio=batch['audio'].at[:, 2].multiply(5.0))  # change frame 2's audio
  av = _model()
  out = _apply(av, batch)['va']
  assert out.shape == (B, T, 2)
  diff = np.abs(np.asarray(_apply(av, louder)['va'] - out)).max(axis=(0, 2))
  assert np.all(diff > 1e-4), diff  # temporal attention spreads the change to every frame
  video_only = _model(use_audio=False)
  ref = _apply(video_only, batch)['va']
  np.testing.assert_array_equal(_apply(video_only, louder)['va'], ref)
  no_audio = {k: v for k, v in batch.items() if k != 'audio'}
  np.testing.assert_array_equal(_apply(video_only, no_audio)['va'], ref)
  with pytest.raises(KeyError, match="batch\\['audio'\\]"):
    av(no_audio)


def test_visual_dropout_drops_whole_windows_in_training_only():
  """In training, a dropped window's output does not depend on its frames (its visual features
  are zero); a kept one's does. In evaluation every window depends on its frames."""
  rng = np.random.default_rng(3)
  n = 8
  batch = {'frames': jnp.asarray(rng.uniform(-1, 1, (n, 3, 16, 16, 3)), jnp.float32),
           'audio': jnp.asarray(0.1 * rng.normal(size=(n, 3, S)), jnp.float32)}
  other = dict(batch, frames=jnp.asarray(rng.uniform(-1, 1, (n, 3, 16, 16, 3)), jnp.float32))
  m = _model(visual_dropout=0.5)
  m.train()
  graphdef, state = nnx.split(m)

  def run(b):  # the same dropout draw for both batches: a fresh copy of the rng state
    mm = nnx.merge(graphdef, jax.tree.map(jnp.copy, state))
    return np.asarray(_apply(mm, b)['va'])

  changed = np.abs(run(batch) - run(other)).max(axis=(1, 2)) > 1e-6
  assert 0 < changed.sum() < n, changed  # some windows dropped, some kept (seeded draw)
  m.eval()
  changed_eval = np.abs(np.asarray(_apply(m, batch)['va'] - _apply(m, other)['va'])).max(axis=(1, 2))
  assert np.all(changed_eval > 1e-6)
  with pytest.raises(ValueError, match='visual_dropout'):
    _model(visual_dropout=1.0)


def test_frames_change_output():
  av = _model()
  batch = _batch()
  other = dict(batch, frames=batch['frames'].at[:, 3].set(0.0))
  assert not np.allclose(_apply(av, other)['va'], _apply(av, batch)['va'])


def test_load_visual_from_fine_tuned_vit():
  va_vit = vit.Model(**VISUAL, rngs=nnx.Rngs(42))
  model = _model()
  checkpoint.transfer_weights(checkpoint.flat_weights(va_vit), model, [('encoder', 'visual')])
  frames = _batch()['frames']
  feats = model.visual_features(frames)
  ref = va_vit({'image': frames.reshape(B * T, 16, 16, 3)})['features'].reshape(B, T, -1)
  np.testing.assert_allclose(feats, ref, rtol=1e-5, atol=1e-6)
  with pytest.raises(checkpoint.CheckpointMismatchError, match='visual/patch_embed/kernel'):
    checkpoint.transfer_weights(
        checkpoint.flat_weights(vit.Model(variant='mu/4', image_size=16, rngs=nnx.Rngs(0))),
        model, [('encoder', 'visual')])


def test_loss_fn_is_masked_ccc():
  model = _model()
  batch = _batch()
  va_mask = np.ones((B, T), np.float32)
  va_mask[0, 3:] = 0.0
  batch['va_mask'] = jnp.asarray(va_mask)
  batch['va'] = batch['va'].at[0, 4].set(jnp.nan)  # an invalid frame may hold anything
  loss, metrics = fusion_task.loss_fn(model, batch, None)
  pred = np.asarray(fusion_task.predict_fn(model, batch)['va']).reshape(-1, 2)
  keep = va_mask.reshape(-1) > 0
  p, t = pred[keep], np.asarray(batch['va']).reshape(-1, 2)[keep]

  def ccc(x, y):
    return 2 * np.cov(x, y, ddof=0)[0, 1] / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)

  ref = [ccc(p[:, 0], t[:, 0]), ccc(p[:, 1], t[:, 1])]
  np.testing.assert_allclose([metrics['ccc_valence'], metrics['ccc_arousal']], ref, rtol=1e-4)
  np.testing.assert_allclose(loss, 2 - sum(ref), rtol=1e-4)
  same, _ = losses.ccc_loss(jnp.asarray(pred.reshape(B, T, 2)), batch['va'],
                            jnp.broadcast_to(batch['va_mask'][..., None], (B, T, 2)))
  np.testing.assert_allclose(loss, same, rtol=1e-6)


def test_errors():
  model = _model()
  batch = _batch()
  with pytest.raises(ValueError, match='max_len'):
    model({'frames': jnp.zeros((1, 9, 16, 16, 3)), 'audio': jnp.zeros((1, 9, S))})
  with pytest.raises(ValueError, match=r"batch\['audio'\]"):
    model(dict(batch, audio=batch['audio'][:, :3]))
  with pytest.raises(KeyError, match="batch\\['frames'\\]"):
    model({'audio': batch['audio']})
