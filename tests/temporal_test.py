import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vaflax import checkpoint as ckpt_lib
from vaflax.models import resnet, temporal


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_gru(x_TxD, Wi_Dx3H, bi_3H, Wh_Hx3H):
  """nnx.GRUCell's equations (flax/nnx/nn/recurrent.py): gates ordered r, z, n; the input
  projection has a bias, the recurrent one does not; n = tanh(x_n + r * h_n)."""
  H = Wh_Hx3H.shape[0]
  h = np.zeros(H)
  out = []
  for x in x_TxD:
    xi, hh = x @ Wi_Dx3H + bi_3H, h @ Wh_Hx3H
    r = _sigmoid(xi[:H] + hh[:H])
    z = _sigmoid(xi[H:2 * H] + hh[H:2 * H])
    n = np.tanh(xi[2 * H:] + r * hh[2 * H:])
    h = (1.0 - z) * n + z * h
    out.append(h)
  return np.stack(out)


def _cell_params(rnn):
  c = rnn.cell
  return (np.asarray(c.dense_i.kernel[...], np.float64), np.asarray(c.dense_i.bias[...], np.float64),
          np.asarray(c.dense_h.kernel[...], np.float64))


def test_bigru_against_numpy_reference_with_lengths():
  gru = temporal.BiGRU(3, 4, rngs=nnx.Rngs(0))
  x = np.random.default_rng(0).normal(size=(2, 6, 3)).astype(np.float32)
  lengths = np.array([6, 4], np.int32)
  y = np.asarray(jax.jit(lambda m, a, n: m(a, n))(gru, jnp.asarray(x), jnp.asarray(lengths)))
  assert y.shape == (2, 6, 8)
  fwd, bwd = _cell_params(gru.rnn.forward_rnn), _cell_params(gru.rnn.backward_rnn)
  for b in range(2):
    n = lengths[b]
    xb = x[b, :n].astype(np.float64)
    # Forward half: frames 0..t. Backward half: frames n-1..t (padding after n never read).
    np.testing.assert_allclose(y[b, :n, :4], np_gru(xb, *fwd), atol=1e-5)
    np.testing.assert_allclose(y[b, :n, 4:], np_gru(xb[::-1], *bwd)[::-1], atol=1e-5)


def test_window_lengths():
  fm = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], np.float32)
  np.testing.assert_array_equal(np.asarray(temporal.window_lengths(jnp.asarray(fm))), [4, 2, 3, 4])


def _tiny(**kw):
  return temporal.Model(depth=18, width=8, head_hidden=8, gru_hidden=4, rngs=nnx.Rngs(0), **kw)


def _frames(b=2, t=5, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (b, t, 32, 32, 3)).astype(np.float32)


def test_output_at_frame_t_depends_on_later_frames_but_not_padding():
  m = _tiny()
  m.eval()  # BatchNorm on running averages: frames do not interact through batch statistics
  frames = _frames()
  fm = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.float32)
  apply = nnx.jit(lambda m, x: m({'frames': x, 'frame_mask': jnp.asarray(fm)}))
  out = apply(m, jnp.asarray(frames))
  assert out['va'].shape == (2, 5, 2) and out['va_logits'].shape == (2, 5, 2, 20)
  assert np.all(np.abs(np.asarray(out['va'])) < 1)
  later = frames.copy()
  later[0, 4] = -later[0, 4]  # last frame of a full window
  later[1, 4] = -later[1, 4]  # a padding frame of the short window
  out2 = apply(m, jnp.asarray(later))
  d = np.abs(np.asarray(out2['va']) - np.asarray(out['va'])).max(-1)
  assert np.all(d[0, :4] > 1e-7)  # bidirectional: frame 0 sees frame 4 through the backward GRU
  np.testing.assert_array_equal(d[1, :3], 0.0)  # the backward GRU starts at the last real frame


def test_parameter_paths_match_the_cnn_for_init_from():
  cnn = nnx.eval_shape(
      lambda: resnet.Model(depth=18, width=8, head_hidden=8, num_bins=20, rngs=nnx.Rngs(0)))
  cnn_flat = {p: v.get_value().shape for p, v in nnx.to_flat_state(nnx.state(cnn))}
  t_flat = {p: v.get_value().shape for p, v in nnx.to_flat_state(nnx.state(nnx.eval_shape(_tiny)))}
  shared = [p for p in t_flat if p[0] in ('backbone', 'head')]
  assert len(shared) > 50
  for p in shared:
    assert cnn_flat[p] == t_flat[p], p


