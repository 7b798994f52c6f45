r"""MAE-pretrained ViT -> VA fine-tuning -> audio-visual temporal fusion (Zhang et al. 2023,
"Multi-modal Facial Affective Analysis based on Masked Autoencoder", ABAW5: 2nd in VA).

  python -m vaflax.main --config=configs/mae_va.py:runlocal --workdir=/tmp/mae_va
  python -m vaflax.main --config=configs/mae_va.py --workdir=W
  python -m vaflax.main --config=configs/mae_va.py --workdir=W --config.init_from=MAE_WORKDIR
  python -m vaflax.main --config=configs/mae_va.py:pretrained=W/mae_b16 --workdir=W

One command runs the whole recipe (vaflax/recipes.py), one sub-workdir per stage; re-run
the same command to continue where it stopped (a finished stage is never redone):
  workdir/pretrain           MAE on face images (config.pretrain; skipped when init_from is set)
  workdir/finetune           ViT + linear head on single frames, loss (1 - CCC_v) + (1 - CCC_a),
                             layer-wise lr decay, encoder from the MAE, decoder dropped
                             (config.finetune)
  workdir/fusion_video_only  the baseline: the fusion code with use_audio=False
                             (config.fusion_video_only, linked to config.fusion: overriding a
                             fusion field changes both)
  workdir/fusion             frozen fine-tuned ViT features + audio encoder per frame,
                             Transformer over windows of frames, per-frame VA head (config.fusion)
  workdir/metrics.jsonl      the final numbers of every stage: val/ccc_* of the fusion stage,
                             video_only/val/ccc_*, finetune/val/ccc_*, pretrain/val/loss, ...
The ViT trunk is defined once in `config.vit` and `config.image_size` (every stage follows).

Plain config: ViT-B/16 at 224 px; MAE on the face corpora (configs/mae_pretrain.py), VA on
Aff-Wild2 (`affwild2_va`, built with audio) with windows of 100 frames in the fusion stage.
runlocal: the same code path on synthetic_va_large (faces + voice; synthetic_va's validation
and test clips, 4x its training identities) at 48 px with a 4-block ViT of patch 6 (CLS
pooling; the MAE on pixel targets) and windows of 8 frames (clips have 24): MAE 300 steps,
fine-tuning 3000, each fusion stage 300 (docs/mae_va.md has its measured time and CCC).

Arguments: variant (ViT name/patch), dataset (VA data of finetune and fusion), pretrain_dataset
(faces for the MAE; mixture parts joined by '+'), pretrained (a workdir written by
`python -m vaflax.convert --format=mae`: skips the MAE stage, fine-tunes its encoder with the
file's position embedding and ImageNet normalisation; docs/pretrained.md), audio ('logmel', the
default: a small log-mel CNN learnt with the fusion; 'speech': a frozen pretrained speech encoder,
audio_init=W a run written by `python -m vaflax.convert --format=speech`, docs/mae_va.md),
runlocal. For example, with a tiny random encoder:
  python -m vaflax.convert --format=speech --input=tests/fixtures/speech/wav2vec2 --workdir=/tmp/w2v
  python -m vaflax.main --config=configs/mae_va.py:runlocal,audio=speech,audio_init=/tmp/w2v \
      --workdir=/tmp/mae_va_speech
"""

import ml_collections

from configs import common, mae_pretrain
from vaflax import speech_features

RUNLOCAL_AUDIO = dict(n_mels=32, width=64, num_layers=2)
RUNLOCAL_DATASET = 'synthetic_va_large'  # built on first use, no download
# Fine-tuning trains on random squares of side U(0.9, 1) x the frame. Its evaluation and both
# fusion stages (which read the fine-tuned ViT frozen) take the centre square of the mean side,
# so the ViT always sees faces at the scale it was trained on (as resnet_va: random 0.85, centre
# 0.925). With the whole frame instead (faces 5% smaller), 8 of 8 scores of 4 fine-tuned runlocal
# ViTs lost arousal CCC and 6 of 8 valence (docs/mae_va.md).
FINETUNE_CROP = 0.9
CENTRE_CROP = f'center_crop({(1 + FINETUNE_CROP) / 2:g})'


