"""The one generic train/evaluate loop of vaflax.

A task (vaflax/tasks/__init__.py, defined in vaflax/tasks/) supplies the loss and the predictions; a
model module (vaflax/models/<config.model_name>.py) supplies `Model(...)`; the optimizer,
schedule and frozen parameters come from vaflax/optim.py; the model is built, other runs are
loaded (init_from) and the run folder is written through vaflax/runs.py, and the evaluation
split is scored by vaflax/scoring.py, as evaluate scores a finished run. Everything else is here:
input, a jitted step with explicit shardings and donated state, checkpoints and resume,
preemption, the non-finite guard and logging.
"""

from __future__ import annotations

import dataclasses
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from vaflax import aot, cpu, optim, runs, scoring, sharding, tasks, writers
from vaflax import checkpoint as ckpt_lib
from vaflax.data import pipeline, sources

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again" -- what a requeue script looks for
NONFINITE_EXIT_CODE = 3


class NonFiniteError(RuntimeError):
  pass


class Preempted(SystemExit):
  def __init__(self, step):
    super().__init__(PREEMPTED_EXIT_CODE)
    self.step = step


# --- Model and state ----------------------------------------------------------------------------


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


def make_setup(config, num_train_examples: int, mesh=None, init: bool = True) -> Setup:
  """With init=False the state is abstract (ShapeDtypeStructs with shardings): a restore target
  that skips compiling the initialisation (a resuming run)."""
  mesh = mesh or sharding.make_mesh(config.mesh)
  task = tasks.get(config.task)
  steps_per_epoch = max(1, num_train_examples // config.batch_size)
  total = total_steps(config, steps_per_epoch)
  schedule = optim.make_schedule(config, steps_per_epoch, total)
  tx = optim.make_optimizer(config, schedule)

  def create():
    model = runs.make_model(config, nnx.Rngs(config.seed))
    return model, nnx.Optimizer(model, tx, wrt=optim.trainable(config))

  graphdef, state, state_sh = runs.build_state(config, mesh, create, init=init)
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

  copts = cpu.compiler_options(mesh.devices.flat[0].platform)
  train_step = jax.jit(train_step, in_shardings=(state_sh, sharding.batch_sharding(mesh), rep),
                       out_shardings=(state_sh, rep, rep), donate_argnums=0,
                       compiler_options=copts)
  model_graphdef = nnx.graphdef(nnx.merge(graphdef, state)[0])
  eval_step = scoring.make_eval_step(config, model_graphdef, state_sh[0], mesh)
  return Setup(config, mesh, graphdef, state, state_sh, task, schedule, steps_per_epoch,
               total, train_step, eval_step)


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

  config.init_from is one or more sources (vaflax/runs.py `parse_init_from`: a workdir of any
  vaflax run with an optional SOURCE=TARGET prefix mapping, several separated by ';'):
  'W/mae:encoder=encoder', 'W/teacher:=teacher'. Target weights no source fills keep their
  initialisation; both lists are printed.
  """
  for source in runs.parse_init_from(config.init_from):
    run = runs.load_run(source.workdir)
    report = ckpt_lib.transfer_weights(run.weights(), model_state, source.pairs(),
                                       source_name=f'init_from {run.workdir} step {run.step}')
    print(report.summary(), flush=True)


def restore(setup: Setup, mngr, data_iter=None, expected_meta: dict | None = None,
            step: int | None = None):
  """(state, meta) of checkpoint `step` (default: the latest) of `mngr`: the model and optimizer
  state restored into the structure and shardings of setup.state (abstract is enough), and
  `data_iter` (a Grain iterator) set to the saved position in place."""
  model_state, opt_state, meta = ckpt_lib.restore(mngr, setup.state[0], setup.state[1], data_iter,
                                                  step=step, expected_meta=expected_meta)
  # The restored halves have the structure of state[0] and state[1]: put them back together.
  state = jax.tree.unflatten(jax.tree.structure(setup.state),
                             jax.tree.leaves(model_state) + jax.tree.leaves(opt_state))
  return state, meta


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
  """Trains config.task/config.model_name on config.input; returns the final eval metrics.

  The workdir's one CheckpointManager is opened here and closed on every way out (finished,
  preempted, stopped on a non-finite step): resume, periodic saves and the last one go
  through it."""
  workdir = runs.prepare_workdir(workdir, config)
  with runs.checkpoint_manager(workdir, max_to_keep=config.max_to_keep) as mngr:
    return _train(config, workdir, mngr)


def _train(config, workdir: str, mngr) -> dict:
  pidx, pcount = jax.process_index(), jax.process_count()

  # Input pipeline
  train_ds, num_train = pipeline.make_train_dataset(config, pidx, pcount)
  # The crop the training data was cut with travels with the run: predict and vaflax.load cut
  # the same one (vaflax/predict/model.py). Known once the data is opened (synthetic_va is built
  # on first use), so config.json is written again with it.
  config.crop = sources.crop_spec(config)
  runs.write_config(workdir, config)
  eval_data = (sources.EvalData(config, config.input.eval_split, process_index=pidx,
                                process_count=pcount)
               if config.input.eval_split else None)

  # Model, optimizer, jitted steps. A run that resumes restores into an abstract state: no
  # throwaway initialisation (its compile, its device memory) before the restore.
  resuming = mngr.latest_step() is not None
  setup = make_setup(config, num_train, init=not resuming)
  on_eval = setup.task.make_on_eval(setup) if setup.task.make_on_eval else None
  train_iter = iter(train_ds)

  # Resume: workdir > init_from > scratch
  meta = dict(runs.checkpoint_meta(config), num_workers=config.input.num_workers,
              process_count=pcount)
  start_step = 0
  saved: dict = {}
  if resuming:
    state, saved = restore(setup, mngr, train_iter, expected_meta=meta)
    start_step = int(saved['step'])
    logging.info('resumed from %s step %d', workdir, start_step)
    print(f'Resuming from checkpoint at step {start_step} in {workdir}/checkpoints', flush=True)
  else:
    state = setup.state
    if config.init_from:
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
  history = list(saved.get('pending_metrics', []))
  unchecked = []  # (step, its `ok` flag, its batch's record ids) not read back yet
  final_metrics: dict = {}

  def save(step, force=False):
    pending = [{k: float(v) for k, v in h.items()} for h in jax.device_get(history)]
    ckpt_lib.save(mngr, step, state[0], state[1], train_iter,
                  dict(meta, num_skipped=num_skipped, pending_metrics=pending), force=force)

  def check_finite(keep: int, steps_done: int) -> None:
    """Reads the `ok` flags of all unchecked steps but the last `keep`: the one place a
    non-finite step is counted (skip_nonfinite) or stops the run.

    A flag is read once the next step is dispatched (keep=1: the device stays busy), and all of
    them (keep=0) before the state is logged, scored, saved or handed back. `steps_done` is how
    many steps the current state holds; a stop checkpoints it under that number, with the data
    iterator at the same position, so a resume is consistent.
    """
    nonlocal num_skipped
    while len(unchecked) > keep:
      step, ok, index = unchecked.pop(0)
      if bool(ok):
        continue
      ids = index.reshape(-1)[:16].tolist()
      if skip_nonfinite:
        num_skipped += 1
        logging.warning('non-finite loss/gradient at step %d (batch ids %s): update skipped (%d '
                        'so far)', step, ids, num_skipped)
        continue
      save(steps_done, force=True)
      mngr.wait_until_finished()
      raise NonFiniteError(
          f'non-finite loss or gradient at step {step} (host batch record ids {ids}...). The '
          f'update was not applied; the last good state is checkpointed in {workdir}/checkpoints. '
          'Lower the learning rate, check those records, or set --config.skip_nonfinite=True to '
          'skip such steps.')

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
      unchecked.append((step, ok, batch.get('index', np.zeros((1,)))))
      history.append(metrics)
      step += 1
      log_now = step % log_every == 0 or step == total
      eval_now = eval_data is not None and (step % eval_every == 0 or step == total)
      save_now = step % ckpt_every == 0 or step == total
      preempt = step < total and (sigterm.set if pcount == 1 else mngr.reached_preemption(step))
      check_finite(0 if (log_now or eval_now or save_now or preempt) else 1, steps_done=step)
      if log_now:
        means = {f'train/{k}': float(np.mean([float(h[k]) for h in jax.device_get(history)]))
                 for k in history[0]}
        history = []
        means['train/steps_per_sec'] = progress.report(
            step, {'loss': means['train/loss']})
        if num_skipped:
          means['train/skipped_nonfinite'] = num_skipped
        writer.write(step, means)
      if eval_now:
        final_metrics, _ = scoring.score(setup.eval_step, setup.mesh, state[0], eval_data)
        if on_eval is not None:  # e.g. MAE reconstruction PNGs
          final_metrics.update(on_eval(state, eval_data, workdir, step) or {})
        writer.write(step, final_metrics)
        shown = ', '.join(f'{k}={v:.4f}' for k, v in final_metrics.items()
                          if k.endswith(('ccc_valence', 'ccc_arousal', 'ccc_mean', '/loss', '/nme'))
                          and v is not None)
        print(f'eval step {step}: {shown}', flush=True)
      if save_now:
        save(step, force=step == total)
      if preempt:
        save(step, force=True)
        mngr.wait_until_finished()
        writer.close()
        print(f'Preempted: checkpoint of step {step} written to {workdir}/checkpoints; '
              f'run the same command again to resume. Exit code {PREEMPTED_EXIT_CODE}.', flush=True)
        raise Preempted(step)
  mngr.wait_until_finished()
  writer.close()
  writers.write_final_metrics(workdir, total, dict(final_metrics,
                                                    train_seconds=time.time() - t_start))
  return final_metrics
