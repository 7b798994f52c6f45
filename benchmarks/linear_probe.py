r"""Linear probe of a ViT encoder's frozen features for valence/arousal (issue 17).

  python benchmarks/linear_probe.py --workdir=W/pretrain [--data_dir=D] [--dataset=synthetic_va]

Does MAE pretraining learn features that carry VA? The encoder of a run (an MAE run's `encoder`,
a fine-tuned vit.Model's `encoder`, a fusion run's `visual`) and the same architecture at its
random initialisation (the config's seed) each embed every frame of the train and validation
splits (eval preprocessing, no augmentation). Per feature kind (gap: the mean patch token after
the final LayerNorm, as the fine-tuned model pools; cls: the class token; tokens: every patch
token, concatenated, which keeps where each feature is) a ridge regression is fitted on the
train frames (features standardised on train) and scored on validation with the ABAW metrics
(vaflax/metrics.py: pooled CCC and per-video CCC). The raw pixels get the same probe: the
reference any useful encoder should beat. One line per (encoder, pooling,
ridge strength); the best validation CCC per row is printed last. The validation split picks
the ridge strength, the same for both encoders, so the comparison stays fair.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vaflax import metrics, runs
from vaflax.data import sources

PP = ("standardize|resize({image_size})|value_range(-1, 1)|"
      "keep('image', 'va', 'va_mask', 'index', 'video')")
RIDGE = (1e0, 1e1, 1e2, 1e3, 1e4)


def encoder_of(model: nnx.Module):
  for name in ('encoder', 'visual'):
    if hasattr(model, name):
      return getattr(model, name)
  raise ValueError(f'{type(model).__name__} has no ViT encoder (encoder or visual)')


def embed_split(encoder, config, split: str, dataset: str):
  """{'gap': (N, D), 'cls': (N, D) or absent}, va (N, 2), mask (N, 2), video (N,)."""
  config = config.copy_and_resolve_references()
  config.batch_size = 64
  config.input.window = 0
  data = sources.EvalData(config, split, dataset=dataset, pp=PP)

  @jax.jit
  def fwd(state, images):
    enc = nnx.merge(graphdef, state)
    tokens = enc.encode_tokens(enc.embed(images))
    patches = tokens[:, enc.num_prefix:]
    out = {'gap': jnp.mean(patches, axis=1), 'tokens': patches.reshape(patches.shape[0], -1),
           'pixels': images.reshape(images.shape[0], -1)}
    if enc.num_prefix:
      out['cls'] = tokens[:, 0]
    return out

  graphdef, state = nnx.split(encoder)
  cols: dict[str, list] = {}
  for batch in data:
    keep = batch['eval_mask'] > 0
    out = jax.device_get(fwd(state, jnp.asarray(batch['image'])))
    for k, v in dict(out, va=batch['va'], mask=batch['va_mask'], video=batch['video']).items():
      cols.setdefault(k, []).append(np.asarray(v)[keep])
  return {k: np.concatenate(v) for k, v in cols.items()}


def ridge_scores(train, val, kind: str) -> list[dict]:
  x, xv = train[kind].astype(np.float64), val[kind].astype(np.float64)
  mu, sd = x.mean(0), x.std(0) + 1e-6
  x, xv = (x - mu) / sd, (xv - mu) / sd
  y = train['va'].astype(np.float64)
  ym = y.mean(0)
  rows = []
  dual = x.shape[1] > x.shape[0]  # more features than frames: solve in the N x N kernel form
  gram = x @ x.T if dual else x.T @ x
  for lam in RIDGE:
    a = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), (y - ym) if dual else x.T @ (y - ym))
    w = x.T @ a if dual else a
    m = metrics.va_metrics(xv @ w + ym, val['va'], val['mask'], video_ids=val['video'])
    mt = metrics.va_metrics(x @ w + ym, y, train['mask'])
    rows.append(dict(ridge=lam, train_ccc_v=mt['ccc_valence'], train_ccc_a=mt['ccc_arousal'],
                     **{k: m[k] for k in ('ccc_valence', 'ccc_arousal', 'per_video_ccc_valence',
                                          'per_video_ccc_arousal')}))
  return rows


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--workdir', required=True, help='an MAE, ViT or fusion run')
  ap.add_argument('--dataset', default='synthetic_va')
  ap.add_argument('--data_dir', default=None, help='TFDS data dir (default: the run\'s)')
  ap.add_argument('--json', action='store_true', help='one JSON line per result')
  args = ap.parse_args(argv)

  run = runs.load_run(args.workdir)
  config = run.config
  if args.data_dir:
    config.input.data_dir = args.data_dir
  trained = encoder_of(run.model())
  random_init = encoder_of(runs.make_model(config, nnx.Rngs(config.seed)))
  random_init.eval()
  best = []
  for name, enc in (('trained', trained), ('random_init', random_init)):
    train = embed_split(enc, config, 'train', args.dataset)
    val = embed_split(enc, config, 'validation', args.dataset)
    for kind in ('gap', 'cls', 'tokens') + (('pixels',) if name == 'trained' else ()):
      if kind not in train:
        continue
      rows = ridge_scores(train, val, kind)
      for r in rows:
        r = dict(encoder='none' if kind == 'pixels' else name, pool=kind, step=run.step, **r)
        print(json.dumps(r) if args.json else
              '  '.join(f'{k}={v:.3f}' if isinstance(v, float) else f'{k}={v}'
                        for k, v in r.items()), flush=True)
      top = max(rows, key=lambda r: r['ccc_valence'] + r['ccc_arousal'])
      best.append(('none' if kind == 'pixels' else name, kind, top))
  print('best ridge per (encoder, pool): val CCC valence / arousal (per-video)')
  for name, kind, r in best:
    print(f'  {name:12s} {kind}: {r["ccc_valence"]:.3f} / {r["ccc_arousal"]:.3f} '
          f'({r["per_video_ccc_valence"]:.3f} / {r["per_video_ccc_arousal"]:.3f}) '
          f'ridge {r["ridge"]:g}')


if __name__ == '__main__':
  main()
