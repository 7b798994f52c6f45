"""All Orbax calls of vaflax: one CheckpointManager holding model+optimizer state, the Grain
iterator state and a JSON record (step, model name, config fingerprint).

Orbax writes each step into a temporary folder and renames it when complete, so a checkpoint
that was being written when the process died is never picked up. Resume order:
workdir checkpoint > config.init_from (model weights only) > scratch.
"""

from __future__ import annotations

import contextlib
import os

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx


class CheckpointMismatchError(ValueError):
  pass


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (disk full, permissions): says where and what to do."""


def _os_error(e: BaseException | None) -> OSError | None:
  """The OSError behind `e`: Orbax re-raises what its writer thread hit, possibly wrapped."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError):
      return e
    if isinstance(e, BaseExceptionGroup):
      found = [x for x in map(_os_error, e.exceptions) if x is not None]
      return found[0] if found else None
    e = e.__cause__ or e.__context__
  return None


@contextlib.contextmanager
def _writing(directory, what: str):
  try:
    yield
  except CheckpointWriteError:
    raise
  except Exception as e:
    cause = _os_error(e)
    if cause is None:
      raise
    reason = os.strerror(cause.errno) if cause.errno else str(cause)
    raise CheckpointWriteError(
        cause.errno, f'{what} in {directory} failed: {reason}. Free disk space (or fix the '
        'permissions) and run the same command again: it resumes from the last complete '
        'checkpoint (a partly written one is never used); or use another --workdir') from e


class _Manager(ocp.CheckpointManager):
  """Orbax's CheckpointManager whose write failures are CheckpointWriteErrors."""

  def save(self, step, *args, **kwargs):
    with _writing(self.directory, f'writing checkpoint {step}'):
      return super().save(step, *args, **kwargs)

  def wait_until_finished(self):
    with _writing(self.directory, 'finishing a checkpoint'):
      return super().wait_until_finished()


def manager(directory: str, *, max_to_keep: int = 3, async_save: bool = True) -> ocp.CheckpointManager:
  return _Manager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save),
  )


def save(mngr: ocp.CheckpointManager, step: int, state, data_iter=None, meta: dict | None = None,
         force: bool = False) -> bool:
  """Saves `step` unless a checkpoint of that step exists already (e.g. a periodic save just
  before a SIGTERM): the same step always holds the same state, so there is nothing to add."""
  if step in mngr.all_steps():
    return False
  items = {'state': ocp.args.StandardSave(state), 'meta': ocp.args.JsonSave(dict(meta or {}, step=step))}
  if data_iter is not None:
    items['data_iter'] = grain.checkpoint.CheckpointSave(data_iter)
  try:
    return mngr.save(step, args=ocp.args.Composite(**items), force=force)
  except ocp.checkpoint_manager.StepAlreadyExistsError:  # an async save of it is in flight
    return False


def _abstract(state):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None)), state)


def restore(mngr: ocp.CheckpointManager, state_like, data_iter=None, step: int | None = None,
            expected_meta: dict | None = None):
  """Restores (state, meta) of `step` (default latest) into the shardings of `state_like`.

  `data_iter`, when given, is set to the saved position in place. `expected_meta` keys that
  differ from the saved ones (e.g. the model name) raise a CheckpointMismatchError that says so.
  """
  step = mngr.latest_step() if step is None else step
  meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  for k, v in (expected_meta or {}).items():
    if k in meta and meta[k] != v:
      raise CheckpointMismatchError(
          f'checkpoint {mngr.directory}/{step} was written with {k}={meta[k]!r} but this run has '
          f'{k}={v!r}: use another --workdir, or the config that wrote it')
  items = {'state': ocp.args.StandardRestore(_abstract(state_like))}
  if data_iter is not None:
    items['data_iter'] = grain.checkpoint.CheckpointRestore(data_iter)
  try:
    r = mngr.restore(step, args=ocp.args.Composite(**items))
  except (ValueError, KeyError, TypeError) as e:
    raise CheckpointMismatchError(
        f'checkpoint {mngr.directory}/{step} does not fit this model/optimizer ({type(e).__name__}: '
        f'{str(e)[:500]}). It was written by a different model or config: use another --workdir '
        'or the config that wrote it') from e
  return r['state'], meta


def load_model_weights(path: str, model_state_like) -> object:
  """Model-only weights from another run's checkpoint dir (or a step dir) for config.init_from.

  Returns a State with every leaf of `model_state_like` whose path and shape match; leaves that
  do not match keep their initial value and are logged (e.g. a new head, a dropped decoder).
  """
  path = os.path.abspath(os.path.expanduser(path))
  ckpt_dir = os.path.join(path, 'checkpoints') if os.path.isdir(os.path.join(path, 'checkpoints')) else path
  with ocp.CheckpointManager(ckpt_dir) as mngr:
    step = mngr.latest_step()
    if step is None:
      raise FileNotFoundError(f'config.init_from={path}: no checkpoint found in {ckpt_dir}')
    saved = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']
  # The training state is the pure dict of (model, optimizer); take the model half.
  saved_model = saved['0'] if '0' in saved else saved[0] if 0 in saved else saved
  flat_saved = dict(_flatten(saved_model))
  flat_target = nnx.to_flat_state(model_state_like)
  loaded, missing = 0, []
  for p, var in flat_target:
    key = tuple(str(k) for k in p)
    v = flat_saved.get(key)
    cur = var.get_value() if isinstance(var, nnx.Variable) else var
    if v is not None and tuple(v.shape) == tuple(cur.shape):
      if isinstance(var, nnx.Variable):
        var.set_value(jax.device_put(v.astype(cur.dtype), getattr(cur, 'sharding', None)))
      loaded += 1
    else:
      missing.append('/'.join(key))
  logging.info('init_from %s step %d: loaded %d arrays, kept %d initial (%s)', path, step, loaded,
               len(missing), ', '.join(missing[:8]))
  if loaded == 0:
    raise CheckpointMismatchError(
        f'config.init_from={path}: no parameter of this model matches the checkpoint (different model?)')
  return model_state_like


def _flatten(tree, prefix=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _flatten(v, prefix + (str(k),))
  elif isinstance(tree, list | tuple):
    for i, v in enumerate(tree):
      yield from _flatten(v, prefix + (str(i),))
  else:
    yield prefix, tree
