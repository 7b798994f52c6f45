r"""Entry point: python -m vaflax.main --config=configs/<x>.py[:args] --workdir=DIR

Re-running with the same workdir resumes from its last checkpoint. Any config field can be
overridden: --config.batch_size=64 --config.input.data_dir=/data/tfds.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from vaflax import cpu_malloc, writers

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/<x>.py[:args]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and plots go.')
flags.mark_flags_as_required(['config', 'workdir'])


def _load_config(spec: str):
  """The config of --config=<file>[:arg], before overrides (ml_collections fails on them while
  it loads, so it never hands the config over)."""
  path, colon, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('_vaflax_config_for_error', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if colon else module.get_config()


def _config_error(argv, error) -> str:
  """One line naming the --config file, argument or --config.<key> override that failed, and
  what to do."""
  spec = next((a.split('=', 1)[1] for a in argv[1:] if a.startswith('--config=')), None)
  if spec is None:
    return str(error)
  path = spec.partition(':')[0]
  if not os.path.isfile(path):
    folder = os.path.dirname(path) or '.'
    have = sorted(f for f in os.listdir(folder) if f.endswith('.py') and not f.startswith('_')
                  ) if os.path.isdir(folder) else []
    return f'--config={spec}: no such file' + (f'; {folder} has {", ".join(have)}' if have else '')
  try:
    config = _load_config(spec)
  except Exception as e:  # noqa: BLE001 -- e.g. an unknown argument after ':'
    return f'--config={spec}: {type(e).__name__}: {e}'
  overrides = [a[len('--config.'):].partition('=') for a in argv[1:] if a.startswith('--config.')]
  if not isinstance(config, ml_collections.ConfigDict):
    return str(error)
  for key, _, value in overrides:
    node, parts = config, key.split('.')
    for i, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        close = difflib.get_close_matches(part, known, n=3, cutoff=0.5)
        where = 'config.' + '.'.join(parts[:i]) if i else 'the config'
        hint = f' (did you mean {" or ".join(repr(c) for c in close)}?)' if close else ''
        return (f'--config.{key}: {where} has no field {part!r}{hint}. Its fields: '
                f'{", ".join(known) or "none (it is a value, not a group)"}')
      node = node[part]
    if isinstance(node, ml_collections.ConfigDict):
      return (f'--config.{key}={value}: config.{key} is a group of fields; set one of them, e.g. '
              f'--config.{key}.{next(iter(node.keys()), "<field>")}=...')
    if f'config.{key}=' in str(error) or f'config.{key}:' in str(error):
      return (f'--config.{key}={value}: config.{key} has type {type(node).__name__} (the '
              f"config's value: {node!r}); absl says: {error}")
  return str(error)


def parse_flags(argv):
  """absl flag parsing whose config errors are one line naming the key, not a traceback."""
  try:
    args = flags.FLAGS(argv)
    getattr(_CONFIG.value, 'recipe', None)  # a config file that failed to load raises only when read
    return args
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    print(f'error: {_config_error(argv, e)}', file=sys.stderr)
    sys.exit(2)


def maybe_initialize_distributed() -> None:
  """jax.distributed.initialize() when the environment describes several processes.

  Explicit (launch/local_multiprocess.sh, launch/slurm_gpu.sbatch): JAX_COORDINATOR_ADDRESS
  (host:port of process 0), JAX_NUM_PROCESSES, JAX_PROCESS_ID and optionally
  JAX_LOCAL_DEVICE_IDS (comma-separated: the accelerators this process drives).
  Auto-detected: VAFLAX_DISTRIBUTED=auto (launch/tpu_pod.sh: Cloud TPU finds its workers itself),
  or a SLURM job step with more than one task.
  """
  import jax  # noqa: PLC0415 -- after flag parsing, so --help is fast

  env = os.environ
  if env.get('JAX_COORDINATOR_ADDRESS') and int(env.get('JAX_NUM_PROCESSES', '1')) > 1:
    if 'JAX_PROCESS_ID' not in env:
      raise ValueError('JAX_COORDINATOR_ADDRESS and JAX_NUM_PROCESSES are set but JAX_PROCESS_ID '
                       'is not: set it to this process\'s rank (0 .. JAX_NUM_PROCESSES - 1)')
    local = env.get('JAX_LOCAL_DEVICE_IDS')
    jax.distributed.initialize(
        coordinator_address=env['JAX_COORDINATOR_ADDRESS'],
        num_processes=int(env['JAX_NUM_PROCESSES']),
        process_id=int(env['JAX_PROCESS_ID']),
        local_device_ids=[int(i) for i in local.split(',')] if local else None,
        initialization_timeout=int(env.get('JAX_INIT_TIMEOUT', '300')))
  elif (env.get('VAFLAX_DISTRIBUTED') == 'auto' or int(env.get('SLURM_NTASKS', '1')) > 1
        or env.get('TPU_WORKER_HOSTNAMES', '').count(',') > 0):
    jax.distributed.initialize()  # cluster auto-detection (SLURM, Cloud TPU)
  if jax.process_count() > 1:
    logging.warning('process %d of %d, %d local / %d global devices', jax.process_index(),
                    jax.process_count(), jax.local_device_count(), jax.device_count())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # library INFO chatter off; -v 0 brings it back
  cpu_malloc.keep_freed_memory()  # before JAX starts its backends
  maybe_initialize_distributed()
  from vaflax import recipes, stages, train  # noqa: PLC0415 -- after flag parsing: --help is fast

  config = _CONFIG.value
  try:
    if config.recipe:  # several stages (distillation, MAE -> VA -> fusion): vaflax/recipes.py
      stages.run(recipes.get(config.recipe), config, _WORKDIR.value)
      print(writers.results_line(_WORKDIR.value), flush=True)
    elif stages.finished(os.path.abspath(os.path.expanduser(_WORKDIR.value)), config) is not None:
      # Re-running a finished run resumes nothing: say so (train_and_evaluate would restore the
      # last checkpoint and rewrite final_metrics.json without an evaluation).
      print(writers.results_line(_WORKDIR.value, earlier=True), flush=True)
    else:
      train.train_and_evaluate(config, _WORKDIR.value)
      print(writers.results_line(_WORKDIR.value), flush=True)
  except train.Preempted:
    sys.exit(train.PREEMPTED_EXIT_CODE)
  except train.NonFiniteError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(train.NONFINITE_EXIT_CODE)
  except (OSError, ValueError, KeyError) as e:
    # Configuration, data and disk problems: one clear line, not a library traceback.
    logging.exception('run failed')
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
