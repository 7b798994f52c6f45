"""Shared config defaults and the `get_config(arg)` argument parser.

`arg` is the text after ':' in --config=configs/x.py:arg, e.g. 'runlocal' or
'variant=50,dataset=afew_va'. Bare words are booleans set to True.
"""

from __future__ import annotations

import os

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'runlocal,variant=50' -> ConfigDict(runlocal=True, variant=50); types follow the defaults."""
  out = dict(defaults)
  for part in (p.strip() for p in (arg or '').split(',')):
    if not part:
      continue
    key, eq, value = part.partition('=')
    if key not in defaults:
      raise ValueError(f'unknown config argument {key!r}; known: {", ".join(sorted(defaults))}')
    if not eq:
      out[key] = True
      continue
    d = defaults[key]
    if isinstance(d, bool):
      out[key] = value.lower() in ('1', 'true', 'yes')
    elif isinstance(d, int):
      out[key] = int(value)
    elif isinstance(d, float):
      out[key] = float(value)
    else:
      out[key] = value
  return ml_collections.ConfigDict(out)


DEFAULT_DATA_DIR = os.environ.get('TFDS_DATA_DIR', os.path.expanduser('~/tensorflow_datasets'))

# RGB in [0, 1], then ImageNet's per-channel mean and std: what torchvision's ResNets and MAE's
# ViTs were trained on (docs/pretrained.md). vaflax's own recipes use value_range(-1, 1).
IMAGENET_PP = 'value_range(0, 1)|normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))'


def imagenet_inputs(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`c` with ImageNet normalisation instead of value_range(-1, 1) in its pp strings, for
  weights converted from PyTorch (vaflax/convert)."""
  for key in ('pp_train', 'pp_eval'):
    if 'value_range(-1, 1)' not in c.input[key]:
      raise ValueError(f'config.input.{key}={c.input[key]!r} has no value_range(-1, 1) to replace')
    c.input[key] = c.input[key].replace('value_range(-1, 1)', IMAGENET_PP)
  return c


# Logical axis name -> mesh axis. Dimensions that 'fsdp' does not divide stay replicated.
FSDP_RULES = (('conv_out', 'fsdp'), ('mlp', 'fsdp'), ('heads', 'fsdp'), ('embed', None),
              ('conv_in', None), ('classes', None))


