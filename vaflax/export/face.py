"""A run's face model as one JAX function of uint8 crops: what `vaflax.export` converts.

`face_graph(workdir)` restores the run (vaflax/runs.py) and reads its crop spec and evaluation
preprocessing as predict does (vaflax/predict/model.py `Predictor`), then composes

  faces uint8 (N, S, S, 3) -> pp_eval in JAX (export/preprocess.py) -> the task's predict_fn
  under the run's evaluation rules (flip TTA included: vaflax/tasks/__init__.py `predict_fn`)
  -> valence (N,), arousal (N,), expression (N, E) softmax probabilities when the model has an
     expression head, embedding (N, D) when the model has `features` (resnet, vit: the input
     of the VA head, of the unmirrored crop, as vaflax.api's `embed`).

S is the run's crop size: the crop that predict cuts (vaflax/faces.py `crop_face`) is the input.
Window models (config.input.window > 0: CNN-RNN, fusion) take (N, T, S, S, 3) `frames` and give
per-frame valence, arousal (N, T); a fusion model's audio is a second input.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from vaflax.export import preprocess


@dataclasses.dataclass
class FaceGraph:
  """fn(*inputs) -> tuple of outputs (the order of `outputs`); `inputs` and `outputs` are
  [{'name', 'shape' (None for the dynamic batch), 'dtype'}]; `info` goes into export.json."""

  fn: object
  inputs: list[dict]
  outputs: list[dict]
  info: dict


def _out(name, shape, dtype='float32'):
  return {'name': name, 'shape': list(shape), 'dtype': dtype}


def face_graph(workdir: str, *, overrides=(), flip_tta: bool | None = None) -> FaceGraph:
  """The face model of the run in `workdir`; `flip_tta` overrides config.eval.flip_tta."""
  from vaflax.predict.model import Predictor  # noqa: PLC0415

  overrides = list(overrides)
  if flip_tta is not None:
    overrides.append(f'eval.flip_tta={bool(flip_tta)}')
  # The predictor is the one reader of a run's crop spec and preprocessing (its dataset's
  # metadata when the run records none), and it holds the restored model (one device).
  pred = Predictor(workdir, overrides=overrides)
  graph = build(pred.model(), pred.config, crop_size=pred.crop_size, pp_spec=pred.pp_spec,
                window=pred.window, audio_samples=pred.audio_samples if pred.uses_audio else 0)
  graph.info.update({'workdir': pred.workdir, 'step': pred.step,
                     'crop': pred.crop_spec.to_dict()})
  return graph


def build(model, config, *, crop_size: int, pp_spec: str, window: int = 0,
          audio_samples: int = 0) -> FaceGraph:
  """The exported function of an eval-mode `model` of `config` (any weights: benchmarks build
  full-size models with random ones): uint8 crops of crop_size -> pp_spec -> outputs."""
  from vaflax import tasks, tta  # noqa: PLC0415

  model = _plain_convs(model)
  predict_fn = tasks.predict_fn(config)
  if tasks.get(config.task).mirrors_itself:
    # EmoFAN's predict_fn also decodes landmarks from the heatmaps (an integer argmax and rem that
    # jax2onnx cannot lower with a dynamic batch). The outputs exported are mirror-invariant, so
    # flip TTA over the model's own outputs gives the same numbers as the task's.
    def own(m, batch, config):
      del config
      return {k: v for k, v in m(batch).items() if k in tta.MIRROR_INVARIANT}

    predict_fn = tta.flip_tta(own) if tta.enabled(config) else own
  steps = preprocess.describe(pp_spec, crop_size)
  pp = preprocess.build(steps)
  S, T = crop_size, window
  graphdef, state = nnx.split(model)
  # Weights become constants of the exported graph (float32 as trained or converted).
  state = jax.tree.map(jnp.asarray, state)

  def forward(batch):
    # Window models: an NNX RNN (nnx.scan) refuses Variables that hold arrays from outside the
    # trace; as values of this trace (a copy XLA and onnxruntime fold away) the weights pass.
    m = nnx.merge(graphdef, jax.tree.map(jnp.copy, state) if T else state)
    out = predict_fn(m, batch, config)
    if 'va' not in out:
      raise ValueError(f'task {config.task!r} predicts no valence/arousal (outputs '
                       f'{sorted(out)}): nothing to export')
    return m, out

  probe = jax.eval_shape(lambda b: forward(_prepared(b, pp))[1],
                         _probe_batch(S, T, bool(audio_samples), audio_samples))
  has_expr = 'emotion_logits' in probe
  has_emb = not T and hasattr(model, 'features')
  names = ['valence', 'arousal'] + (['expression'] if has_expr else [])
  names += ['embedding'] if has_emb else []

  if T:
    inputs = [_out('frames', (None, T, S, S, 3), 'uint8')]
    if audio_samples:
      inputs.append(_out('audio', (None, T, audio_samples)))

    def fn(frames, audio=None):
      batch = {'frames': pp(frames)}
      if audio is not None:
        batch['audio'] = audio.astype(jnp.float32)
      _, out = forward(batch)
      return out['va'][..., 0], out['va'][..., 1]

    outputs = [_out('valence', (None, T)), _out('arousal', (None, T))]
  else:
    inputs = [_out('faces', (None, S, S, 3), 'uint8')]

    def fn(faces):
      batch = {'image': pp(faces)}
      m, out = forward(batch)
      res = [out['va'][:, 0], out['va'][:, 1]]
      if has_expr:
        res.append(jax.nn.softmax(out['emotion_logits'].astype(jnp.float32), axis=-1))
      if has_emb:
        res.append(m.features(batch).astype(jnp.float32))
      return tuple(r.astype(jnp.float32) for r in res)

    shapes = {'valence': (None,), 'arousal': (None,)}
    if has_expr:
      shapes['expression'] = (None, probe['emotion_logits'].shape[-1])
    if has_emb:
      feats = jax.eval_shape(lambda b: nnx.merge(graphdef, state).features(_prepared(b, pp)),
                             _probe_batch(S, 0, False, 0))
      shapes['embedding'] = (None, feats.shape[-1])
    outputs = [_out(n, shapes[n]) for n in names]

  info = {
      'model_name': config.model_name, 'task': config.task, 'window': T,
      'flip_tta': tta.enabled(config),
      'preprocessing': {'pp_eval': pp_spec, 'in_graph': steps},
  }
  if has_expr:
    from vaflax import circumplex  # noqa: PLC0415

    n = probe['emotion_logits'].shape[-1]
    names_e = list(circumplex.AFFECTNET_EMOTIONS)
    info['expression_classes'] = [names_e[k] if k < len(names_e) else str(k) for k in range(n)]
  if has_emb:
    info['embedding'] = 'the features the VA head reads (model.features) of the unmirrored crop'
  if T:
    info['window_note'] = (f'frames: {T} consecutive face crops of one track (uint8, the crop '
                           'spec below), as predict feeds windows; outputs are per frame')
  return FaceGraph(fn, inputs, outputs, info)


def _plain_convs(model):
  """The eval-mode model as a converter can read it: lax's own convolution (a ResNet on the CPU
  swaps in vaflax/models/cpu_conv.py: the same forward, under a custom VJP that converters do not
  read), and no rng streams in its state (dropout in eval mode draws nothing; jax2onnx cannot
  hold a PRNG key as a constant)."""
  for _, m in nnx.iter_graph(model):
    if isinstance(m, nnx.Conv):
      m.conv_general_dilated = jax.lax.conv_general_dilated
    if isinstance(m, nnx.Dropout) and m.deterministic and m.rngs is not None:
      m.rngs = None
  return model


def _prepared(batch, pp):
  return {k: pp(v) if k in ('image', 'frames') else v for k, v in batch.items()}


def _probe_batch(S, T, audio, samples):
  """Abstract uint8 crops (and audio) of two examples: shapes for jax.eval_shape."""
  if T:
    b = {'frames': jax.ShapeDtypeStruct((2, T, S, S, 3), jnp.uint8)}
    if audio:
      b['audio'] = jax.ShapeDtypeStruct((2, T, samples), jnp.float32)
    return b
  return {'image': jax.ShapeDtypeStruct((2, S, S, 3), jnp.uint8)}
