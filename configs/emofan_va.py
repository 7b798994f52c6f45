r"""EmoFAN: a face-alignment network with an attention emotion head (Toisoul et al. 2021, "Estimation
of continuous valence and arousal levels from faces in naturalistic conditions", Nature Machine
Intelligence; the released EmoNet).

  python -m vaflax.main --config=configs/emofan_va.py:runlocal --workdir=/tmp/emofan_va
  python -m vaflax.main --config=configs/emofan_va.py --workdir=W
  python -m vaflax.main --config=configs/emofan_va.py:stage=landmarks --workdir=W1
  python -m vaflax.main --config=configs/emofan_va.py:stage=frozen,init=W1 --workdir=W2
  python -m vaflax.main --config=configs/emofan_va.py:stage=two_stage --workdir=W

Model (vaflax/models/fan.py): FAN (Bulat & Tzimiropoulos 2017) with 2 stacked hourglasses of
width 256 and depth 4, as in EmoNet's released models, at 256 px; its 68 landmark heatmaps
(64x64), summed, weight the last stack's features (attention); an emotion head of 4 multi-scale
blocks regresses tanh-bounded valence/arousal and the logits of the 8 AffectNet emotions.
Loss (vaflax/tasks/emofan.py): per dimension a random convex combination of RMSE, 1 - PCC and
1 - CCC, drawn anew each step (the paper's "shake-shake" regularisation), + loss.emotion_weight x
emotion cross-entropy + loss.landmark_weight x heatmap MSE on all stacks (landmark supervision).

Stages (`stage=`): EmoNet keeps a FAN pretrained for face alignment fixed and trains the emotion
head only. Here the FAN is trained on the dataset's own 68 landmarks:
  joint      (default) everything at once: VA + emotions + heatmaps, one run.
  landmarks  the FAN alone: heatmap loss only (VA/emotion weights 0; VA metrics still logged).
  frozen     the paper's second stage: the FAN frozen (config.frozen: no update, running BN
             statistics) and initialised from `init=` (a `landmarks` workdir, via init_from);
             VA + emotions train the head.
  two_stage  landmarks, then frozen on its FAN, in one command: the `emofan` recipe
             (vaflax/recipes.py), one sub-workdir per stage, each resumable.

Data: AffectNet (tfds_builders/affectnet, `python -m vaflax.data.build affectnet ...`). The
builder already crops: original release, `faces.crop_face` on the annotated face box with margin
0.1 (a square of side 1.2 x max(box w, h) around the box centre, zero padding outside the image);
newer release, the whole provided crop squared; both at 256 px, landmarks in crop coordinates.
(EmoNet crops around the box of its landmarks with side (w + h) x 200 / 220, about 1.8x the face:
a looser crop than the builder's.) Train pp: random square crop 90-100%, resize, mirror,
colour jitter; eval pp: centre 95% crop (the mean train scale), resize. The crop, resize and
flip_lr ops (vaflax/data/ops.py) move the landmarks with the image (flip_lr also swaps left/right
iBUG-68 indices), so the heatmap targets stay on the face.

Evaluation protocol: the AffectNet `validation` split (the official validation set, the only
public test set), VA CCC/PCC/RMSE/SAGR pooled over all its images, VA of each image = mean of
the predictions on the image and on its mirror (`eval.flip_tta`, as EmoNet's test.py);
val/nme = landmark NME (inter-ocular, 300-W) of the flip-averaged heatmaps. Published numbers
(EmoNet README, 8-class model): valence CCC 0.82, arousal CCC 0.75 (PCC 0.82/0.75, RMSE
0.29/0.27, SAGR 0.84/0.80, expression accuracy 0.75) on its *cleaned* test set (images whose
emotion disagrees with their VA removed, flip averaging); users report about 0.57/0.52 with the
released model on the plain AffectNet validation set, which is what this config measures.

runlocal: synthetic_va (no emotion labels: num_emotions 0) at 64 px, a 1-stack FAN of width 32
and hourglass depth 2, 1500 steps (see docs/emofan.md for the measured curve).

Architectures (`arch=`): `vaflax` (default) is the model above. `emonet` is the released
EmoNet exactly (vaflax/models/fan.py, head='emonet'): 2x2 max pooling in the FAN, the attention
applied to every stack's features, a 1x1-conv input to the head, no BN before the pooling,
unbounded VA, and EmoNet's input: RGB in [0, 1] (value_range(0, 1)), the whole face crop resized
to 256 px. `python -m vaflax.convert --format=emonet` writes such a run from emonet_8.pth.

Pretrained FAN (`pretrained=W`, a run written by `python -m vaflax.convert --format=fan` from
face-alignment's 2D-FAN): EmoNet's own recipe. The model takes W's FAN (its stacks, width and
pooling, from W/config.json), arch=emonet, the FAN frozen (stage=frozen), and trains the emotion
head on [0, 1] inputs as the FAN was trained (docs/pretrained.md).

Arguments: stage (joint | landmarks | frozen | two_stage), init (workdir to initialise from; needed by
stage=frozen), arch (vaflax | emonet), pretrained (a converted FAN run), dataset (a name or
mixture), runlocal.
"""

import json
import os

import ml_collections

from configs import common
from vaflax import presets

_KEEP = presets.FAN_KEEP
STAGES = ('joint', 'landmarks', 'frozen', 'two_stage')
ARCHS = ('vaflax', 'emonet')
_TRUNK = ('num_stacks', 'hourglass_depth', 'width', 'num_landmarks', 'pool')