def base_config() -> ml_collections.ConfigDict:
  """Fields every config has. Method configs override what they need."""
  c = ml_collections.ConfigDict()
  c.task = 'supervised'  # registered task (vaflax/tasks.py; defined in vaflax/trainers/)
  c.recipe = ''  # '' = one training run; else a multi-stage recipe (vaflax/stages.py)
  c.model_name = 'resnet'  # model module: vaflax/models/<model_name>.py
  c.model = ml_collections.ConfigDict()  # keyword arguments of Model(...)
  c.seed = 0  # parameter init, data order, augmentation and per-step rngs all derive from it

  c.batch_size = 32  # GLOBAL batch size (split over processes and devices)
  c.image_size = 112  # input side in pixels (the {image_size} of the pp strings)
  c.total_steps = 1000  # train steps; 0 means use total_epochs
  c.total_epochs = 0.0  # used when total_steps == 0 (epochs of the training split)

  c.input = ml_collections.ConfigDict()
  # A name, or a mixture 'affwild2_va:0.2,afew_va:1' whose weights are sampling rates relative to
  # each dataset's size (0.2: downsampled by 5; 'a:1,b:1' is the union); see data/pipeline.py.
  c.input.dataset = 'synthetic_va'
  c.input.data_dir = DEFAULT_DATA_DIR  # TFDS data dir holding the built datasets
  c.input.train_split = 'train'  # split to train on
  c.input.eval_split = 'validation'  # split evaluated during training ('' to skip)
  c.input.window = 0  # >0: examples are windows of this many consecutive frames
  c.input.window_stride = 0  # stride between training windows (0: = window)
  # Balancing (vaflax/data/balance.py), per source of a mixture: '' draws shuffled epochs;
  # 'va_grid' draws with replacement, weight = (records in the VA cell)^-balance_power.
  c.input.balance = ''  # '' (off) | 'va_grid'
  c.input.balance_grid = 20  # cells per axis of the VA grid on [-1, 1] x [-1, 1]
  c.input.balance_power = 1.0  # 1: full inverse frequency, 0.5: square root, 0: uniform
  c.input.balance_floor = 0.0  # weight without valid VA (average labelled = 1; 0: never drawn)
  c.input.pp_train = ('standardize|random_crop(0.85)|resize({image_size})|flip_lr|'
                      'color_jitter(0.2, 0.2, 0.2)|value_range(-1, 1)')  # train ops (vaflax/data/ops.py)
  c.input.pp_eval = 'standardize|center_crop(0.925)|resize({image_size})|value_range(-1, 1)'  # eval ops
  # The face crop of the training data (faces.CropSpec.to_dict(): aligned, margin, size,
  # template), recorded by vaflax/train.py from the dataset's metadata; predict and vaflax.load
  # cut this crop. {} in a config: filled at training time. A run without it: predict's default.
  c.crop = ml_collections.ConfigDict()
  c.input.num_workers = 0  # Grain worker processes (keep fixed within a run: it shapes the state)
  c.input.num_threads = 2  # Grain reader threads per process
  c.input.prefetch = 8  # elements read ahead per process

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'adam'  # adam | adamw | sgd
  c.optimizer.lr = 1e-4  # peak learning rate
  c.optimizer.b1 = 0.9  # Adam beta1
  c.optimizer.b2 = 0.999  # Adam beta2
  c.optimizer.weight_decay = 0.0  # AdamW decoupled weight decay
  c.optimizer.momentum = 0.9  # SGD momentum (0: plain SGD)
  c.optimizer.layer_decay = 0.0  # ViT layer-wise lr decay (BEiT/MAE fine-tuning; 0: off)
  c.optimizer.grad_clip_norm = 0.0  # global-norm clipping (0: off)

  c.schedule = ml_collections.ConfigDict()
  c.schedule.name = 'step'  # constant | step (x factor every N epochs) | cosine
  c.schedule.decay_every_epochs = 3.0  # step schedule period in epochs
  c.schedule.decay_every_steps = 0  # step schedule period in steps (overrides epochs when > 0)
  c.schedule.factor = 0.1  # step schedule multiplier
  c.schedule.alpha = 0.0  # cosine schedule: final lr = alpha x peak
  c.schedule.warmup_steps = 0  # linear warmup from 0, in steps
  c.schedule.warmup_epochs = 0.0  # linear warmup in epochs (used when warmup_steps == 0)

  c.loss = ml_collections.ConfigDict()
  c.loss.ccc_weight = 1.0  # (1 - CCC_v) + (1 - CCC_a)
  c.loss.binned_weight = 0.0  # cross-entropy over VA bins (needs model.num_bins > 0)
  c.loss.mse_weight = 0.0  # masked MSE
  c.loss.quadrant_weight = 0.0  # 4-way quadrant cross-entropy (needs model.quadrant_head)

  # Frozen parameters: a regex matched (re.match) against '/'-joined parameter paths, e.g.
  # 'backbone(/|$)'. Frozen: no gradient, no optimizer state, no weight decay; modules whose
  # path matches run in eval mode (vaflax/optim.py). '' = train everything.
  c.frozen = ''

  c.eval = ml_collections.ConfigDict()
  c.eval.flip_tta = False  # evaluate on the mean of each image (frame) and its mirror

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # data-parallel axis size (-1: all devices / fsdp)
  c.mesh.fsdp = 1  # parameter-sharding axis size
  c.mesh.num_devices = 0  # use only the first N devices (0: all; single-process debugging)
  c.sharding_rules = FSDP_RULES  # logical axis -> mesh axis

  c.log_every_steps = 50  # console + metrics.jsonl period
  c.eval_every_steps = 500  # validation period (0: only at the end)
  c.checkpoint_every_steps = 500  # checkpoint period (and always at the end)
  c.max_to_keep = 3  # checkpoints kept
  # Weights to start from when not resuming: 'WORKDIR' or 'WORKDIR:SRC=DST,...' (path-prefix
  # mapping), several separated by ';' (vaflax/train.py init_from). '' = random init.
  c.init_from = ''
  c.skip_nonfinite = False  # skip (and count) non-finite updates instead of stopping
  c.tensorboard = True  # also write TensorBoard event files
  return c
