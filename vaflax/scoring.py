"""Scoring a model on a dataset split: the jitted evaluation forward and the pooled metrics.

`make_eval_step` is a run's evaluation forward (its task's predictions under the run's rules,
flip TTA included: vaflax/tasks/__init__.py `predict_fn`), `score` pools its outputs over a whole split
(ABAW protocol), and `score_split` does both for a restored run. The training loop scores its
evaluation split with the same two functions after every evaluation interval; evaluate and the
recipes' test-split scores call `score_split`. Nothing here imports the training layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vaflax import circumplex, cpu, sharding, tasks
from vaflax import metrics as metrics_lib
from vaflax.data import sources


def make_eval_step(config, graphdef, model_sharding, mesh):
  """jit of (model state, batch) -> the arrays `score` pools, from the task's predictions
  under the run's evaluation rules (`tasks.predict_fn`: flip TTA when config.eval.flip_tta)."""
  predict_fn = tasks.predict_fn(config)

  def eval_step(model_state, batch):
    model = nnx.merge(graphdef, model_state)
    model.eval()
    out = predict_fn(model, batch, config)
    res = {'eval_mask': batch['eval_mask']}
    if 'va' in out:
      em = jnp.reshape(batch['eval_mask'], batch['eval_mask'].shape + (1,) * (batch['va_mask'].ndim - 1))
      res.update(pred=out['va'], va=batch['va'], mask=batch['va_mask'] * em,
                 video=batch['video'], index=batch['index'])
      # Further VA predictions scored on their own (distillation: teacher, each student).
      res.update({f'member/{k}': v for k, v in out.get('va_members', {}).items()})
    # Per-example scalars named eval_<x> (e.g. the MAE reconstruction loss) become val/<x>.
    res.update({k: v for k, v in out.items() if k.startswith('eval_') or k == 'quadrant_logits'})
    return res

  return jax.jit(eval_step, in_shardings=(model_sharding, sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh),
                 compiler_options=cpu.compiler_options(mesh.devices.flat[0].platform))


def score(eval_step, mesh, model_state, batches, prefix: str = 'val/') -> tuple[dict, dict]:
  """Metrics over the whole split and the raw per-frame arrays (`eval_step`: make_eval_step's;
  `batches`: host batches with an `eval_mask`, e.g. sources.EvalData).

  VA metrics are pooled over all valid frames (ABAW protocol; windows are flattened to frames);
  a task's further VA predictions (`va_members`) are scored the same way under their name;
  eval_<x> per-example outputs are averaged over the real (unpadded) examples.
  """
  cols: dict[str, list] = {}
  for batch in batches:
    out = jax.device_get(eval_step(model_state, sharding.to_global(batch, mesh)))
    for k, v in out.items():
      cols.setdefault(k, []).append(np.asarray(v))
  cat = {k: np.concatenate(v) for k, v in cols.items()}
  results = {}
  arrays = {}
  if 'pred' in cat:
    arrays = {k: (cat[k].reshape(-1, 2) if k in ('pred', 'va', 'mask') else cat[k].reshape(-1))
              for k in ('pred', 'va', 'mask', 'video', 'index')}
    keep = arrays['mask'].max(-1) > 0
    results.update(metrics_lib.va_metrics(arrays['pred'][keep], arrays['va'][keep],
                                          arrays['mask'][keep], video_ids=arrays['video'][keep]))
    results.update(circumplex.va_quadrant_metrics(arrays['pred'][keep], arrays['va'][keep],
                                                  arrays['mask'][keep]))
    if 'quadrant_logits' in cat:  # the 4-way head, scored against the target's quadrant
      q_pred = cat['quadrant_logits'].argmax(-1).reshape(-1)
      q_true = circumplex.va_to_quadrant(arrays['va'])
      q_true = np.where(arrays['mask'].min(-1) > 0, q_true, circumplex.NO_LABEL)
      results.update({k.replace('quadrant_', 'quadrant_head_'): v
                      for k, v in circumplex.quadrant_metrics(q_true, q_pred).items()})
      arrays['quadrant_pred'] = q_pred
    for k in (k for k in cat if k.startswith('member/')):
      pred = cat[k].reshape(-1, 2)[keep]
      results.update({f'{k[len("member/"):]}/{m}': v for m, v in metrics_lib.va_metrics(
          pred, arrays['va'][keep], arrays['mask'][keep], video_ids=arrays['video'][keep]).items()})
  em = cat['eval_mask']
  for k, v in cat.items():
    if k.startswith('eval_') and k != 'eval_mask':
      results[k[len('eval_'):]] = float(np.sum(v * em) / max(np.sum(em), 1.0))
  return {prefix + k: v for k, v in results.items()}, arrays


def score_split(run, split: str, *, dataset: str | None = None, prefix: str = '',
                process_index: int | None = None, process_count: int | None = None):
  """(metrics, per-frame arrays, the EvalData read) of a restored run (vaflax/runs.py) on `split`
  of `dataset` (default: the first of the run's config.input.dataset), read with the run's own
  evaluation preprocessing. The one way a finished run or stage is scored: vaflax.evaluate and
  the recipes' test-split scores call it."""
  pidx = jax.process_index() if process_index is None else process_index
  pcount = jax.process_count() if process_count is None else process_count
  data = sources.EvalData(run.config, split, dataset=dataset, process_index=pidx,
                          process_count=pcount)
  eval_step = make_eval_step(run.config, run.graphdef, run.state_sharding, run.mesh)
  metrics, arrays = score(eval_step, run.mesh, run.state, data, prefix=prefix)
  return metrics, arrays, data
