"""The one generic train/evaluate loop of vaflax.

A task (vaflax/trainers/<config.task>.py) supplies `loss_fn(model, batch, rng, config)` and
`predict_fn(model, batch, config)`; a model module (vaflax/models/<config.model_name>.py) supplies
`Model(**config.model, rngs=...)`. Everything else is here: mesh, input, optimizer, a jitted step
with explicit shardings and donated state, evaluation, checkpoints, preemption and logging.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from vaflax import checkpoint as ckpt_lib
from vaflax import circumplex, sharding, writers
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
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


# --- Optimizer ----------------------------------------------------------------------------------


def make_schedule(config, steps_per_epoch: int, total_steps: int):
  sc, lr = config.schedule, float(config.optimizer.lr)
  warmup = int(sc.get('warmup_steps', 0)) or int(round(sc.get('warmup_epochs', 0.0)
                                                         * steps_per_epoch))
  name = sc.get('name', 'constant')
  if name == 'constant':
    main = optax.constant_schedule(lr)
  elif name == 'step':
    every = int(sc.get('decay_every_steps', 0)) or int(round(sc.decay_every_epochs * steps_per_epoch))
    main = optax.exponential_decay(lr, transition_steps=max(1, every), decay_rate=sc.factor,
                                   staircase=True)
  elif name == 'cosine':
    main = optax.cosine_decay_schedule(lr, max(1, total_steps - warmup), alpha=sc.get('alpha', 0.0))
  else:
    raise ValueError(f'config.schedule.name={name!r}: use constant, step or cosine')
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
  return main


def make_optimizer(config, schedule):
  oc = config.optimizer
  name = oc.get('name', 'adam')
  if name == 'adam':
    tx = optax.adam(schedule, b1=oc.get('b1', 0.9), b2=oc.get('b2', 0.999))
  elif name == 'adamw':
    # No decay on biases, norms and embeddings' 1-D params (the usual MAE/ViT recipe).
    tx = optax.adamw(schedule, b1=oc.get('b1', 0.9), b2=oc.get('b2', 0.999),
                     weight_decay=oc.get('weight_decay', 0.0),
                     mask=lambda params: jax.tree.map(lambda x: x.ndim >= 2, params))
  elif name == 'sgd':
    tx = optax.sgd(schedule, momentum=oc.get('momentum', 0.9) or None)
  else:
    raise ValueError(f'config.optimizer.name={name!r}: use adam, adamw or sgd')
  if oc.get('layer_decay', 0.0):  # layer-wise lr decay for ViT fine-tuning (BEiT/MAE recipe)
    from vaflax.models import vit  # noqa: PLC0415

    tx = optax.chain(tx, vit.scale_by_layerwise_lr_decay(oc.layer_decay))
  if oc.get('grad_clip_norm', 0.0):
    tx = optax.chain(optax.clip_by_global_norm(oc.grad_clip_norm), tx)
  return tx


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
  """Everything a loop (or a benchmark, or evaluate) needs, built once from a config."""

  config: object
  mesh: object
  graphdef: object
  state: object
  state_sharding: object
  trainer: object
  schedule: object
  steps_per_epoch: int
  total_steps: int
  train_step: object
  eval_step: object


def model_module(config):
  try:
    return importlib.import_module(f'vaflax.models.{config.model_name}')
  except ModuleNotFoundError as e:
    raise ValueError(f'config.model_name={config.model_name!r}: no module vaflax/models/'
                     f'{config.model_name}.py') from e


def trainer_module(config):
  try:
    return importlib.import_module(f'vaflax.trainers.{config.task}')
  except ModuleNotFoundError as e:
    raise ValueError(f'config.task={config.task!r}: no module vaflax/trainers/{config.task}.py') from e


def make_setup(config, num_train_examples: int, mesh=None, predict_fn=None,
               init: bool = True) -> Setup:
  """`predict_fn` replaces the trainer's in `eval_step` (e.g. evaluate.flip_tta(...)). With
  init=False the state is abstract (ShapeDtypeStructs with shardings): a restore target that
  skips compiling the initialisation (evaluate, predict)."""
  mesh = mesh or sharding.make_mesh(config.mesh)
  trainer = trainer_module(config)
  model_cls = model_module(config).Model
  steps_per_epoch = max(1, num_train_examples // config.batch_size)
  total_steps = int(config.total_steps) or int(round(config.get('total_epochs', 0) * steps_per_epoch))
  if total_steps <= 0:
    raise ValueError('set config.total_steps (or config.total_epochs) to a positive number')
  schedule = make_schedule(config, steps_per_epoch, total_steps)
  tx = (trainer.make_optimizer(config, schedule) if hasattr(trainer, 'make_optimizer')
        else make_optimizer(config, schedule))

  def create():
    if hasattr(trainer, 'make_model'):  # a task that wraps the model (distill: teacher + students)
      model = trainer.make_model(config, model_cls, nnx.Rngs(config.seed))
    else:
      model = model_cls(**config.model.to_dict(), rngs=nnx.Rngs(config.seed))
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

  graphdef, abs_state = nnx.split(nnx.eval_shape(create))
  state_sh = sharding.state_shardings(abs_state, mesh, config.sharding_rules)
  if init:
    state = jax.jit(lambda: nnx.split(create())[1], out_shardings=state_sh)()
  else:
    def abstract(v, sh):
      if not hasattr(v, 'shape'):  # e.g. optax.masked's MaskedNode (AdamW): no array to restore
        return v
      return v.replace(jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sh))

    state = jax.tree.map(abstract, abs_state, state_sh,
                         is_leaf=lambda x: isinstance(x, nnx.Variable))
  base_key = jax.random.key(config.seed)
  rep = sharding.replicated(mesh)

  def train_step(state, batch, step):
    old_leaves = jax.tree.leaves(state)
    model, opt = nnx.merge(graphdef, state)
    model.train()
    rng = jax.random.fold_in(base_key, step)

    def lf(m):
      return trainer.loss_fn(m, batch, rng, config)

    (loss, metrics), grads = nnx.value_and_grad(lf, has_aux=True)(model)
    gnorm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)
    opt.update(model, grads)
    new_leaves, treedef = jax.tree.flatten(nnx.state((model, opt)))
    # A non-finite step changes nothing: the state stays the last good one, for a skip or for
    # the checkpoint written before stopping.
    new_leaves = [jnp.where(ok, n, o) for n, o in zip(new_leaves, old_leaves, strict=True)]
    metrics = dict(metrics, loss=loss, grad_norm=gnorm, lr=schedule(step))
    return jax.tree.unflatten(treedef, new_leaves), metrics, ok

  def eval_step(state, batch):
    model, _ = nnx.merge(graphdef, state)
    model.eval()
    out = (predict_fn or trainer.predict_fn)(model, batch, config)
    res = {'eval_mask': batch['eval_mask']}
    if 'va' in out:
      em = jnp.reshape(batch['eval_mask'], batch['eval_mask'].shape + (1,) * (batch['va_mask'].ndim - 1))
      res.update(pred=out['va'], va=batch['va'], mask=batch['va_mask'] * em,
                 video=batch['video'], index=batch['index'])
    # Per-example scalars named eval_<x> (e.g. the MAE reconstruction loss) become val/<x>.
    res.update({k: v for k, v in out.items() if k.startswith('eval_') or k == 'quadrant_logits'})
    return res

  bsh = sharding.batch_sharding(mesh)
  copts = compiler_options(mesh.devices.flat[0].platform)
  train_step = jax.jit(train_step, in_shardings=(state_sh, bsh, rep),
                       out_shardings=(state_sh, rep, rep), donate_argnums=0,
                       compiler_options=copts)
  eval_step = jax.jit(eval_step, in_shardings=(state_sh, bsh), out_shardings=rep,
                      compiler_options=copts)
  return Setup(config, mesh, graphdef, state, state_sh, trainer, schedule, steps_per_epoch,
               total_steps, train_step, eval_step)


# --- Evaluation ---------------------------------------------------------------------------------


def evaluate(setup: Setup, state, eval_data, prefix: str = 'val/') -> tuple[dict, dict]:
  """Metrics over the whole split and the raw per-frame arrays.

  VA metrics are pooled over all valid frames (ABAW protocol; windows are flattened to frames);
  eval_<x> per-example outputs are averaged over the real (unpadded) examples.
  """
  cols: dict[str, list] = {}
  for batch in eval_data:
    out = jax.device_get(setup.eval_step(state, sharding.to_global(batch, setup.mesh)))
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


def restore_workdir(config, workdir: str):
  """(Setup, state) of the latest checkpoint in `workdir`, built from `config` (the config that
  wrote it). The state is restored into the abstract one: no initialisation is computed."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.total_steps = 1  # the schedule does not shape the state; skip the epoch arithmetic
  setup = make_setup(c, int(c.batch_size), init=False)
  mngr = ckpt_lib.manager(os.path.join(workdir, 'checkpoints'))
  try:
    if mngr.latest_step() is None:
      raise FileNotFoundError(f'{workdir}/checkpoints: no checkpoint found')
    state, _ = ckpt_lib.restore(mngr, setup.state)
  finally:
    mngr.close()
  return setup, state


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains config.task/config.model_name on config.input; returns the final eval metrics."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  prepare_workdir(workdir, config)
  pidx, pcount = jax.process_index(), jax.process_count()

  # Input pipeline
  train_ds, num_train = pipeline.make_train_dataset(config, pidx, pcount)
  eval_data = (pipeline.EvalData(config, config.input.eval_split, process_index=pidx,
                                 process_count=pcount)
               if config.input.get('eval_split') else None)

  # Model, optimizer, jitted steps. A run that resumes restores into an abstract state: no
  # throwaway initialisation (its compile, its device memory) before the restore.
  mngr = ckpt_lib.manager(os.path.join(workdir, 'checkpoints'),
                          max_to_keep=int(config.get('max_to_keep', 3)))
  resuming = mngr.latest_step() is not None
  setup = make_setup(config, num_train, init=not resuming)
  state = setup.state
  train_iter = iter(train_ds)

  # Resume: workdir > init_from > scratch
  meta = {'model_name': config.model_name, 'task': config.task,
          'num_workers': int(config.input.get('num_workers', 0)), 'process_count': pcount}
  start_step = 0
  saved: dict = {}
  if resuming:
    state, saved = ckpt_lib.restore(mngr, state, train_iter, expected_meta=meta)
    start_step = int(saved['step'])
    logging.info('resumed from %s step %d', workdir, start_step)
    print(f'Resuming from checkpoint at step {start_step} in {workdir}/checkpoints', flush=True)
  elif config.get('init_from'):
    model, opt = nnx.merge(setup.graphdef, state)
    ckpt_lib.load_model_weights(config.init_from, nnx.state(model))
    state = nnx.state((model, opt))
    print(f'Initialised the model from {config.init_from}', flush=True)

  writer = writers.MetricWriter(workdir, tensorboard=bool(config.get('tensorboard', True)))
  total = setup.total_steps
  progress = writers.Progress(total, start_step)
  log_every = int(config.get('log_every_steps', 50))
  eval_every = int(config.get('eval_every_steps', 0)) or total
  ckpt_every = int(config.get('checkpoint_every_steps', 0)) or total
  skip_nonfinite = bool(config.get('skip_nonfinite', False))
  # Metrics of steps not logged yet and the skip count travel in the checkpoint, so a resumed
  # run logs the same numbers as an uninterrupted one.
  num_skipped = int(saved.get('num_skipped', 0))
  history, last = list(saved.get('pending_metrics', [])), None
  final_metrics: dict = {}

  def save(step, force=False):
    pending = [{k: float(v) for k, v in h.items()} for h in jax.device_get(history)]
    ckpt_lib.save(mngr, step, state, train_iter,
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
    while step < total:
      batch = next(train_iter)
      gbatch = sharding.to_global(batch, setup.mesh)
      state, metrics, ok = setup.train_step(state, gbatch, jnp.asarray(step, jnp.int32))
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
          final_metrics, _ = evaluate(setup, state, eval_data)
          if hasattr(setup.trainer, 'on_eval'):  # e.g. MAE reconstruction PNGs
            final_metrics.update(setup.trainer.on_eval(setup, state, eval_data, workdir, step) or {})
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
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'final_metrics.json'), 'w') as f:
      json.dump({'step': total, 'train_seconds': time.time() - t_start, **final_metrics}, f, indent=2)
  return final_metrics
