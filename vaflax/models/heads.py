"""The one VA output head of the models."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from vaflax import circumplex, losses


class VAHead(nnx.Module):
  """features (..., F) -> [hidden layer] -> one linear readout -> va [+ logits].

  The hidden layer (when `hidden > 0`) is Linear -> [BatchNorm] -> ReLU -> [Dropout]; `hidden_norm`
  is EmoNet's head (Toisoul et al. 2021: Linear, BatchNorm1d, ReLU). The readout is one Linear whose
  outputs are, in order: valence/arousal (2, or 2 x K bin logits), 4 quadrant logits
  (`quadrant_head`), `num_emotions` emotion logits. With `num_bins == 0` `va` is tanh-bounded
  regression; with `num_bins > 0` (Deng et al. 2020: 20) `va_logits` are logits over equal-width
  bins on [-1, 1] per dimension and `va` is their softmax expectation over the bin centres.
  `bounded=False` drops the tanh (EmoNet's released head regresses VA unbounded).
  Quadrant logits follow vaflax.circumplex's ids 0-3.

  `readout=False` builds the hidden layer only: the frame embedding of a CNN-RNN (models/
  temporal.py), whose parameter path `head/hidden` then equals that of the CNN it starts from.
  """

  def __init__(self, in_features: int, hidden: int = 0, *, num_bins: int = 0,
               quadrant_head: bool = False, num_emotions: int = 0, readout: bool = True,
               hidden_norm: bool = False, dropout: float | None = 0.0, bounded: bool = True,
               kernel_init=nnx.initializers.lecun_normal(),
               out_init=nnx.initializers.lecun_normal(), param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    if not readout and not hidden:
      raise ValueError('VAHead(readout=False) needs a hidden layer (hidden > 0)')
    self.num_bins = num_bins
    self.num_quadrants = circumplex.NUM_QUADRANTS if quadrant_head else 0
    self.num_emotions = num_emotions
    self.bounded = bounded
    if hidden:
      self.hidden = nnx.Linear(in_features, hidden, param_dtype=param_dtype,
                               kernel_init=nnx.with_partitioning(kernel_init, ('embed', 'mlp')),
                               rngs=rngs)
      # PyTorch's BatchNorm1d defaults (momentum 0.1 = Flax 0.9, eps 1e-5), as EmoNet's.
      self.hidden_norm = (nnx.BatchNorm(hidden, momentum=0.9, epsilon=1e-5,
                                        param_dtype=param_dtype, rngs=rngs)
                          if hidden_norm else None)
    else:
      self.hidden = self.hidden_norm = None
    # dropout=None: no Dropout layer at all (EmoNet's head has none). A Dropout layer, even of
    # rate 0, holds an rng stream forked from `rngs`, which shifts the initialisation of the
    # layers built after it: the CNN heads keep theirs, as before this module was shared.
    self.dropout = (nnx.Dropout(dropout, rngs=rngs) if hidden and dropout is not None
                    else None)
    n_va = 2 * num_bins if num_bins else 2
    # A small layer: left replicated (no partitioning names), as sharding.py leaves small heads.
    self.out = (nnx.Linear(hidden or in_features, n_va + self.num_quadrants + num_emotions,
                           kernel_init=out_init, param_dtype=param_dtype, rngs=rngs)
                if readout else None)

  def embed(self, feats_xD):
    """The hidden layer's activations (the features themselves without one), float32."""
    h = feats_xD.astype(jnp.float32)
    if self.hidden is None:
      return h
    h = self.hidden(h)
    if self.hidden_norm is not None:
      h = self.hidden_norm(h)
    h = nnx.relu(h)
    return h if self.dropout is None else self.dropout(h)

  def readout(self, h_xD):
    return self.decode(self.out(h_xD))

  def decode(self, y):
    """The readout's raw outputs (..., n_out) -> va [+ logits]; models/temporal.py adds a
    correction to them before decoding (its residual head)."""
    n_va = 2 * self.num_bins if self.num_bins else 2
    out = {}
    if self.num_bins:
      logits_x2xK = y[..., :n_va].reshape(y.shape[:-1] + (2, self.num_bins))
      out['va_logits'] = logits_x2xK
      out['va'] = losses.binned_expectation(logits_x2xK)
    else:
      out['va'] = jnp.tanh(y[..., :n_va]) if self.bounded else y[..., :n_va]
    if self.num_quadrants:
      out['quadrant_logits'] = y[..., n_va:n_va + self.num_quadrants]
    if self.num_emotions:
      out['emotion_logits'] = y[..., n_va + self.num_quadrants:]
    return out

  def __call__(self, feats_xD):
    return self.readout(self.embed(feats_xD))
