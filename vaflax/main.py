r"""Entry point: python -m vaflax.main --config=configs/<x>.py[:args] --workdir=DIR

Re-running with the same workdir resumes from its last checkpoint. Any config field can be
overridden: --config.batch_size=64 --config.input.data_dir=/data/tfds.
"""

from __future__ import annotations

import os
import sys

from absl import logging

from vaflax import cli, writers


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


@cli.entry_point
def main(argv) -> int:
  ap = cli.parser('vaflax.main', __doc__)
  ap.add_argument('--config', required=True, help='config file: configs/<x>.py[:args]')
  ap.add_argument('--workdir', required=True, help='where checkpoints, metrics and plots go')
  ap.add_argument('-v', '--verbosity', type=int, default=-1,
                  help='absl logging: -1 warnings (default), 0 info, 1 debug')
  args, overrides = cli.parse(ap, argv, overrides=True)
  logging.set_verbosity(args.verbosity)  # library INFO chatter off unless asked for
  config = cli.load_config(args.config, overrides)
  maybe_initialize_distributed()
  from vaflax import recipes, stages, train  # noqa: PLC0415 -- after flag parsing: --help is fast

  try:
    if config.recipe:  # several stages (distillation, MAE -> VA -> fusion): vaflax/recipes.py
      stages.run(recipes.get(config.recipe), config, args.workdir)
    elif stages.finished(os.path.abspath(os.path.expanduser(args.workdir)), config) is not None:
      # Re-running a finished run resumes nothing: say so (train_and_evaluate would restore the
      # last checkpoint and rewrite final_metrics.json without an evaluation).
      print(writers.results_line(args.workdir, earlier=True), flush=True)
      return 0
    else:
      train.train_and_evaluate(config, args.workdir)
  except train.Preempted:
    return train.PREEMPTED_EXIT_CODE
  except train.NonFiniteError as e:
    cli.report(e)
    return train.NONFINITE_EXIT_CODE
  print(writers.results_line(args.workdir), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
