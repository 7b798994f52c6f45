"""All Orbax calls of vaflax, and the one way weights move between models.

A checkpoint holds the model state, the optimizer state, the Grain iterator state and a JSON
record (step, model name, ...) as separate items of one Orbax CheckpointManager step.

Orbax writes each step into a temporary folder and renames it when complete, so a checkpoint
that was being written when the process died is never picked up. Restoring a
run's model (config, model, weights) is vaflax/runs.py's `load_run`; a resuming run restores its
model, optimizer and data iterator with vaflax/train.py's `restore`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import threading
from collections.abc import Mapping

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
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
  """Orbax's CheckpointManager whose write failures are CheckpointWriteErrors and whose restores
  run off the main thread.

  Orbax restores through asyncio.run. In the main thread (Python 3.12) asyncio.run puts back the
  SIGINT handler at the end and `signal.getsignal` turns the handler it replaced into an Enum
  lookup whose error message is its repr(): a partial holding the finished task, whose repr holds
  the result, the whole restored state with every array printed. That was half of the time of
  loading a run (0.68 s -> 0.31 s for the tests' tiny ResNet). asyncio leaves SIGINT alone in
  other threads.
  """

  def restore(self, step, *args, **kwargs):
    if threading.current_thread() is not threading.main_thread():
      return super().restore(step, *args, **kwargs)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='vaflax-restore') as pool:
      return pool.submit(super().restore, step, *args, **kwargs).result()

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


def save(mngr: ocp.CheckpointManager, step: int, model_state, opt_state=None, data_iter=None,
         meta: dict | None = None, force: bool = False) -> bool:
  """Saves `step` unless a checkpoint of that step exists already (e.g. a periodic save just
  before a SIGTERM): the same step always holds the same state, so there is nothing to add.

  The model and the optimizer are separate items, so a run's weights load without reading its
  optimizer state (about twice the parameters again for Adam)."""
  if step in mngr.all_steps():
    return False
  items = {'model': ocp.args.StandardSave(model_state),
           'meta': ocp.args.JsonSave(dict(meta or {}, step=step))}
  if opt_state is not None:
    items['optimizer'] = ocp.args.StandardSave(opt_state)
  if data_iter is not None:
    items['data_iter'] = grain.checkpoint.CheckpointSave(data_iter)
  try:
    return mngr.save(step, args=ocp.args.Composite(**items), force=force)
  except ocp.checkpoint_manager.StepAlreadyExistsError:  # an async save of it is in flight
    return False


def _abstract(state):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None)), state)


def restore(mngr: ocp.CheckpointManager, model_like, opt_like=None, data_iter=None,
            step: int | None = None, expected_meta: dict | None = None):
  """Restores (model_state, opt_state, meta) of `step` (default latest) into the shardings of
  `model_like` / `opt_like` (abstract states are enough). Without `opt_like` the optimizer
  state is not read (opt_state is None).

  `data_iter`, when given, is set to the saved position in place. `expected_meta` keys that
  differ from the saved ones (e.g. the model name) raise a CheckpointMismatchError that says so.
  """
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'{mngr.directory}: no complete checkpoint')
  meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  for k, v in (expected_meta or {}).items():
    if k in meta and meta[k] != v:
      raise CheckpointMismatchError(
          f'checkpoint {mngr.directory}/{step} was written with {k}={meta[k]!r} but this run has '
          f'{k}={v!r}: use another --workdir, or the config that wrote it')
  items = {'model': ocp.args.StandardRestore(_abstract(model_like))}
  if opt_like is not None:
    items['optimizer'] = ocp.args.StandardRestore(_abstract(opt_like))
  if data_iter is not None:
    items['data_iter'] = grain.checkpoint.CheckpointRestore(data_iter)
  try:
    r = mngr.restore(step, args=ocp.args.Composite(**items))
  except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
    raise CheckpointMismatchError(
        f'checkpoint {mngr.directory}/{step} does not fit this model/optimizer ({type(e).__name__}: '
        f'{str(e)[:500]}). It was written by a different model or config: use another --workdir '
        'or the config that wrote it') from e
  return r['model'], r.get('optimizer'), meta


# --- Moving weights between models ---------------------------------------------------------------


def path_str(path) -> str:
  """'a/b/0/kernel' for an nnx / jax tree path."""
  return '/'.join(str(key_name(k)) for k in path)


def key_name(k):
  """The name or index of one entry of a tree path."""
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return getattr(k, attr)
  return k


# Variables that are weights (what moves between runs); rng counters and optimizer state are not.
WEIGHTS = nnx.Any(nnx.Param, nnx.BatchStat)


def flat_weights(model_or_state) -> dict[str, np.ndarray]:
  """{'a/b/kernel': array} of the parameters and BatchNorm statistics of a module or state."""
  state = model_or_state
  if isinstance(state, nnx.Module):
    state = nnx.state(state, WEIGHTS)
  else:
    state = nnx.filter_state(state, WEIGHTS)
  return {path_str(p): np.asarray(jax.device_get(v.get_value()))
          for p, v in nnx.to_flat_state(state)}


@dataclasses.dataclass
class TransferReport:
  """What a weight transfer did, by target path (loaded, missing) and source key (unexpected)."""

  source: str
  loaded: list[str]
  missing: list[str]  # target weights under a mapped prefix that no source entry filled
  unexpected: list[str]  # source entries that map to no target weight

  def summary(self, limit: int = 8) -> str:
    def some(xs):
      return ', '.join(xs[:limit]) + (f', ... ({len(xs)} in all)' if len(xs) > limit else '')
    lines = [f'{self.source}: loaded {len(self.loaded)} arrays']
    if self.missing:
      lines.append(f'  kept their initial value ({len(self.missing)}): {some(self.missing)}')
    if self.unexpected:
      lines.append(f'  ignored from the source ({len(self.unexpected)}): {some(self.unexpected)}')
    return '\n'.join(lines)


def parse_mapping(text: str) -> list[tuple[str, str]]:
  """'encoder=visual,=teacher' -> [('encoder', 'visual'), ('', 'teacher')]; '' -> identity."""
  if not text:
    return [('', '')]
  out = []
  for part in text.split(','):
    src, eq, dst = part.partition('=')
    if not eq:
      raise ValueError(f'weight mapping {part!r}: expected SOURCE_PREFIX=TARGET_PREFIX '
                       '(an empty prefix is the root)')
    out.append((src.strip().strip('/'), dst.strip().strip('/')))
  return out


def _under(key: str, prefix: str) -> str | None:
  """The rest of `key` below `prefix` ('' for the root), or None when it is not under it."""
  if not prefix:
    return key
  if key == prefix:
    return ''
  return key[len(prefix) + 1:] if key.startswith(prefix + '/') else None


def _join(prefix: str, rest: str) -> str:
  return '/'.join(x for x in (prefix, rest) if x)


def transfer_weights(source: Mapping[str, np.ndarray], target, mapping=(('', ''),), *,
                     source_name: str = 'source') -> TransferReport:
  """Copies `source` ({'a/b/kernel': array}) into `target` (an nnx.State or module), in place.

  `mapping` is a list of (source prefix, target prefix): a source key under a source prefix goes
  to the target prefix plus the rest of its path ('' is the root). A mapped key whose shape
  differs from the target's is an error naming both; values take the target's dtype and
  sharding. This is the one way weights move in vaflax: init_from, stage chaining, teacher
  loading and the PyTorch importer (vaflax/convert) all come through here.
  """
  state = nnx.state(target, WEIGHTS) if isinstance(target, nnx.Module) else target
  flat_target = {path_str(p): v for p, v in nnx.to_flat_state(nnx.filter_state(state, WEIGHTS))}
  loaded, used = [], set()
  for src_prefix, dst_prefix in mapping:
    for key, value in source.items():
      rest = _under(key, src_prefix)
      if rest is None:
        continue
      dst = _join(dst_prefix, rest)
      var = flat_target.get(dst)
      if var is None:
        continue
      cur = var.get_value()
      if tuple(np.shape(value)) != tuple(cur.shape):
        raise CheckpointMismatchError(
            f'{source_name}: {key} has shape {tuple(np.shape(value))} but the model\'s {dst} has '
            f'{tuple(cur.shape)}')
      var.set_value(jax.device_put(np.asarray(value).astype(cur.dtype),
                                   getattr(cur, 'sharding', None)))
      loaded.append(dst)
      used.add(key)
  filled = set(loaded)
  missing = sorted(k for k in flat_target if k not in filled
                   and any(_under(k, dst) is not None for _, dst in mapping))
  unexpected = sorted(k for k in source if k not in used)
  if not loaded:
    raise CheckpointMismatchError(
        f'{source_name}: no weight of the source maps to this model (mapping {mapping}; source '
        f'keys look like {", ".join(list(source)[:4])}; model paths like '
        f'{", ".join(list(flat_target)[:4])})')
  if isinstance(target, nnx.Module):
    nnx.update(target, state)
  return TransferReport(source_name, loaded, missing, unexpected)