def _link(dst, src, skip=()):
  """Makes every leaf of `dst` a reference to the same leaf of `src` (except dotted `skip`)."""
  for key in src.keys():
    if key in skip:
      continue
    if isinstance(src[key], ml_collections.ConfigDict):
      dst[key] = ml_collections.ConfigDict()
      _link(dst[key], src[key], tuple(s.partition('.')[2] for s in skip if s.startswith(key + '.')))
    else:
      dst[key] = src.get_ref(key)


def _finetune(a) -> ml_collections.ConfigDict:
  c = common.base_config()
  c.task = 'supervised'  # (1 - CCC_v) + (1 - CCC_a) on single frames (config.loss.ccc_weight)
  c.model_name = 'vit'
  c.model.head_zero_init = True  # predictions start at 0, the VA mean
  c.model.drop_path = 0.1  # stochastic depth (He et al. 2022, A.2, ViT-B)
  c.model.remat = False
  c.model.dtype = 'float32'
  c.input.dataset = a.dataset
  c.input.window = 0  # single frames
  c.input.pp_train = (f'standardize|random_crop({FINETUNE_CROP})|resize({{image_size}})|flip_lr|'
                      'color_jitter(0.2, 0.2, 0.2)|value_range(-1, 1)|'
                      "keep('image', 'va', 'va_mask', 'index', 'video')")
  c.input.pp_eval = (f'standardize|{CENTRE_CROP}|resize({{image_size}})|value_range(-1, 1)|'
                     "keep('image', 'va', 'va_mask', 'index', 'video')")
  # MAE fine-tuning recipe (He et al. 2022, A.2): AdamW, base lr 5e-4 * batch / 256, layer
  # decay 0.65 (ViT-B), weight decay 0.05, cosine with warmup. Epochs and warmup: ours.
  c.batch_size = 256
  c.total_steps = 0
  c.total_epochs = 5.0
  c.optimizer.name = 'adamw'
  c.optimizer.lr = 5e-4 * c.batch_size / 256
  c.optimizer.b2 = 0.999
  c.optimizer.weight_decay = 0.05
  c.optimizer.layer_decay = 0.65  # lr x 0.65 ** (depth + 1 - layer id), vaflax/optim.py
  c.schedule.name = 'cosine'
  c.schedule.warmup_epochs = 0.5
  c.log_every_steps = 100
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 2000
  return c


def _fusion(a) -> ml_collections.ConfigDict:
  c = common.base_config()
  c.task = 'fusion'  # (1 - CCC_v) + (1 - CCC_a) pooled over the valid frames of the windows
  c.model_name = 'fusion'
  c.model.visual = ml_collections.ConfigDict()  # vit.Encoder kwargs; linked to config.vit below
  c.frozen = 'visual(/|$)'  # features of the fine-tuned ViT, as extracted features
  c.model.use_audio = True
  c.model.audio = ml_collections.ConfigDict(dict(
      sample_rate=16_000,  # all builders store 16 kHz mono
      n_fft=512,  # 32 ms window
      n_mels=64,
      frames_per_video_frame=4,  # 640 samples per frame at 25 fps -> hop of 10 ms
      width=128,  # audio feature width
      num_layers=2))  # residual temporal convolutions
  c.model.width = 128  # temporal Transformer width (authors' released code, models/fusion.py)
  c.model.num_layers = 4  # temporal Transformer blocks
  c.model.num_heads = 4
  c.model.max_len = 100  # longest window
  c.model.drop_path = 0.1
  # Modality dropout (ours, not in the paper): zero a training window's visual features with
  # this probability so that the fused model keeps using the audio (fusion stage only).
  c.model.visual_dropout = 0.0
  c.input.dataset = a.dataset
  c.input.window = 100  # frames per window (Zhang et al. 2023)
  c.input.window_stride = 50  # overlapping training windows; evaluation tiles each video
  c.input.pp_train = (f'standardize(audio=True)|{CENTRE_CROP}|resize({{image_size}})|'
                      "value_range(-1, 1)|keep('image', 'audio', 'va', 'va_mask', 'index', 'video')")
  c.input.pp_eval = c.input.pp_train
  c.batch_size = 32  # windows
  c.total_steps = 0
  c.total_epochs = 10.0
  c.optimizer.name = 'adamw'
  c.optimizer.lr = 1e-4
  c.optimizer.weight_decay = 0.05
  c.optimizer.grad_clip_norm = 1.0
  c.schedule.name = 'cosine'
  c.schedule.warmup_epochs = 0.5
  c.log_every_steps = 50
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  return c


