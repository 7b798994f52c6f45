"""Fusion-stage train step with cached speech features against running the encoder every step.

  python benchmarks/speech_fusion_step.py --encoder=RUN [--batch=8 --window=8 --steps=5]

RUN is a speech encoder run (python -m vaflax.convert --format=speech). Both models are the
mae_va:runlocal fusion (frozen 'mu' ViT at 48 px, 2-block temporal Transformer of width 64);
'cached' reads batch['speech'] (B, T, I, D) as the recipe does (vaflax/speech_features.py),
'uncached' holds the encoder and runs it on batch['audio'] (B, T, 640) inside the step. The step
is value_and_grad of a CCC-style loss over the trainable parameters (not the ViT, not the
encoder), jitted; the median over --steps runs after one warm-up is printed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs import mae_va
from vaflax import runs
from vaflax.models import fusion


def step_time(model, batch, steps: int) -> float:
  trainable = nnx.All(nnx.Param, nnx.Not(nnx.PathContains('visual')),
                      nnx.Not(nnx.PathContains('encoder')))
  model.eval()  # no dropout: the rng counters would be mutated inside the trace
  graphdef, params, rest = nnx.split(model, trainable, ...)

  @jax.jit
  def step(params, rest, batch):
    def loss(p):
      out = nnx.merge(graphdef, p, rest)(batch)
      return jnp.mean(jnp.square(out['va'] - batch['va']))
    return jax.value_and_grad(loss)(params)

  jax.block_until_ready(step(params, rest, batch))
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(step(params, rest, batch))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--encoder', required=True)
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--window', type=int, default=8)
  p.add_argument('--steps', type=int, default=5)
  args = p.parse_args()
  enc = runs.load_config(args.encoder).model.to_dict()
  c = mae_va.get_config(f'runlocal,audio=speech,audio_init={args.encoder}').fusion
  c.model.max_len = max(c.model.max_len, args.window)
  kwargs = c.model.to_dict()
  g = np.random.default_rng(0)
  b, t = args.batch, args.window
  batch = {'frames': jnp.asarray(g.uniform(-1, 1, (b, t, 48, 48, 3)), jnp.float32),
           'va': jnp.asarray(g.uniform(-1, 1, (b, t, 2)), jnp.float32),
           'speech': jnp.asarray(g.standard_normal(
               (b, t, enc['num_layers'] + 1, enc['hidden_size'])), jnp.float32),
           'audio': jnp.asarray(g.standard_normal((b, t, 640)), jnp.float32)}
  cached = fusion.Model(**kwargs, rngs=nnx.Rngs(0))
  kwargs['speech'] = dict(kwargs['speech'], encoder=enc)
  uncached = fusion.Model(**kwargs, rngs=nnx.Rngs(0))
  n_enc = sum(x.size for x in jax.tree.leaves(nnx.state(uncached.audio.encoder, nnx.Param)))
  tc = step_time(cached, batch, args.steps)
  tu = step_time(uncached, batch, args.steps)
  print(f'encoder {args.encoder}: {n_enc / 1e6:.1f}M parameters, batch {b} x {t} frames '
        f'({t * 640 / 16000:.2f} s of audio per window)')
  print(f'cached features: {tc * 1e3:.1f} ms/step; encoder every step: {tu * 1e3:.1f} ms/step '
        f'({tu / tc:.1f}x)')


if __name__ == '__main__':
  main()
