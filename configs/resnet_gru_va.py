r"""CNN-RNN of Deng, Chen, Shi 2020: ResNet-50 per frame -> bidirectional GRU -> 20-bin VA per frame.

  python -m vaflax.main --config=configs/resnet_gru_va.py:runlocal --workdir=/tmp/resnet_gru_va
  python -m vaflax.main --config=configs/resnet_va.py:bins=20 --workdir=W/cnn
  python -m vaflax.main --config=configs/resnet_gru_va.py --workdir=W/cnn_rnn --config.init_from=W/cnn

Recipe ("FAU, Facial Expressions, Valence and Arousal: A Multi-task Solution", arXiv 2002.03557,
VA part, and the authors' Multitask-CNN-RNN code): the binned CNN (configs/resnet_va.py:bins=20:
ResNet-50 on 112x112 crops, MLP head with 128 hidden units) is loaded with init_from and FROZEN;
each frame's 128-d head feature goes through a bi-GRU (64 units per direction), ReLU and a linear
layer to 20 logits per dimension; VA = softmax expectation over the bin centres (the authors'
code used linspace(-1, 1, 20), which are the end points, not the centres: we use the centres).
Windows of T = 32 frames (16 and 8 also tried in the paper: `window=`). Loss per dimension:
CE over the bins + (1 - CCC) on the expectation, over valid frames. Adam lr 1e-4 (beta1 0.5, the
authors' code), x0.1 every 3 epochs, 8 epochs, on Aff-Wild2 (x0.2 in the mixture) + AFEW-VA.
The teacher-student distillation and the ensemble are configs/distill_va.py:arch=cnn_rnn.

Evaluation: ABAW protocol, CCC pooled over all frames of the Aff-Wild2 validation split. Published
result to compare with: Deng et al. won the VA track of ABAW 2020 (FG 2020) with an ensemble of
distilled students; the exact validation/test CCCs are in the paper's tables, which we could not
retrieve here, so none is quoted (see docs/deng2020.md).

One command runs both stages (the cnn_rnn recipe, vaflax/recipes.py; one sub-workdir each, resumable):
workdir/cnn trains the CNN (`config.cnn`, configs/resnet_va.py with this config's ResNet size,
image size and data), workdir/cnn_rnn the CNN-RNN on its frozen features. With
`--config.init_from=<CNN workdir>` the CNN stage is skipped. workdir/final_metrics.json holds the
CNN-RNN's val/* and the CNN's as cnn/val/*.

Arguments: window (T frames per example), freeze (keep the CNN fixed), dataset,
runlocal (synthetic set: the CNN is configs/resnet_va.py:runlocal itself, ResNet-18 of width 32
at 64 px, then the bi-GRU on its frozen features over windows of 8, as a residual correction of
the CNN's own prediction: `model.residual`, ours, not the paper's; docs/deng2020.md).
"""

from configs import common, resnet_va


def get_config(arg=None):
  a = common.parse_arg(arg, window=32, freeze=True, dataset='affwild2_va:0.2,afew_va:1',
                       runlocal=False)
  c = common.base_config()
  c.recipe = 'cnn_rnn'  # the CNN, then the CNN-RNN on it (vaflax/recipes.py)
  c.task = 'supervised'
  c.model_name = 'temporal'
  c.model.depth = 50  # ResNet depth of the per-frame CNN
  c.model.width = 64  # ResNet stem width
  c.model.head_hidden = 128  # CNN head hidden units = GRU input size (Deng et al. 2020)
  c.model.gru_hidden = 64  # GRU units per direction (authors' code: hidden_size // 2)
  c.model.num_bins = 20  # bins per dimension on [-1, 1] (Deng et al. 2020)
  # Ours, not the paper's: the GRU corrects the frozen CNN's own readout (models/temporal.py).
  c.model.residual = False
  # The CNN (ResNet + its frame embedding) fixed: no gradient, BatchNorm on running averages.
  c.frozen = '(backbone|head)(/|$)' if a.freeze else ''
  c.model.dropout = 0.0  # dropout on the 128-d frame features
  c.model.dtype = 'float32'  # CNN compute dtype (bfloat16 on GPU/TPU)
  c.model.zero_init_residual = False  # zero-init the last BN of each block
  c.model.remat = False  # rematerialise ResNet blocks (memory) when the CNN is trained
  c.input.dataset = a.dataset
  c.input.window = a.window  # frames per window (T)
  c.input.window_stride = a.window  # non-overlapping training windows
  c.image_size = 112
  c.batch_size = 16  # windows per batch (authors' code: 20; 16 divides device counts)
  c.total_steps = 0
  c.total_epochs = 8.0  # epochs of training windows
  c.optimizer.lr = 1e-4
  c.optimizer.b1 = 0.5  # authors' code (F_adam_b1)
  c.schedule.name = 'step'
  c.schedule.decay_every_epochs = 3.0  # x0.1 every 3 epochs
  c.loss.ccc_weight = 1.0  # (1 - CCC) on the expectation, per dimension
  c.loss.binned_weight = 1.0  # CE over the 20 bins, per dimension
  c.eval_every_steps = 2000
  c.checkpoint_every_steps = 2000
  if a.runlocal:
    # The CNN stage is configs/resnet_va.py:runlocal itself (ResNet-18 of width 32 at 64 px,
    # tanh regression, CCC loss), so this run's cnn/val/* is resnet_va:runlocal's number; the
    # GRU reads its frozen 128-d head features and uses the same head type and loss. Trained
    # jointly from scratch instead (ResNet width 16), the CNN-RNN ended below the CNN pooled and
    # per video (docs/deng2020.md, measured).
    c.input.dataset = 'synthetic_va'
    c.model.depth = 18
    c.model.width = 32
    c.model.head_hidden = 128
    c.model.gru_hidden = 32
    c.model.num_bins = 0  # the runlocal CNN's head: tanh regression
    # Ours: the GRU corrects the CNN's own frozen prediction (zero-initialised correction), so
    # the CNN-RNN starts at the CNN; the plain head ended below it on arousal (docs/deng2020.md).
    c.model.residual = True
    c.loss.binned_weight = 0.0
    c.input.window = 8
    c.input.window_stride = 4  # overlapping windows: 5 per 24-frame training clip
    c.image_size = 64
    c.batch_size = 8  # 8 windows x 8 frames = 64 frames per step
    c.total_steps = 1000
    c.total_epochs = 0.0
    c.optimizer.lr = 1e-3
    c.optimizer.b1 = 0.9
    c.schedule.name = 'cosine'
    c.schedule.warmup_steps = 50
    c.log_every_steps = 50
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
  # The CNN stage: the per-frame model whose backbone and head/hidden the CNN-RNN loads.
  c.cnn = resnet_va.get_config(('runlocal' if a.runlocal else 'bins=20')
                               + f',variant={c.model.depth}')
  for key in ('depth', 'width', 'head_hidden'):
    c.cnn.model[key] = c.model.get_ref(key)
  c.cnn.image_size = c.get_ref('image_size')
  c.cnn.input.dataset = c.input.get_ref('dataset')
  c.cnn.input.data_dir = c.input.get_ref('data_dir')
  return c
