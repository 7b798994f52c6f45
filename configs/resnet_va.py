r"""ResNet + MLP head regressing valence and arousal (the CNN of Deng, Chen, Shi 2020).

  python -m vaflax.main --config=configs/resnet_va.py:runlocal --workdir=/tmp/resnet_va
  python -m vaflax.main --config=configs/resnet_va.py:variant=50,dataset=afew_va --workdir=W
  python -m vaflax.main --config=configs/resnet_va.py:bins=20,pretrained=W/tv_r50 --workdir=W/cnn

Recipe (Deng et al. 2020, "FAU, Facial Expressions, Valence and Arousal: A Multi-task Solution",
VA part): 112x112 face crops, ResNet-50 backbone, MLP head (hidden 128), Adam lr 1e-4 decayed
x0.1 every 3 epochs, trained on Aff-Wild2 (downsampled by 5) + AFEW-VA. By default the head
regresses tanh-bounded VA with the CCC loss. `bins=20` is the paper's head: logits over 20
equal-width bins on [-1, 1] per dimension, VA = softmax expectation over the bin CENTRES (the
authors' code used linspace(-1, 1, 20), which are not the centres), loss = CE over the bins +
(1 - CCC) on the expectation. That binned CNN is what configs/resnet_gru_va.py starts from
(init_from); the teacher-student distillation is configs/distill_va.py.

Data: the default dataset 'affwild2_va:0.2,afew_va:1' is the paper's "Aff-Wild2 downsampled by
5" + AFEW-VA. Mixture weights are sampling rates relative to each dataset's size
(vaflax/data/pipeline.py): an epoch holds a fifth of Aff-Wild2's frames (over five epochs each
frame once, where the paper kept every 5th frame) and all of AFEW-VA. Aff-Wild2's 112 px crops
and AFEW-VA's 256 px crops both leave the pp ops at `image_size` (`resize`); `standardize` drops
Aff-Wild2's extra features (audio). Other mixtures (commas cannot go through the arg string):
--config.input.dataset='affwild2_va:0.2,afew_va:1,affectnet:0.1'. VA-grid balancing:
--config.input.balance=va_grid (docs/datasets.md, "Mixing and balancing").

Arguments: variant (10|18|34|50), dataset (a name or mixture, see vaflax/data/pipeline.py),
bins (0: tanh regression; 20: Deng et al.'s binned head + CE loss),
pretrained (a workdir written by `python -m vaflax.convert --format=torchvision_resnet`: the
backbone starts from its ImageNet weights, inputs get ImageNet normalisation; docs/pretrained.md),
runlocal (synthetic set, ResNet-18 at 64 px, a few minutes on a 2-core CPU).
"""

from configs import common
from vaflax import presets


def get_config(arg=None):
  a = common.parse_arg(arg, variant=50, dataset='affwild2_va:0.2,afew_va:1', bins=0,
                      pretrained='', runlocal=False)
  c = common.base_config()
  c.task = 'supervised'
  c.model_name = 'resnet'
  c.model = presets.resnet_model(a.variant)  # torchvision's trunk, Deng et al.'s MLP head
  c.model.num_bins = a.bins  # 0: tanh regression; 20: binned head of Deng et al.
  c.input.dataset = a.dataset
  c.image_size = 112
  c.batch_size = 64
  c.total_steps = 0
  c.total_epochs = 9.0  # 3 decays of x0.1 at epochs 3, 6
  c.optimizer.lr = 1e-4
  c.schedule.name = 'step'
  c.schedule.decay_every_epochs = 3.0
  c.loss.binned_weight = 1.0 if a.bins else 0.0  # CE over the bins (Deng et al.: CE + CCC)
  c.eval_every_steps = 2000
  c.checkpoint_every_steps = 2000
  if a.pretrained:  # a `vaflax.convert --format=torchvision_resnet` run: its backbone, a new head
    c.init_from = f'{a.pretrained}:backbone=backbone'
    common.imagenet_inputs(c)
  if a.runlocal:
    c.model.dtype = 'float32'
    c.input.dataset = 'synthetic_va'
    c.model.depth = 18
    c.model.width = 32
    c.image_size = 64
    c.batch_size = 32
    c.total_steps = 800  # a few minutes on 2 idle cores (README: the measured time and CCC)
    c.total_epochs = 0.0
    c.optimizer.lr = 1e-3
    c.schedule.name = 'cosine'
    c.schedule.warmup_steps = 50
    c.log_every_steps = 50
    c.eval_every_steps = 200
    c.checkpoint_every_steps = 100
  return c
