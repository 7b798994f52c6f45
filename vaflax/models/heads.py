"""Output heads shared by the VA models."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from vaflax import losses

_dense_init = nnx.with_partitioning(nnx.initializers.lecun_normal(), ('embed', 'mlp'))


class VAHead(nnx.Module):
  """features (..., D) -> MLP -> valence/arousal.

  With `num_bins == 0` the output is tanh-bounded regression. With `num_bins > 0` (Deng et al.
  2020: 20) the head gives logits over equal-width bins on [-1, 1] per dimension, and `va` is
  their softmax expectation over the bin centres. `quadrant_head` adds 4-way quadrant logits
  (pleasant-activated, unpleasant-activated, unpleasant-calm, pleasant-calm).
  """

  def __init__(self, in_features: int, hidden: int, *, num_bins: int = 0,
               quadrant_head: bool = False, dropout: float = 0.0, rngs: nnx.Rngs):
    self.num_bins = num_bins
    self.hidden = nnx.Linear(in_features, hidden, kernel_init=_dense_init, rngs=rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.out = nnx.Linear(hidden, 2 * num_bins if num_bins else 2, rngs=rngs)
    self.quadrant = nnx.Linear(hidden, 4, rngs=rngs) if quadrant_head else None

  def __call__(self, feats_xD):
    h = self.dropout(nnx.relu(self.hidden(feats_xD.astype(jnp.float32))))
    out = {}
    y = self.out(h)
    if self.num_bins:
      logits = y.reshape(y.shape[:-1] + (2, self.num_bins))
      out['va_logits'] = logits
      out['va'] = losses.binned_expectation(logits)
    else:
      out['va'] = jnp.tanh(y)
    if self.quadrant is not None:
      out['quadrant_logits'] = self.quadrant(h)
    return out