def _pretrained_trunk(workdir: str) -> dict:
  """The FAN fields of a converted FAN run: the trunk the recipe's model must have."""
  path = os.path.join(os.path.expanduser(workdir), 'config.json')
  try:
    with open(path) as f:
      model = json.load(f)['model']
  except (OSError, KeyError, ValueError) as e:
    raise ValueError(f'configs/emofan_va.py: pretrained={workdir}: cannot read the model of '
                     f'{path} ({e}); give a run written by `python -m vaflax.convert '
                     '--format=fan`') from None
  return {k: model[k] for k in _TRUNK}


def get_config(arg=None):
  a = common.parse_arg(arg, stage='joint', init='', arch='vaflax', pretrained='',
                       dataset='affectnet', runlocal=False)
  if a.stage not in STAGES:
    raise ValueError(f'configs/emofan_va.py: stage={a.stage!r}; use one of {", ".join(STAGES)}')
  if a.arch not in ARCHS:
    raise ValueError(f'configs/emofan_va.py: arch={a.arch!r}; use one of {", ".join(ARCHS)}')
  if a.pretrained:  # EmoNet's recipe: a pretrained FAN, frozen, under its emotion head
    if a.init:
      raise ValueError('configs/emofan_va.py: give pretrained= or init=, not both')
    a.arch, a.stage = 'emonet', 'frozen'
  if a.stage == 'frozen' and not a.init and not a.pretrained and not a.runlocal:
    raise ValueError('configs/emofan_va.py: stage=frozen needs init=<workdir of a stage=landmarks '
                     'run> (a frozen random FAN gives the head nothing to attend to)')
  c = common.base_config()
  c.task = 'emofan'  # vaflax/tasks/emofan.py: shake-shake VA + emotion CE + heatmap MSE
  c.model_name = 'fan'  # vaflax/models/fan.py
  c.model = presets.fan_model(a.arch)  # EmoNet's FAN and head; arch=emonet: the released model
  c.frozen = 'fan(/|$)' if a.stage == 'frozen' else ''  # FAN fixed: no update, running BN statistics
  c.init_from = a.init  # model weights from another run (stage=frozen: the landmarks run)
  if a.stage == 'two_stage':  # landmarks -> frozen by the stage runner (vaflax/recipes.py)
    if a.init or a.pretrained:
      raise ValueError('configs/emofan_va.py: stage=two_stage trains its own FAN first; give no '
                       'init= or pretrained=')
    c.recipe = 'emofan'

  c.input.dataset = a.dataset
  c.input.train_split = 'train'
  c.input.eval_split = 'validation'  # AffectNet's official validation set = its public test set
  # Geometric ops move the landmarks with the image; flip_lr also swaps left/right indices.
  c.input.pp_train = ('standardize|random_crop(0.9)|resize({image_size})|flip_lr|'
                      f'color_jitter(0.2, 0.2, 0.2)|value_range(-1, 1)|{_KEEP}')
  c.input.pp_eval = f'standardize|center_crop(0.95)|resize({{image_size}})|value_range(-1, 1)|{_KEEP}'
  c.image_size = 256  # EmoNet's input side; the heatmaps are image_size / 4
  if a.arch == 'emonet':  # EmoNet's test input: the whole face crop resized to 256 px
    c.input.pp_eval = f'standardize|resize({{image_size}})|value_range(-1, 1)|{_KEEP}'

  c.loss = presets.emofan_loss(a.stage)  # the emofan trainer's own fields (not the base CCC/bins)
  c.eval = ml_collections.ConfigDict()
  c.eval.flip_tta = True  # VA of an image = mean over it and its mirror (EmoNet's test.py)

  # Ours (EmoNet released no training script): Adam 1e-4, batch 32, x0.1 every 4 epochs.
  c.batch_size = 32
  c.total_steps = 0
  c.total_epochs = 10.0
  c.optimizer.name = 'adam'
  c.optimizer.lr = 1e-4
  c.schedule.name = 'step'
  c.schedule.decay_every_epochs = 4.0
  c.schedule.factor = 0.1
  c.log_every_steps = 100
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 5000

  if a.runlocal:
    c.model.dtype = 'float32'
    c.input.dataset = 'synthetic_va'
    c.model.num_stacks = 1
    c.model.hourglass_depth = 2  # 16x16 heatmaps -> 4x4
    c.model.width = 32
    c.model.num_emotions = 0  # synthetic_va has no emotion labels
    c.model.head_width = 32
    c.model.head_blocks = 2
    c.loss.emotion_weight = 0.0
    # 16x16 heatmaps: sigma 1 leaves the all-zero map as the fit for hundreds of steps; sigma
    # 2 does not (docs/emofan.md has both curves).
    c.loss.heatmap_sigma = 2.0
    c.image_size = 64
    c.input.pp_train = ('standardize|random_crop(0.85)|resize({image_size})|flip_lr|'
                        f'color_jitter(0.2, 0.2, 0.2)|value_range(-1, 1)|{_KEEP}')
    c.input.pp_eval = (f'standardize|center_crop(0.925)|resize({{image_size}})|'
                       f'value_range(-1, 1)|{_KEEP}')
    c.batch_size = 32
    c.total_steps = 1500
    c.total_epochs = 0.0
    c.optimizer.lr = 1e-3
    c.schedule.name = 'cosine'
    c.schedule.warmup_steps = 50
    c.log_every_steps = 50
    c.eval_every_steps = 250
    c.checkpoint_every_steps = 500
  if a.arch == 'emonet':  # EmoNet's and face-alignment's input range: RGB in [0, 1]
    for k in ('pp_train', 'pp_eval'):
      c.input[k] = c.input[k].replace('value_range(-1, 1)', 'value_range(0, 1)')
  if a.pretrained:  # after runlocal: the converted FAN fixes the trunk
    c.model.update(_pretrained_trunk(a.pretrained))
    c.init_from = f'{a.pretrained}:fan=fan'  # the FAN only; the emotion head starts anew
  return c
