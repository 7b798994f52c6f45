"""Model-hub speech encoders (wav2vec 2.0, HuBERT, WavLM) -> models/speech.py.

  python -m vaflax.convert --format=speech --input=DIR --workdir=OUT

DIR is a folder as the hub serves it: `config.json` (model_type wav2vec2, hubert or wavlm) and
`model.safetensors` or `pytorch_model.bin`. The weights may be the bare encoder (`HubertModel`)
or a model with a head, whose encoder sits under `wav2vec2.` / `hubert.` / `wavlm.`; the heads
(CTC `lm_head`, the pretraining quantizer and `project_q` / `project_hid`, `masked_spec_embed`,
classifiers) are reported as ignored, never silently dropped. The positional conv's weight norm
comes in either spelling, `weight_g` / `weight_v` (torch.nn.utils.weight_norm: the released files)
or `parametrizations.weight.original0` / `original1` (newer saves), and is folded into one kernel
(w = g v / |v|, the norm over every axis but the kernel's). The run is a feature extractor
(task 'speech'): `vaflax.load(OUT).embed_audio(wave)` and the fusion's audio='speech'.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from vaflax import presets
from vaflax.convert import layers, reader
from vaflax.models import speech

LICENCE = ('See the model card of the checkpoint you downloaded. The fairseq releases of '
           'wav2vec 2.0 and HuBERT are MIT; microsoft/unilm WavLM weights are MIT; fine-tuned '
           'and community models carry their own licence.')
NEW = ()
IGNORED = re.compile(r'(masked_spec_embed$|quantizer\.|project_q\.|project_hid\.|lm_head\.|'
                     r'projector\.|classifier\.|label_embs_concat$|final_proj\.)')
PREPROCESSING = ('16 kHz mono float32, zero mean and unit variance per utterance '
                 '(models/speech.normalize_wave; embed_audio(normalize=True))')
WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')
MAX_CONFIG_BYTES = 1 << 20
PREFIXES = ('wav2vec2.', 'hubert.', 'wavlm.')


def _hub_config(folder: str) -> dict:
  path = os.path.join(folder, 'config.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{folder}: no config.json (--format=speech reads a model-hub folder: '
                            f'config.json and one of {", ".join(WEIGHT_FILES)})')
  if os.path.getsize(path) > MAX_CONFIG_BYTES:
    raise ValueError(f'{path}: {os.path.getsize(path)} bytes; not a model config')
  try:
    with open(path, encoding='utf-8') as f:
      cfg = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f'{path}: not valid JSON ({e})') from None
  if not isinstance(cfg, dict) or cfg.get('model_type') not in speech.FAMILIES:
    got = cfg.get('model_type') if isinstance(cfg, dict) else type(cfg).__name__
    raise ValueError(f'{path}: model_type {got!r}; --format=speech converts '
                     f'{", ".join(speech.FAMILIES)}')
  return cfg


def read(path: str) -> reader.Checkpoint:
  """The encoder's tensors of a hub folder (prefix removed); `.path` is the weights file and
  `.hub_config` the parsed config.json."""
  if not os.path.isdir(path):
    raise NotADirectoryError(f'{path}: --format=speech reads a model-hub folder (config.json + '
                             f'{" or ".join(WEIGHT_FILES)}), not a file')
  cfg = _hub_config(path)
  files = [os.path.join(path, f) for f in WEIGHT_FILES if os.path.isfile(os.path.join(path, f))]
  if not files:
    raise FileNotFoundError(f'{path}: no {" or ".join(WEIGHT_FILES)} (sharded checkpoints are '
                            'not supported)')
  ckpt = reader.read_checkpoint(files[0])
  prefix = next((p for p in PREFIXES if any(k.startswith(p) for k in ckpt)), '')
  out = reader.Checkpoint({k[len(prefix):] if k.startswith(prefix) else k: v
                           for k, v in ckpt.items()}, ckpt.kind)
  out.path, out.hub_config = files[0], cfg
  return out


def model_fields(cfg: dict) -> dict:
  """speech.Model keyword arguments of a hub config; what the model does not implement is an
  error rather than a silently different network."""
  family = cfg['model_type']
  unsupported = {'hidden_act': ('gelu',), 'feat_extract_activation': ('gelu',),
                 'add_adapter': (False, None), 'adapter_attn_dim': (None,),
                 'conv_pos_batch_norm': (False, None)}
  for key, ok in unsupported.items():
    if cfg.get(key, ok[0]) not in ok:
      raise ValueError(f'config.json: {key}={cfg[key]!r} is not supported (expected '
                       f'{" or ".join(map(repr, ok))})')
  n = len(cfg['conv_dim'])
  fields = dict(
      family=family, conv_dim=list(cfg['conv_dim']), conv_kernel=list(cfg['conv_kernel'][:n]),
      conv_stride=list(cfg['conv_stride'][:n]), conv_bias=bool(cfg.get('conv_bias', False)),
      feat_extract_norm=cfg.get('feat_extract_norm', 'group'),
      feat_proj_layer_norm=bool(cfg.get('feat_proj_layer_norm', True)) if family == 'hubert'
      else True,
      hidden_size=int(cfg['hidden_size']), num_layers=int(cfg['num_hidden_layers']),
      num_heads=int(cfg['num_attention_heads']), intermediate_size=int(cfg['intermediate_size']),
      num_conv_pos_embeddings=int(cfg['num_conv_pos_embeddings']),
      num_conv_pos_embedding_groups=int(cfg['num_conv_pos_embedding_groups']),
      stable_layer_norm=bool(cfg.get('do_stable_layer_norm', False)),
      layer_norm_eps=float(cfg.get('layer_norm_eps', 1e-5)),
      num_buckets=int(cfg.get('num_buckets', 320)) if family == 'wavlm' else 0,
      max_bucket_distance=int(cfg.get('max_bucket_distance', 800)), dtype='float32')
  return fields


def make_config(src, variant: str = ''):
  del variant  # the config says everything
  c = presets.base_config()
  c.task = 'speech'  # a frozen feature extractor (vaflax/tasks/fusion.py), never trained alone
  c.model_name = 'speech'
  c.model.update(model_fields(src.hub_config))
  c.input.dataset = ''
  c.input.pp_train = c.input.pp_eval = ''  # waveforms, not images: models/speech.normalize_wave
  c.input.sample_rate = speech.SAMPLE_RATE
  c.input.normalize = bool(src.hub_config.get('do_normalize', True))  # the hub extractor's
  return c


def fold_weight_norm(g, v) -> np.ndarray:
  """torch weight_norm(dim=2): w = g * v / |v|, |v| over the output and input channels per tap."""
  v64 = v.astype(np.float64)
  norm = np.sqrt(np.sum(v64 * v64, axis=(0, 1), keepdims=True))
  return (g.astype(np.float64) * v64 / norm).astype(np.float32)


def map_weights(src, config) -> layers.Mapping:
  m = layers.Mapping(src)
  fx = 'feature_extractor.conv_layers'
  conv1d = lambda w_OxIxK: np.transpose(w_OxIxK, (2, 1, 0))
  for i in range(len(config.model.conv_dim)):
    m.copy(f'{fx}.{i}.conv.weight', f'feature_extractor/convs/{i}/kernel', conv1d)
    if config.model.conv_bias:
      m.copy(f'{fx}.{i}.conv.bias', f'feature_extractor/convs/{i}/bias')
    if i == 0 or config.model.feat_extract_norm == 'layer':
      m.layer_norm(f'{fx}.{i}.layer_norm', f'feature_extractor/norms/{i}')
  if config.model.feat_proj_layer_norm:
    m.layer_norm('feature_projection.layer_norm', 'projection_norm')
  m.linear('feature_projection.projection', 'projection')
  pos = 'encoder.pos_conv_embed.conv'
  spellings = ((f'{pos}.weight_g', f'{pos}.weight_v'),
               (f'{pos}.parametrizations.weight.original0',
                f'{pos}.parametrizations.weight.original1'))
  g_key, v_key = next((s for s in spellings if s[0] in src), spellings[0])
  w = fold_weight_norm(m.take(g_key), m.take(v_key))
  m.put('pos_conv_embed/conv/kernel', conv1d(w), v_key)
  m.copy(f'{pos}.bias', 'pos_conv_embed/conv/bias')
  m.layer_norm('encoder.layer_norm', 'layer_norm')
  for i in range(config.model.num_layers):
    t, v = f'encoder.layers.{i}', f'layers/{i}'
    for p in ('q_proj', 'k_proj', 'v_proj', 'out_proj'):
      m.linear(f'{t}.attention.{p}', f'{v}/attention/{p}')
    m.layer_norm(f'{t}.layer_norm', f'{v}/layer_norm')
    m.layer_norm(f'{t}.final_layer_norm', f'{v}/final_layer_norm')
    m.linear(f'{t}.feed_forward.intermediate_dense', f'{v}/feed_forward/intermediate_dense')
    m.linear(f'{t}.feed_forward.output_dense', f'{v}/feed_forward/output_dense')
    if config.model.num_buckets:
      m.copy(f'{t}.attention.gru_rel_pos_const', f'{v}/gate/gru_rel_pos_const')
      m.linear(f'{t}.attention.gru_rel_pos_linear', f'{v}/gate/gru_rel_pos_linear')
  if config.model.num_buckets:
    m.copy('encoder.layers.0.attention.rel_attn_embed.weight', 'rel_attn_embed/embedding')
  return m
