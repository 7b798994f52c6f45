"""The one generic train/evaluate loop of vaflax.

A task (vaflax/tasks.py, registered by a module of vaflax/trainers/) supplies the loss and the
predictions; a model module (vaflax/models/<config.model_name>.py) supplies `Model(...)`; the
optimizer, schedule and frozen parameters come from vaflax/optim.py; runs load through
vaflax/runs.py. Everything else is here: mesh, input, a jitted step with explicit shardings and
donated state, evaluation, checkpoints, preemption and logging.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from vaflax import aot, circumplex, optim, runs, sharding, tasks, writers
from vaflax import checkpoint as ckpt_lib
from vaflax import metrics as metrics_lib
from vaflax.data import pipeline

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again" -- what a requeue script looks for
NONFINITE_EXIT_CODE = 3


class NonFiniteError(RuntimeError):
  pass


class Preempted(SystemExit):
  def __init__(self, step):
    super().__init__(PREEMPTED_EXIT_CODE)
    self.step = step


# --- Set up workdir ---------------------------------------------------------------------------


def prepare_workdir(workdir: str, config) -> None:
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test_{jax.process_index()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise PermissionError(
        f'workdir {workdir} is not writable ({e.strerror}): choose another --workdir, or fix its '
        'permissions / free disk space') from None
  write_config(workdir, config)


def write_config(workdir: str, config) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


# --- Model and state ----------------------------------------------------------------------------

# XLA:CPU runs convolutions faster through Eigen than through its default YNNPACK fusions (a
# ResNet-18 train step takes ~9 % less time; benchmarks/RESULTS.md); reductions and dots stay on
# YNNPACK.
CPU_COMPILER_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type':
                        'LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_DOT'}


@functools.cache
def compiler_options(platform: str) -> dict | None:
  """XLA options for the jitted steps: CPU_COMPILER_OPTIONS on a CPU whose XLA knows them."""
  if platform != 'cpu':
    return None
  try:
    jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(1.0).compile()
  except Exception:  # noqa: BLE001 -- an XLA without these options: keep its defaults
    logging.warning('XLA does not take %s; using its defaults', CPU_COMPILER_OPTIONS)
    return None
  return CPU_COMPILER_OPTIONS


@dataclasses.dataclass
class Setup:
  """Everything a loop (or a benchmark) needs, built once from a config. `state` is the
  nnx.State of (model, optimizer): state[0] the model's, state[1] the optimizer's."""

  config: object
  mesh: object
  graphdef: object
  state: object
  state_sharding: object
  task: tasks.Task
  schedule: object
  steps_per_epoch: int
  total_steps: int
  train_step: object
  eval_step: object


def total_steps(config, steps_per_epoch: int) -> int:
  total = int(config.total_steps) or int(round(config.total_epochs * steps_per_epoch))
  if total <= 0:
    raise ValueError('set config.total_steps (or config.total_epochs) to a positive number')
  return total


def make_eval_step(config, graphdef, model_sharding, mesh):
  """jit of (model state, batch) -> the arrays `evaluate` pools, from the task's predictions
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
                 compiler_options=compiler_options(mesh.devices.flat[0].platform))


def make_setup(config, num_train_examples: int, mesh=None, init: bool = True) -> Setup:
  """With init=False the state is abstract (ShapeDtypeStructs with shardings): a restore target
  that skips compiling the initialisation (a resuming run)."""
  mesh = mesh or sharding.make_mesh(config.mesh)
  task = tasks.get(config.task)
  steps_per_epoch = max(1, num_train_examples // config.batch_size)
  total = total_steps(config, steps_per_epoch)
  schedule = optim.make_schedule(config, steps_per_epoch, total)
  tx = optim.make_optimizer(config, schedule)
  graphdef, state, state_sh = runs.build_state(config, mesh, tx, init=init)
  optim.check_frozen(config, state[0])
  diff = nnx.DiffState(0, optim.trainable(config))
  base_key = jax.random.key(config.seed)
  rep = sharding.replicated(mesh)

  def train_step(state, batch, step):
    old_leaves = jax.tree.leaves(state)
    model, opt = nnx.merge(graphdef, state)
    model.train()
    optim.set_frozen_modules_to_eval(model, config)
    rng = jax.random.fold_in(base_key, step)

    def lf(m):
      return task.loss_fn(m, batch, rng, config)

    (loss, metrics), grads = nnx.value_and_grad(lf, argnums=diff, has_aux=True)(model)
    gnorm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)
    opt.update(model, grads)
    new_leaves, treedef = jax.tree.flatten(nnx.state((model, opt)))
    # A non-finite step changes nothing: the state stays the last good one, for a skip or for
    # the checkpoint written before stopping.
    new_leaves = [jnp.where(ok, n, o) for n, o in zip(new_leaves, old_leaves, strict=True)]
    metrics = dict(metrics, loss=loss, grad_norm=gnorm, lr=schedule(step))
    return jax.tree.unflatten(treedef, new_leaves), metrics, ok

  copts = compiler_options(mesh.devices.flat[0].platform)
  train_step = jax.jit(train_step, in_shardings=(state_sh, sharding.batch_sharding(mesh), rep),
                       out_shardings=(state_sh, rep, rep), donate_argnums=0,
                       compiler_options=copts)
  model_graphdef = nnx.graphdef(nnx.merge(graphdef, state)[0])
  eval_step = make_eval_step(config, model_graphdef, state_sh[0], mesh)
  return Setup(config, mesh, graphdef, state, state_sh, task, schedule, steps_per_epoch,
               total, train_step, eval_step)


