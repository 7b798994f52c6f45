"""The defaults every run config starts from, and the presets that configs/ and library code share.

configs/ import from here, never the other way (docs/architecture.md): the base config, ImageNet's
input normalisation, the model fields of the published architectures, and the run configs that
`vaflax.convert` writes for public checkpoints (`converted_*`). A converted run reproduces its
source model by default: the source's own input size and preprocessing, no test-time augmentation
(`eval.flip_tta=True` turns EmoNet's published flip protocol on), and in `config.crop` the face
crop the source was trained with. A recipe that starts from converted weights (`init_from`) keeps
its own preprocessing and crop: only weights travel.
"""

from __future__ import annotations

import os

import ml_collections

DEFAULT_DATA_DIR = os.environ.get('TFDS_DATA_DIR', os.path.expanduser('~/tensorflow_datasets'))

# RGB in [0, 1], then ImageNet's per-channel mean and std: what torchvision's ResNets and MAE's
# ViTs were trained on (docs/pretrained.md). vaflax's own recipes use value_range(-1, 1).
IMAGENET_PP = 'value_range(0, 1)|normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))'


def imagenet_inputs(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`c` with ImageNet normalisation instead of value_range(-1, 1) in its pp strings, for
  recipes that start from weights converted from PyTorch (vaflax/convert)."""
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
  c.task = 'supervised'  # registered task (vaflax/tasks/__init__.py; defined in vaflax/tasks/)
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


# --- Model fields of the published architectures (configs/ and the converters) ------------------


def resnet_model(depth: int = 50) -> ml_collections.ConfigDict:
  """models/resnet.py fields: torchvision's ResNet-`depth` trunk under Deng et al.'s MLP head."""
  m = ml_collections.ConfigDict()
  m.depth = depth  # ResNet depth: 10, 18, 34 or 50
  m.width = 64  # stem width (64 in torchvision)
  m.head_hidden = 128  # MLP head hidden units (Deng et al. 2020)
  m.num_bins = 0  # 0: tanh regression; 20: binned head of Deng et al.
  m.quadrant_head = False  # add 4-way quadrant logits
  m.dropout = 0.0  # dropout in the head
  # bfloat16 compute, float32 parameters, float32 head/loss/CCC reductions (docs/scaling.md);
  # runlocal and converted runs compute in float32 (a CPU emulates bfloat16 slowly).
  m.dtype = 'bfloat16'
  m.zero_init_residual = False  # zero-init the last BN of each block
  m.remat = False  # rematerialise blocks to save memory
  # 'auto': on the CPU, convolution gradients arranged for XLA:CPU (vaflax/models/cpu_conv.py);
  # 'xla': XLA's own everywhere; 'cpu': the CPU arrangement everywhere.
  m.conv_impl = 'auto'
  return m


def fan_model(arch: str = 'vaflax') -> ml_collections.ConfigDict:
  """models/fan.py fields of EmoFAN: 'emonet' is the released EmoNet (Toisoul et al. 2021)
  exactly, 'vaflax' our variant of its head (configs/emofan_va.py)."""
  m = ml_collections.ConfigDict()
  m.num_stacks = 2  # stacked hourglasses (EmoNet's released models; the FAN paper uses 4)
  m.hourglass_depth = 4  # poolings per hourglass: 64x64 heatmaps down to 4x4
  m.width = 256  # FAN channels
  m.num_landmarks = 68  # iBUG-68 heatmaps
  m.num_emotions = 8  # AffectNet: neutral, happy, sad, surprise, fear, disgust, anger, contempt
  m.head_width = 256  # emotion head channels (EmoNet)
  m.head_blocks = 4  # emotion head blocks, each halving the map: 64 -> 4 (EmoNet)
  m.pool = 'max' if arch == 'emonet' else 'avg'  # the FAN's 2x2 pooling
  m.head = arch  # emotion head: 'vaflax' or 'emonet' (vaflax/models/fan.py)
  m.remat = False  # recompute each hourglass in the backward pass (memory for compute)
  m.detach_heatmaps = True  # only the landmark loss shapes the heatmaps (the attention)
  m.dtype = 'bfloat16'  # compute dtype (float32 parameters; runlocal and converted: float32)
  return m


def emofan_loss(stage: str = 'joint') -> ml_collections.ConfigDict:
  """The emofan task's loss fields (vaflax/tasks/emofan.py) for a stage of its recipe."""
  loss = ml_collections.ConfigDict()
  loss.va_weight = 0.0 if stage == 'landmarks' else 1.0  # shake-shake VA loss
  loss.emotion_weight = 0.0 if stage == 'landmarks' else 1.0  # emotion cross-entropy
  loss.landmark_weight = 0.0 if stage == 'frozen' else 10.0  # heatmap MSE (~1e-2 at start)
  loss.heatmap_sigma = 1.0  # gaussian target std in heatmap pixels (FAN at 64x64)
  return loss


# What the emofan pp strings keep of a record (the landmarks move with the geometric ops).
FAN_KEEP = "keep('image', 'va', 'va_mask', 'landmarks', 'landmarks_mask', 'emotion', 'index', 'video')"


# --- Converted runs: the source model's own inputs (vaflax/convert) -----------------------------

# Face crops (faces.CropSpec fields) the public models were trained with, as box crops around a
# detector's face box. EmoNet crops a square of side (w + h) x 200 / 220 around the box of the 68
# landmarks, ~1.8x the face (configs/emofan_va.py): margin 0.4 on each side. face-alignment's FAN
# crops side 200 x (w + h) / 195 around the detector box, ~2x the face (its api.py; it also moves
# the centre up by 0.12 h, which a CropSpec does not express): margin 0.5. ImageNet models saw no
# face crops: predict's default box crop (margin 0.2) at their input size.
EMONET_CROP = {'aligned': False, 'margin': 0.4, 'size': 256, 'template': 'haar_frame'}
FAN_CROP = {'aligned': False, 'margin': 0.5, 'size': 256, 'template': 'haar_frame'}


def imagenet_crop(size: int) -> dict:
  return {'aligned': False, 'margin': 0.2, 'size': int(size), 'template': 'haar_frame'}


def _converted(c: ml_collections.ConfigDict, image_size: int, value_range: str, crop: dict):
  """`c` evaluated as its source model is run: the whole crop resized to the source's input
  side (no centre crop), the source's value range, no flip TTA, float32, the source's crop."""
  c.image_size = int(image_size)
  c.input.pp_eval = f'standardize|resize({{image_size}})|{value_range}'
  # Training from a converted run's config is not its purpose (a recipe's init_from is), but
  # its train ops still feed the model the same value range.
  c.input.pp_train = ('standardize|random_crop(0.85)|resize({image_size})|flip_lr|'
                      f'color_jitter(0.2, 0.2, 0.2)|{value_range}')
  c.eval.flip_tta = False
  c.model.dtype = 'float32'  # the reference's float32 (the paper configs train in bfloat16)
  c.crop = ml_collections.ConfigDict(dict(crop, size=int(image_size)))  # cut at the input side
  return c


def converted_resnet(depth: int, width: int) -> ml_collections.ConfigDict:
  """torchvision's ResNet (convert/torchvision_resnet.py): 224 px, ImageNet normalisation."""
  c = base_config()
  c.task = 'supervised'
  c.model_name = 'resnet'
  c.model = resnet_model(depth)
  c.model.width = int(width)
  return _converted(c, 224, IMAGENET_PP, imagenet_crop(224))


def converted_vit(encoder: dict) -> ml_collections.ConfigDict:
  """MAE's / timm's ViT (convert/mae.py; `encoder`: vit.Encoder fields from the file): its
  own input side (224 for ViT-B/16), ImageNet normalisation, the CLS token."""
  c = base_config()
  c.task = 'supervised'
  c.model_name = 'vit'
  c.model.head_zero_init = True  # the new VA head predicts 0, the VA mean
  c.model.drop_path = 0.0
  c.model.remat = False
  c.model.update(encoder)
  return _converted(c, encoder['image_size'], IMAGENET_PP, imagenet_crop(encoder['image_size']))


def converted_fan(model: dict, image_size: int = 256, *, emonet: bool) -> ml_collections.ConfigDict:
  """EmoNet (`emonet=True`: its VA and expression head) or face-alignment's FAN under a new
  EmoNet head (convert/emonet.py, convert/fan.py): the crop resized to 256 px, RGB in [0, 1]
  (EmoNet's demo: cv2.resize, /255, no mean/std)."""
  c = base_config()
  c.task = 'emofan'  # vaflax/tasks/emofan.py: VA, expressions, heatmaps
  c.model_name = 'fan'
  c.model = fan_model('emonet')
  c.model.update(model)
  c.loss = emofan_loss('frozen')  # the released FAN was frozen under the emotion head
  c.input.dataset = 'affectnet'  # what EmoNet was trained and tested on
  c = _converted(c, image_size, 'value_range(0, 1)', EMONET_CROP if emonet else FAN_CROP)
  for key in ('pp_train', 'pp_eval'):
    c.input[key] += f'|{FAN_KEEP}'
  return c