def _speech_audio(c, encoder_run: str) -> None:
  """The fusion stage `c` on a frozen speech encoder's cached states (vaflax/speech_features.py):
  the encoder runs once per clip, over chunks of one window of continuous audio, and its I
  hidden states per video frame are cached under input.speech_cache_dir, keyed by the encoder's
  weight checksum; the fusion learns the softmax layer weights, a projection and the rest."""
  if not encoder_run:
    raise ValueError('mae_va: audio=speech needs audio_init=<run of python -m vaflax.convert '
                     '--format=speech> (a tiny random one for runlocal: --input='
                     'tests/fixtures/speech/wav2vec2)')
  dims = speech_features.encoder_dims(encoder_run)
  c.model.audio_kind = 'speech'
  c.model.speech = ml_collections.ConfigDict(dict(
      num_states=dims['num_states'],  # the encoder's layers + 1
      dim=dims['dim'],  # its width
      width=c.model.audio.get_ref('width')))  # the audio features' width (as the log-mel CNN's)
  c.input.speech_encoder = encoder_run  # the converted encoder run (its weights key the cache)
  c.input.speech_cache_dir = ''  # '' = <data_dir>/speech_features
  c.input.speech_chunk_frames = 0  # video frames per encoder chunk; 0 = the window
  for key in ('pp_train', 'pp_eval'):
    c.input[key] = c.input[key].replace('standardize(audio=True)', 'standardize').replace(
        "'audio', ", "'speech', ")