@pytest.mark.parametrize('num_bins', [0, 20])
def test_residual_model_starts_at_the_cnn_then_reads_the_window(num_bins):
  """residual=True: with the CNN's weights loaded, the output at step 0 is the CNN's per-frame
  prediction exactly (zero-initialised correction); a non-zero correction makes frame t depend
  on the other frames of the window."""
  cnn = resnet.Model(depth=18, width=8, head_hidden=8, num_bins=num_bins, rngs=nnx.Rngs(1))
  m = _tiny(num_bins=num_bins, residual=True)
  report = ckpt_lib.transfer_weights(ckpt_lib.flat_weights(cnn), m)
  assert 'head/out/kernel' in report.loaded
  cnn.eval()
  m.eval()
  frames = jnp.asarray(_frames())
  per_frame = nnx.jit(lambda c, x: c({'image': x})['va'])(cnn, frames.reshape(-1, 32, 32, 3))
  apply = nnx.jit(lambda m, x: m({'frames': x})['va'])
  np.testing.assert_allclose(np.asarray(apply(m, frames)).reshape(-1, 2), np.asarray(per_frame),
                             atol=1e-6)
  m.correction.kernel[...] = jnp.asarray(
      np.random.default_rng(0).normal(size=m.correction.kernel.shape), jnp.float32)
  later = frames.at[:, 4].multiply(-1.0)
  d = np.abs(np.asarray(apply(m, later)) - np.asarray(apply(m, frames)))
  assert np.all(d[:, 0] > 1e-7)  # frame 0 now sees frame 4


def _loop_step(graphdef, batch):
  """The train loop's pattern: jax.jit over nnx.merge + model.train() + nnx.value_and_grad."""

  @jax.jit
  def step(state):
    m = nnx.merge(graphdef, state)
    m.train()
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(batch)['va'] - 0.5) ** 2))(m)
    return loss, nnx.state(grads), nnx.state(m)

  return step




def test_cnn_rnn_recipe_trains_the_cnn_then_the_gru_on_its_frozen_features(tmp_path):
  from configs import resnet_gru_va  # noqa: PLC0415
  from vaflax import recipes, stages  # noqa: PLC0415

  c = resnet_gru_va.get_config('runlocal')
  c.model.width = 24  # one override reaches both stages (the CNN's size is linked)
  cnn, gru = stages.plan(recipes.get('cnn_rnn'), c, str(tmp_path))
  assert (cnn.name, gru.name) == ('cnn', 'cnn_rnn')
  assert cnn.config.model_name == 'resnet' and cnn.config.input.window == 0
  assert gru.config.model_name == 'temporal' and gru.config.input.window == 8
  assert 'cnn' not in gru.config and gru.config.recipe == ''
  for key in ('depth', 'width', 'head_hidden'):
    assert cnn.config.model[key] == gru.config.model[key], key
  assert cnn.config.model.width == 24 and cnn.config.image_size == gru.config.image_size == 64
  assert gru.config.init_from == str(tmp_path / 'cnn')
  assert gru.config.frozen == '(backbone|head)(/|$)'
  # runlocal: our residual head; the paper config keeps Deng et al.'s plain GRU head.
  assert gru.config.model.residual and not resnet_gru_va.get_config().model.residual
  # A trained CNN given: no CNN stage.
  c.init_from = '/somewhere/cnn'
  (only,) = stages.plan(recipes.get('cnn_rnn'), c, str(tmp_path))
  assert only.name == 'cnn_rnn' and only.config.init_from == '/somewhere/cnn'
  rec = recipes.cnn_rnn_summary(c, str(tmp_path), {
      'cnn': {'val/ccc_valence': 0.5, 'step': 3}, 'cnn_rnn': {'val/ccc_valence': 0.7}})
  assert rec == {'cnn/val/ccc_valence': 0.5, 'val/ccc_valence': 0.7}
