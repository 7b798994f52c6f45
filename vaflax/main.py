r"""Entry point: python -m vaflax.main --config=configs/<x>.py[:args] --workdir=DIR

Re-running with the same workdir resumes from its last checkpoint. Any config field can be
overridden: --config.batch_size=64 --config.input.data_dir=/data/tfds.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/<x>.py[:args]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and plots go.')
flags.mark_flags_as_required(['config', 'workdir'])


def maybe_initialize_distributed() -> None:
  """jax.distributed.initialize() when the environment describes several processes."""
  import jax  # noqa: PLC0415 -- after flag parsing, so --help is fast

  env = os.environ
  if env.get('JAX_COORDINATOR_ADDRESS') and int(env.get('JAX_NUM_PROCESSES', '1')) > 1:
    jax.distributed.initialize(
        coordinator_address=env['JAX_COORDINATOR_ADDRESS'],
        num_processes=int(env['JAX_NUM_PROCESSES']),
        process_id=int(env['JAX_PROCESS_ID']),
        initialization_timeout=int(env.get('JAX_INIT_TIMEOUT', '300')))
  elif int(env.get('SLURM_NTASKS', '1')) > 1 or env.get('TPU_WORKER_HOSTNAMES', '').count(',') > 0:
    jax.distributed.initialize()  # cluster auto-detection (SLURM, Cloud TPU)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # library INFO chatter off; -v 0 brings it back
  maybe_initialize_distributed()
  from vaflax import train  # noqa: PLC0415

  config = _CONFIG.value
  trainer = train.trainer_module(config)
  try:
    if hasattr(trainer, 'run'):  # multi-stage recipes (distillation, MAE -> VA -> fusion)
      trainer.run(config, _WORKDIR.value)
    else:
      train.train_and_evaluate(config, _WORKDIR.value)
  except train.Preempted:
    sys.exit(train.PREEMPTED_EXIT_CODE)
  except train.NonFiniteError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(train.NONFINITE_EXIT_CODE)
  except (FileNotFoundError, PermissionError, ValueError, KeyError) as e:
    # Configuration and data problems: one clear line, not a library traceback.
    logging.exception('run failed')
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