def get_config(arg=None):
  a = common.parse_arg(arg, variant='B/16', dataset='affwild2_va',
                       pretrain_dataset=mae_pretrain.FACE_MIXTURE, pretrained='', runlocal=False,
                       audio='logmel', audio_init='')
  c = ml_collections.ConfigDict()
  c.recipe = 'mae_va'  # the stages of vaflax/recipes.py, run by vaflax/stages.py
  c.init_from = ''  # an MAE (or ViT) run to fine-tune from; '' = pretrain one in workdir/pretrain
  c.data_dir = common.DEFAULT_DATA_DIR  # TFDS data dir of every stage
  c.image_size = 224  # input side of every stage (the ViT's position grid follows it)
  # The ViT trunk of every stage. pool_type: what the VA head and the fusion read, 'gap' (the
  # global average of the patch tokens, MAE fine-tuning) or 'cls' (the class token).
  c.vit = ml_collections.ConfigDict(dict(variant=a.variant, pool_type='gap'))
  c.test_split = ''  # after training, also evaluate fusion and video-only on this split
  c.tensorboard = True  # TensorBoard event files in every stage

  c.pretrain = mae_pretrain.get_config(
      'runlocal' if a.runlocal else f'variant={a.variant}')
  if not a.runlocal:
    c.pretrain.input.dataset = a.pretrain_dataset.replace('+', ',')
  c.finetune = _finetune(a)
  c.fusion = _fusion(a)

  if a.runlocal:
    c.image_size = 48
    # CLS pooling: the 4-block ViT fine-tuned 1000 steps from the MAE reads arousal far better
    # from the class token than from the average of its 64 patch tokens (docs/mae_va.md, "GAP
    # vs CLS").
    c.vit = ml_collections.ConfigDict(dict(mae_pretrain.RUNLOCAL_VIT, pool_type='cls'))
    c.test_split = 'test'
    # synthetic_va_large: synthetic_va's validation and test clips with 4x its training
    # identities (160). On synthetic_va's 40 the fine-tuned ViT memorises who is in the frame;
    # on 160 it generalises (docs/mae_va.md has both runs). Every stage reads it: the MAE its
    # frames (labels unused), fine-tuning and fusion its labels.
    c.pretrain.input.dataset = RUNLOCAL_DATASET
    c.finetune.input.dataset = c.fusion.input.dataset = RUNLOCAL_DATASET
    c.finetune.batch_size = 32
    c.finetune.total_epochs = 0.0
    # 3000 x 32 frames = 6 passes over the 15360 training frames: validation CCC still rises
    # in the last third (docs/mae_va.md has the curve).
    c.finetune.total_steps = 3000
    c.finetune.optimizer.lr = 1e-3
    c.finetune.optimizer.layer_decay = 0.9  # 4 blocks: embeddings get 0.9 ** 5 = 0.59 x lr
    c.finetune.model.drop_path = 0.0
    c.finetune.schedule.warmup_epochs = 0.0
    c.finetune.schedule.warmup_steps = 30
    c.finetune.log_every_steps = 100
    c.finetune.eval_every_steps = 1000
    c.finetune.checkpoint_every_steps = 500

    c.fusion.model.audio.update(RUNLOCAL_AUDIO)
    c.fusion.model.width = 64
    c.fusion.model.num_layers = 2
    c.fusion.model.max_len = 8
    c.fusion.model.drop_path = 0.0
    # Added when the ViT's features fitted synthetic_va's 40 training identities better than
    # they generalised, and the fused model leant on them instead of the audio. Kept on
    # synthetic_va_large, where the fused model beats the video-only one; not re-measured
    # without it there (docs/mae_va.md).
    c.fusion.model.visual_dropout = 0.5
    c.fusion.input.window = 8  # synthetic clips have 24 frames
    c.fusion.input.window_stride = 4
    c.fusion.batch_size = 8
    c.fusion.total_epochs = 0.0
    c.fusion.total_steps = 300
    c.fusion.optimizer.lr = 1e-3
    c.fusion.schedule.warmup_epochs = 0.0
    c.fusion.schedule.warmup_steps = 30
    c.fusion.log_every_steps = 25
    c.fusion.eval_every_steps = 150
    c.fusion.checkpoint_every_steps = 150

  if a.audio == 'speech':
    _speech_audio(c.fusion, a.audio_init)
  elif a.audio != 'logmel' or a.audio_init:
    raise ValueError(f"mae_va: audio={a.audio!r}, audio_init={a.audio_init!r}: audio is 'logmel' "
                     "(no checkpoint) or 'speech' with audio_init=<a speech encoder run>")

  if a.pretrained:  # converted MAE weights (vaflax/convert): their encoder, their pos_embed
    c.init_from = a.pretrained
    c.vit.posemb = 'learn'
    for s in (c.finetune, c.fusion):
      common.imagenet_inputs(s)

  # One ViT, one image size, one data dir across the stages.
  stages = (c.pretrain, c.finetune, c.fusion)
  for s in stages:
    s.image_size = c.get_ref('image_size')
    s.input.data_dir = c.get_ref('data_dir')
    s.tensorboard = c.get_ref('tensorboard')
  for key in c.vit.keys():
    c.pretrain.model[key] = c.vit.get_ref(key)
    c.finetune.model[key] = c.vit.get_ref(key)
    c.fusion.model.visual[key] = c.vit.get_ref(key)
  c.finetune.model.image_size = c.get_ref('image_size')
  c.fusion.model.visual.image_size = c.get_ref('image_size')

  # The baseline: the same fusion stage without the audio branch (and without reading audio).
  c.fusion_video_only = ml_collections.ConfigDict()
  _link(c.fusion_video_only, c.fusion, skip=('model.use_audio', 'input.pp_train', 'input.pp_eval',
                                              'input.speech_encoder'))
  c.fusion_video_only.model.use_audio = False
  c.fusion_video_only.input.speech_encoder = ''  # reads no audio features
  c.fusion_video_only.input.pp_train = c.fusion.input.pp_train.replace(
      'standardize(audio=True)', 'standardize').replace("'audio', ", '').replace("'speech', ", '')
  c.fusion_video_only.input.pp_eval = c.fusion_video_only.input.pp_train
  return c
