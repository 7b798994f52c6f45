r"""Masked-autoencoder pretraining of a ViT on face images (He et al. 2022; stage 1 of Zhang et al.
2023, "Multi-modal Facial Affective Analysis based on Masked Autoencoder", ABAW5).

  python -m vaflax.main --config=configs/mae_pretrain.py:runlocal --workdir=/tmp/mae_pretrain
  python -m vaflax.main --config=configs/mae_pretrain.py --workdir=W
  python -m vaflax.main --config=configs/mae_pretrain.py:dataset=celeba_faces+imdb_wiki --workdir=W

Recipe (He et al. 2022, Table 8 / A.1): ViT-B/16 encoder, decoder of 8 blocks of width 512,
75% of the patches masked, MSE on per-patch-normalised pixels (norm_pix_loss), AdamW with
lr = 1.5e-4 * batch / 256, betas (0.9, 0.95), weight decay 0.05, cosine schedule after a linear
warmup. Zhang et al. pretrain on a union of large face corpora; `dataset` is any face dataset
or weighted mixture (`config.input.dataset`, e.g. 'affectnet:1,celeba_faces:1,casia_webface:1');
no labels are read (`standardize` gives every builder the same features, `keep` drops the
labels). During training `workdir/reconstructions/step_<n>.png` shows original | masked |
reconstruction of the first validation images, and val/loss is the reconstruction loss of the
validation split on fixed masks.

Arguments: variant (ViT name/patch, e.g. B/16, L/16), dataset (a name or a mixture whose parts
are joined by '+' here, or --config.input.dataset='a:1,b:1'), runlocal
(synthetic_va frames at 48 px, a 4-block ViT with patch 6, a few minutes on a 2-core CPU).
"""

from configs import common

# Pretraining face corpora with builders in this repo (docs/datasets/pretraining_corpora.md).
FACE_MIXTURE = 'affectnet:1,celeba_faces:1,casia_webface:1,imdb_wiki:1'

# Ops that read no label: the crop/flip augmentation of MAE, then only the image survives.
# Face crops are already tight, so the crop is milder than MAE's RandomResizedCrop(0.2, 1).
PP_TRAIN = ("standardize|random_crop(0.8)|resize({image_size})|flip_lr|value_range(-1, 1)|"
            "keep('image', 'index')")
PP_EVAL = "standardize|resize({image_size})|value_range(-1, 1)|keep('image', 'index')"

RUNLOCAL_VIT = dict(variant='mu/6', width=96, depth=4, num_heads=4, mlp_dim=384, patch_size=6)


def get_config(arg=None):
  a = common.parse_arg(arg, variant='B/16', dataset=FACE_MIXTURE, runlocal=False)
  c = common.base_config()
  c.task = 'mae'
  c.model_name = 'mae'
  c.model.variant = a.variant  # encoder: ViT name/patch (vaflax/models/vit.py VARIANTS)
  c.image_size = 224  # input side in pixels (ViT-B/16 at 224: 14x14 patches)
  c.model.image_size = c.get_ref('image_size')  # the model follows --config.image_size
  c.model.mask_ratio = 0.75  # fraction of patches hidden from the encoder (He et al. 2022)
  c.model.norm_pix_loss = True  # per-patch normalised pixel targets (He et al. 2022, Tab. 1c)
  c.model.decoder_width = 512  # decoder width (He et al. 2022 default decoder)
  c.model.decoder_depth = 8  # decoder blocks
  c.model.decoder_num_heads = 16  # decoder attention heads
  c.model.pool_type = 'gap'  # pooling used by the fine-tuned model (the MAE encoder keeps CLS)
  c.model.remat = False  # rematerialise blocks to save accelerator memory
  c.model.dtype = 'float32'  # compute dtype ('bfloat16' on GPU/TPU; params stay float32)

  c.input.dataset = a.dataset.replace('+', ',')  # ',' separates arguments: '+' in a mixture
  c.input.pp_train = PP_TRAIN
  c.input.pp_eval = PP_EVAL
  c.input.eval_split = 'validation'  # split of the FIRST dataset of the mixture ('' to skip)

  c.batch_size = 4096  # He et al. 2022
  c.total_steps = 0
  c.total_epochs = 800.0  # He et al. 2022 (ImageNet); Zhang et al. do not state theirs
  c.optimizer.name = 'adamw'
  c.optimizer.lr = 1.5e-4 * c.batch_size / 256  # base lr 1.5e-4 scaled by batch / 256
  c.optimizer.b2 = 0.95  # He et al. 2022
  c.optimizer.weight_decay = 0.05  # He et al. 2022 (not on biases and norms)
  c.schedule.name = 'cosine'
  c.schedule.warmup_steps = 0
  c.schedule.warmup_epochs = 40.0  # He et al. 2022: 40 linear warmup epochs
  c.log_every_steps = 100
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 2000

  if a.runlocal:
    # Frames of the synthetic clips, labels ignored. mae_va:runlocal reads synthetic_va_large
    # instead, the set it fine-tunes on (4x the identities). Fine-tuned there for 3000 steps, the
    # ViTs from this 300-step MAE and from a 1000-step MAE on synthetic_va_large score alike
    # (docs/mae_va.md).
    c.input.dataset = 'synthetic_va'
    c.model.update(RUNLOCAL_VIT)  # 96 wide, 4 blocks, 6 px patches
    c.model.decoder_width = 64
    c.model.decoder_depth = 2
    c.model.decoder_num_heads = 4
    # Pixel targets, not per-patch normalised ones: the synthetic faces are flat-shaded, so most
    # 6 px patches are nearly uniform and normalising them turns their uint8 rounding into
    # unit-variance noise to predict. Fine-tuned, the ViT from this MAE beats the one from the
    # norm-pix MAE and the one from random init (docs/mae_va.md).
    c.model.norm_pix_loss = False
    c.image_size = 48  # 8x8 patches of 6 px
    c.batch_size = 64
    c.total_epochs = 0.0
    c.total_steps = 300
    c.optimizer.lr = 1.5e-4 * 64 / 256 * 8  # the scaling rule x8: few steps, tiny model
    c.schedule.warmup_epochs = 0.0
    c.schedule.warmup_steps = 30
    c.log_every_steps = 25
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 100
  return c
