"""The small public Python API: `vaflax.load(workdir)` -> a run that scores face crops.

  import vaflax
  run = vaflax.load('workdirs/resnet_va')          # any training workdir or converted weights
  faces, summary = run.predict_image(photo_HxWx3)  # every face found, as python -m vaflax.predict
  out = run.predict(faces_NxHxWx3)                 # uint8 face crops cut with the run's spec
  out['valence'], out['arousal']                   # (N,) float32 NumPy arrays
  feats_NxD = run.embed(faces_NxHxWx3)              # the features the VA head reads
  frames, summary = run.predict_video('clip.mp4')    # per-frame records (faces found by predict)

Crops go through the run's own evaluation preprocessing (its `input.pp_eval`: crop, resize to
the model's input size, value range or ImageNet normalisation) exactly as predict does
(vaflax/predict/model.py), so a run behaves the same in Python, in predict and in evaluate.
"""

from __future__ import annotations

import numpy as np


class Run:
  """A restored run on one device (vaflax/runs.py loads it: model weights only, eval mode)."""

  def __init__(self, workdir: str, *, step: int | None = None, batch_size: int = 32,
               overrides=()):
    from vaflax import runs, speech_features  # noqa: PLC0415 -- imports jax
    from vaflax.predict import model  # noqa: PLC0415

    self._speech = None
    if runs.load_config(runs.resolve_workdir(workdir)).model_name == 'speech':
      # A speech encoder (vaflax.convert --format=speech): embed_audio only.
      self._speech = speech_features.Encoder(workdir, step)
      self.workdir, self.step, self.config = (self._speech.workdir, self._speech.run.step,
                                              self._speech.run.config)
      return
    self._predictor = model.Predictor(workdir, checkpoint_step=step, batch_size=batch_size,
                                      overrides=overrides)
    if self._predictor.window:
      raise ValueError(f'{workdir}: a model over windows of {self._predictor.window} frames scores '
                       'clips, not single faces; use python -m vaflax.predict on the video')
    self.workdir, self.step = self._predictor.workdir, self._predictor.step
    self.config = self._predictor.config

  def _inputs(self, faces) -> list[dict]:
    """Model inputs of a uint8 (N, H, W, 3) array, or of a list of (H, W, 3) crops of any
    sizes (each is resized by the run's preprocessing)."""
    if not isinstance(faces, list | tuple):
      arr = np.asarray(faces)
      if arr.ndim != 4 or arr.dtype != np.uint8 or arr.shape[-1] not in (1, 3):
        hint = (' (one photo? run.predict_image(photo) finds, aligns and scores its faces as '
                'predict does; a single crop needs a batch axis: crop[None])'
                if arr.ndim == 3 else '')
        raise ValueError(f'faces must be a uint8 array (N, H, W, 3) of face crops cut with the '
                         f"run's crop spec (or a list of (H, W, 3) crops); got a {arr.dtype} "
                         f'array of shape {arr.shape}{hint}')
    crops = list(faces) if isinstance(faces, list | tuple) else list(np.asarray(faces))
    for f in crops:
      f = np.asarray(f)
      if f.ndim != 3 or f.shape[-1] not in (1, 3) or f.dtype != np.uint8:
        raise ValueError(f'faces must be a uint8 array (N, H, W, 3) of face crops (or a list of '
                         f'(H, W, 3) ones); got a crop of {f.dtype} {f.shape}')
    return [self._predictor.preprocess(np.asarray(f)) for f in crops]

  def _chunks(self, items):
    size = self._predictor.batch_size
    return [items[i:i + size] for i in range(0, len(items), size)]

  def predict(self, faces) -> dict[str, np.ndarray]:
    """{'valence': (N,), 'arousal': (N,)} for N uint8 face crops ((N, H, W, 3) or a list); also
    'quadrant' (N,) when the model has a quadrant head, 'expression' (N, E) logits when it
    has an expression head, and 'valence_lo', 'valence_hi', 'arousal_lo', 'arousal_hi' (N,)
    when the run has a calibration.json (docs/uncertainty.md)."""
    outs = [self._predictor.result(self._predictor.dispatch(c))
            for c in self._chunks(self._inputs(faces))]
    cat = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    res = {'valence': cat['va'][:, 0].astype(np.float32),
           'arousal': cat['va'][:, 1].astype(np.float32)}
    if 'quadrant' in cat:
      res['quadrant'] = cat['quadrant']
    if 'expression_logits' in cat:
      res['expression'] = cat['expression_logits'].astype(np.float32)
    cal = self._predictor.calibration
    if cal is not None:  # the run's calibrated intervals (vaflax/calibration.py), around the VA
      # clipped to [-1, 1] as predict's rows (pipeline.resolve)
      # Crops come without keypoints: their roll is unknown and taken as upright.
      from vaflax import quality  # noqa: PLC0415
      lo, hi = cal.intervals(np.clip(cat['va'], -1, 1), cat.get('difficulty'),
                             feature_names=quality.DIFFICULTY_FEATURES)
      for d, name in enumerate(('valence', 'arousal')):
        res[f'{name}_lo'], res[f'{name}_hi'] = (lo[:, d].astype(np.float32),
                                                hi[:, d].astype(np.float32))
    return res

  def predict_image(self, image, **options):
    """(records, summary) of a uint8 RGB photo (H, W, 3): its faces detected, aligned with the
    run's crop spec and scored exactly as `python -m vaflax.predict` scores the same pixels
    in a file (it goes through that path as a lossless PNG). `options` as predict_video's
    (faces='all' scores every face, not only the largest)."""
    import os  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from PIL import Image  # noqa: PLC0415

    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
      raise ValueError(f'image must be a uint8 RGB array (H, W, 3); got a {arr.dtype} array of '
                       f'shape {arr.shape}')
    with tempfile.TemporaryDirectory() as d:
      path = os.path.join(d, 'image.png')
      Image.fromarray(arr).save(path, compress_level=1)
      return self.predict_video(path, **options)

  def predict_video(self, path, *, frame_stride: int = 1, smooth: str = 'none',
                    smooth_window: int = 5, faces: str = 'largest', min_face: int = 40,
                    detect_every: int = 10, max_age: int = 5):
    """(records, summary) of a video (or an image) as `python -m vaflax.predict` sees it, without
    writing files. records: one row per face per processed frame and one (face_id -1, NaN VA)
    per frame without a face, with the CSV's columns (docs/predict.md); a pandas DataFrame when
    pandas is installed, else a dict of NumPy arrays. summary: the per-clip JSON summary.
    Raises vaflax.predict.InputError when the file cannot be read.

    The input goes through predict's one scheduler (collection.predict_many, as the CLI's
    inputs do); only its last step differs: the rows are kept instead of written."""
    import tempfile  # noqa: PLC0415

    from vaflax.predict import collection, pipeline  # noqa: PLC0415

    opts = pipeline.Options(frame_stride=frame_stride, smooth=smooth, smooth_window=smooth_window,
                            faces=faces, min_face=min_face, detect_every=detect_every,
                            max_age=max_age, plots=False, progress=False)
    with tempfile.TemporaryDirectory() as out:  # an unreadable input's error JSON goes here
      summary = collection.predict_file(self._predictor, path, out, opts, finish_clip=_keep_rows)
    cols = summary.pop('records')
    try:
      import pandas  # noqa: PLC0415
    except ImportError:
      return cols, summary
    return pandas.DataFrame(cols), summary

  def embed(self, faces) -> np.ndarray:
    """(N, D) features: for a ResNet the global-average-pooled last stage (torchvision's `fc`
    input); for a ViT the pooled encoder output after its final LayerNorm, unmasked (the CLS
    token when the run pools with 'cls', as converted MAE weights do)."""
    try:
      return np.concatenate([self._predictor.embed(c) for c in self._chunks(self._inputs(faces))])
    except AttributeError as e:
      raise ValueError(f'{self.workdir}: model {self.config.model_name!r} has no `features` '
                       'method (embed supports resnet and vit runs)') from e


  def embed_audio(self, wave, *, normalize: bool = True) -> np.ndarray:
    """(layers + 1, frames, dim) float32 hidden states of a speech encoder run (wav2vec 2.0,
    HuBERT, WavLM; docs/pretrained.md) for a 1-D float32 16 kHz mono waveform; one frame per
    20 ms. The encoders were trained on utterances normalised to zero mean and unit variance
    (the hub feature extractors' do_normalize): `normalize=True` does that here; pass False
    for a waveform normalised already. The states are the first layer's input, then every
    layer's output (transformers' output_hidden_states)."""
    if self._speech is None:
      raise ValueError(f'{self.workdir}: a {self.config.model_name!r} run; embed_audio needs a '
                       'speech encoder (python -m vaflax.convert --format=speech)')
    return self._speech.hidden_states(wave, normalize=normalize)


def _keep_rows(predictor, clip, info, va_face, head_face, opts, rel=None) -> dict:
  """The last step of predict_many for predict_video: pipeline.finish_clip's summary, with the
  CSV's columns as arrays under 'records', and no file written."""
  from vaflax.predict import outputs, pipeline  # noqa: PLC0415

  if not clip.processed:  # finish_clip's error summary (nothing decoded)
    return pipeline.finish_clip(predictor, clip, info, va_face, head_face, opts, rel)
  res = pipeline.resolve(clip, va_face, head_face, opts, predictor.calibration)
  summary = pipeline.summarize(predictor, clip, info, res, opts, rel)
  summary['records'] = outputs.records(clip.rows, res.va, res.quadrant, res.head, res.lo, res.hi)
  return summary


def load(workdir: str, *, step: int | None = None, batch_size: int = 32, overrides=()) -> Run:
  """The run in `workdir` (a training workdir, a stage of a recipe, or `vaflax.convert` output)."""
  return Run(workdir, step=step, batch_size=batch_size, overrides=overrides)
