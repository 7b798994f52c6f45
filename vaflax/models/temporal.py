"""CNN-RNN for per-frame valence/arousal over windows of frames (Deng, Chen, Shi 2020).

Each frame goes through the ResNet and the first layer of the CNN's MLP head (a 128-d face
embedding); a bidirectional GRU (64 units per direction) runs over the window; a per-frame linear
layer gives 20-bin logits per dimension, decoded as the softmax expectation over the bin centres.
As in the authors' code (Multitask-CNN-RNN: `Seq_Model` over the head features, `GRU_Head` =
bi-GRU(128 -> 64) -> ReLU -> Linear) the GRU reads the head's hidden features, not the 2048-d
pooled backbone features.

`residual=True` (ours, not Deng et al.'s): the CNN's own readout is kept (`head/out`, loaded
and frozen with the rest of the CNN) and the GRU only adds a correction to its raw outputs
(tanh input, or bin logits) through a zero-initialised linear layer, so the CNN-RNN starts
exactly at the CNN's per-frame prediction and learns only what the window adds
(docs/deng2020.md, issue 17).

Parameter paths `backbone/...` and `head/hidden/...` equal those of `resnet.Model`, so
`config.init_from=<CNN workdir>` loads the trained CNN; configs/resnet_gru_va.py then freezes
it with config.frozen (no gradient, BatchNorm on its running averages, head dropout off), as the
paper's `--frozen`.
"""

from __future__ import annotations

import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from vaflax import losses
from vaflax.models import heads, resnet


class BiGRU(nnx.Module):
  """Bidirectional GRU over (B, T, D) -> (B, T, 2R) (forward and backward states concatenated).

  The carries start at zero and the RNNs hold no rng stream (`rngs=False`): an NNX RNN that
  draws its initial carry from an rng stream cannot run inside a plain `jax.jit` over
  `nnx.merge` (flax raises TraceContextError: cannot mutate RngCount from a different trace
  level; tests/temporal_test.py runs that loop pattern), and a zero start is what PyTorch's
  nn.GRU does.
  """

  def __init__(self, in_features: int, hidden: int, *, rngs: nnx.Rngs):
    self.hidden = hidden
    self.rnn = nnx.Bidirectional(
        nnx.RNN(nnx.GRUCell(in_features, hidden, rngs=rngs), rngs=False),
        nnx.RNN(nnx.GRUCell(in_features, hidden, rngs=rngs), rngs=False),
        rngs=False)

  def __call__(self, x_BxTxD, lengths_B=None):
    h0_BxR = jnp.zeros((x_BxTxD.shape[0], self.hidden), jnp.float32)
    return self.rnn(x_BxTxD.astype(jnp.float32), initial_carry=(h0_BxR, h0_BxR),
                    seq_lengths=lengths_B)


def window_lengths(frame_mask_BxT):
  """Frames up to and including the last valid one: short videos are padded at the end of a
  window, and the backward GRU must start from the last real frame, not from the padding."""
  T = frame_mask_BxT.shape[1]
  last_B = jnp.max(jnp.where(frame_mask_BxT > 0, jnp.arange(1, T + 1), 0), axis=1)
  return jnp.where(last_B > 0, last_B, T).astype(jnp.int32)  # an all-padding window: run it all


class Model(nnx.Module):
  """frames (B, T, H, W, 3) -> va (B, T, 2) [+ va_logits (B, T, 2, K)]."""

  def __init__(self, *, depth: int = 50, width: int = 64, head_hidden: int = 128,
               gru_hidden: int = 64, num_bins: int = losses.NUM_VA_BINS,
               dropout: float = 0.0, dtype: str = 'float32', zero_init_residual: bool = False,
               remat: bool = False, residual: bool = False, rngs: nnx.Rngs):
    self.num_bins = num_bins
    self.residual = residual
    self.backbone = resnet.ResNet(depth, width=width, dtype=jnp.dtype(dtype),
                                  zero_init_residual=zero_init_residual, remat=remat, rngs=rngs)
    # The CNN's head: the frame embedding (parameter path head/hidden), and with `residual` its
    # readout too (head/out), whose raw outputs the GRU corrects.
    self.head = heads.VAHead(self.backbone.num_features, head_hidden, num_bins=num_bins,
                             readout=residual, dropout=dropout, rngs=rngs)
    self.gru = BiGRU(head_hidden, gru_hidden, rngs=rngs)
    if residual:
      # Zero-initialised: the model's output at step 0 is the CNN's, for any GRU weights.
      self.correction = nnx.Linear(2 * gru_hidden, self.head.out.out_features,
                                   kernel_init=nnx.initializers.zeros, rngs=rngs)
    else:
      self.out = heads.VAHead(2 * gru_hidden, num_bins=num_bins, rngs=rngs)

  def embed_frames(self, frames_BxTxHxWx3):
    B = frames_BxTxHxWx3.shape[0]
    x_BTxHxWx3 = rearrange(frames_BxTxHxWx3, 'b t h w c -> (b t) h w c')
    e_BTxD = self.head.embed(self.backbone(x_BTxHxWx3))
    return rearrange(e_BTxD, '(b t) e -> b t e', b=B)

  def __call__(self, batch):
    frames = batch['frames']
    if frames.ndim != 5:
      raise ValueError(f"temporal model needs batch['frames'] (B, T, H, W, 3), got {frames.shape}:"
                       ' set config.input.window = T > 0')
    e_BxTxD = self.embed_frames(frames)
    lengths_B = window_lengths(batch['frame_mask']) if 'frame_mask' in batch else None
    h_BxTx2R = nnx.relu(self.gru(e_BxTxD, lengths_B))
    if self.residual:
      # Raw readout outputs: 2K bin logits (K = 1 for the tanh head: the 2 tanh inputs).
      y_BxTx2K = self.head.out(e_BxTxD) + self.correction(h_BxTx2R)
      return dict(self.head.decode(y_BxTx2K), features=e_BxTxD)
    return dict(self.out(h_BxTx2R), features=e_BxTxD)