# --- Evaluation ---------------------------------------------------------------------------------


def evaluate(eval_step, mesh, model_state, eval_data, prefix: str = 'val/') -> tuple[dict, dict]:
  """Metrics over the whole split and the raw per-frame arrays (`eval_step`: make_eval_step's).

  VA metrics are pooled over all valid frames (ABAW protocol; windows are flattened to frames);
  a task's further VA predictions (`va_members`) are scored the same way under their name;
  eval_<x> per-example outputs are averaged over the real (unpadded) examples.
  """
  cols: dict[str, list] = {}
  for batch in eval_data:
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


# --- Train loop ---------------------------------------------------------------------------------


class _SigtermFlag:
  def __init__(self):
    self.set = False
    self._prev = None

  def __enter__(self):
    try:
      self._prev = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not in the main thread (e.g. under a test runner's thread)
      self._prev = None
    return self

  def _handle(self, signum, frame):
    logging.warning('SIGTERM received: finishing the current step, then checkpointing')
    self.set = True

  def __exit__(self, *exc):
    if self._prev is not None:
      signal.signal(signal.SIGTERM, self._prev)


def init_from(config, model_state) -> None:
  """Loads config.init_from into `model_state` in place, through the one weight transfer.

  config.init_from is one or more sources separated by ';', each a workdir of any vaflax run
  (vaflax/runs.py finds its stage) with an optional mapping after ':' of SOURCE=TARGET path
  prefixes (checkpoint.parse_mapping): 'W/mae:encoder=encoder', 'W/teacher:=teacher'. Target
  weights no source fills keep their initialisation; both lists are printed.
  """
  for source in filter(None, (s.strip() for s in config.init_from.split(';'))):
    path, _, mapping = source.partition(':')
    run = runs.load_run(path)
    report = ckpt_lib.transfer_weights(run.weights(), model_state, ckpt_lib.parse_mapping(mapping),
                                       source_name=f'init_from {run.workdir} step {run.step}')
    print(report.summary(), flush=True)


def _compiled_step(setup, state, gbatch, step_arg):
  """The train step compiled ahead of time, its memory estimate printed (vaflax/aot.py): a
  configuration that does not fit the device fails here, in seconds. Train batches have one
  shape (drop_remainder), so the loop calls the compiled step for every one of them."""
  compiled, info = aot.compile_step(setup, gbatch, step_arg, state)
  line = aot.check_fits(info, setup.mesh.devices.flat[0])
  logging.info('%s', line)
  if jax.process_index() == 0:
    print(line, flush=True)
  return compiled


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains config.task/config.model_name on config.input; returns the final eval metrics."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  prepare_workdir(workdir, config)
  pidx, pcount = jax.process_index(), jax.process_count()

  # Input pipeline
  train_ds, num_train = pipeline.make_train_dataset(config, pidx, pcount)
  # The crop the training data was cut with travels with the run: predict and vaflax.load cut
  # the same one (vaflax/predict/model.py). Known once the data is opened (synthetic_va is built
  # on first use), so config.json is written again with it.
  config.crop = pipeline.crop_spec(config)
  write_config(workdir, config)
  eval_data = (pipeline.EvalData(config, config.input.eval_split, process_index=pidx,
                                 process_count=pcount)
               if config.input.eval_split else None)

  # Model, optimizer, jitted steps. A run that resumes restores into an abstract state: no
  # throwaway initialisation (its compile, its device memory) before the restore.
  mngr = ckpt_lib.manager(os.path.join(workdir, 'checkpoints'), max_to_keep=config.max_to_keep)
  resuming = mngr.latest_step() is not None
  setup = make_setup(config, num_train, init=not resuming)
  state = setup.state
  train_iter = iter(train_ds)

  # Resume: workdir > init_from > scratch
  meta = {'model_name': config.model_name, 'task': config.task,
          'num_workers': config.input.num_workers, 'process_count': pcount}
  start_step = 0
  saved: dict = {}
  if resuming:
    run = runs.load_run(workdir, config=config, with_optimizer=True, mesh=setup.mesh,
                        data_iter=train_iter, expected_meta=meta)
    # The restored halves have the structure of state[0] and state[1]: put them back together.
    state = jax.tree.unflatten(jax.tree.structure(state),
                               jax.tree.leaves(run.state) + jax.tree.leaves(run.opt_state))
    saved = run.meta
    start_step = int(saved['step'])
    logging.info('resumed from %s step %d', workdir, start_step)
    print(f'Resuming from checkpoint at step {start_step} in {workdir}/checkpoints', flush=True)
  elif config.init_from:
    init_from(config, state[0])

  writer = writers.MetricWriter(workdir, tensorboard=config.tensorboard)
  total = setup.total_steps
  progress = writers.Progress(total, start_step)
  log_every = config.log_every_steps
  eval_every = config.eval_every_steps or total
  ckpt_every = config.checkpoint_every_steps or total
  skip_nonfinite = config.skip_nonfinite
  # Metrics of steps not logged yet and the skip count travel in the checkpoint, so a resumed
  # run logs the same numbers as an uninterrupted one.
  num_skipped = int(saved.get('num_skipped', 0))
  history, last = list(saved.get('pending_metrics', [])), None
  final_metrics: dict = {}

  def save(step, force=False):
    pending = [{k: float(v) for k, v in h.items()} for h in jax.device_get(history)]
    ckpt_lib.save(mngr, step, state[0], state[1], train_iter,
                  dict(meta, num_skipped=num_skipped, pending_metrics=pending), force=force)

  def check(prev, steps_done):
    """Inspects an earlier step once the next one is dispatched (keeps the device busy).

    `steps_done` is how many steps the current state holds; a stop checkpoints it under that
    number, with the data iterator at the same position, so a resume is consistent.
    """
    nonlocal num_skipped
    step, ok, index = prev
    if bool(ok):
      return
    ids = index.reshape(-1)[:16].tolist()
    if skip_nonfinite:
      num_skipped += 1
      logging.warning('non-finite loss/gradient at step %d (batch ids %s): update skipped (%d so far)',
                      step, ids, num_skipped)
      return
    save(steps_done, force=True)
    mngr.wait_until_finished()
    raise NonFiniteError(
        f'non-finite loss or gradient at step {step} (host batch record ids {ids}...). The update '
        f'was not applied; the last good state is checkpointed in {workdir}/checkpoints. Lower the '
        'learning rate, check those records, or set --config.skip_nonfinite=True to skip such steps.')

  with _SigtermFlag() as sigterm:
    step = start_step
    t_start = time.time()
    step_fn = setup.train_step
    while step < total:
      batch = next(train_iter)
      gbatch = sharding.to_global(batch, setup.mesh)
      step_arg = jnp.asarray(step, jnp.int32)
      if step == start_step:
        step_fn = _compiled_step(setup, state, gbatch, step_arg)
      state, metrics, ok = step_fn(state, gbatch, step_arg)
      if last is not None:
        check(last, step + 1)
      last = (step, ok, batch.get('index', np.zeros((1,))))
      history.append(metrics)
      step += 1
      if step % log_every == 0 or step == total:
        check(last, step)
        last = None
        means = {f'train/{k}': float(np.mean([float(h[k]) for h in jax.device_get(history)]))
                 for k in history[0]}
        history = []
        means['train/steps_per_sec'] = progress.report(
            step, {'loss': means['train/loss']})
        if num_skipped:
          means['train/skipped_nonfinite'] = num_skipped
        writer.write(step, means)
      if step % eval_every == 0 or step == total:
        if eval_data is not None:
          final_metrics, _ = evaluate(setup.eval_step, setup.mesh, state[0], eval_data)
          if setup.task.on_eval is not None:  # e.g. MAE reconstruction PNGs
            final_metrics.update(setup.task.on_eval(setup, state, eval_data, workdir, step) or {})
          writer.write(step, final_metrics)
          shown = ', '.join(f'{k}={v:.4f}' for k, v in final_metrics.items()
                            if k.endswith(('ccc_valence', 'ccc_arousal', 'ccc_mean', '/loss', '/nme'))
                            and v is not None)
          print(f'eval step {step}: {shown}', flush=True)
      if step % ckpt_every == 0 or step == total:
        if last is not None:  # decide its skip before the checkpoint records the count
          check(last, step)
          last = None
        save(step, force=step == total)
      preempt = sigterm.set if pcount == 1 else mngr.reached_preemption(step)
      if preempt and step < total:
        if last is not None:
          check(last, step)
        save(step, force=True)
        mngr.wait_until_finished()
        writer.close()
        print(f'Preempted: checkpoint of step {step} written to {workdir}/checkpoints; '
              f'run the same command again to resume. Exit code {PREEMPTED_EXIT_CODE}.', flush=True)
        raise Preempted(step)
    if last is not None:
      check(last, step)
  mngr.wait_until_finished()
  mngr.close()
  writer.close()
  writers.write_final_metrics(workdir, total, dict(final_metrics,
                                                    train_seconds=time.time() - t_start))
  return final_metrics
