"""A run's model on one device, fed face crops prepared as its evaluation prepared them."""

from __future__ import annotations

import dataclasses
import math
import sys

import numpy as np

from vaflax import calibration, faces, quality

ROLL_KEY = 'roll'  # the face's roll in its crop, beside the model inputs (Predictor.preprocess)


def run_crop_spec(config, dataset_md: dict | None = None) -> tuple[faces.CropSpec, str]:
  """(the crop spec of a run, where it came from). A run records its training data's spec in
  `config.crop` (vaflax/train.py); a run without one (trained before crops were recorded, or
  converted weights) gets the spec in its dataset's metadata when that build has one, else
  `faces.DEFAULT_CROP` (box crop, margin 0.2) at the dataset's `crop_size` (older builds), else
  at 112 px."""
  crop = config.get('crop') if hasattr(config, 'get') else None
  if crop:
    return faces.CropSpec.from_dict(crop.to_dict() if hasattr(crop, 'to_dict') else crop), 'run'
  md = dataset_md or {}
  if isinstance(md.get('crop'), dict):
    return faces.CropSpec.from_dict(md['crop']), 'dataset'
  if md.get('crop_size'):
    return faces.CropSpec(size=int(md['crop_size'])), 'default'
  return faces.DEFAULT_CROP, 'default'


class Predictor:
  """A run's model restored on one device, with the crop and preprocessing of its training data."""

  def __init__(self, workdir: str, *, checkpoint_step: int | None = None, batch_size: int = 32,
               crop_size: int | None = None,
               crop_margin: float | None = None, data_dir: str | None = None, overrides=()):
    import jax  # noqa: PLC0415 -- after flag parsing
    from flax import nnx  # noqa: PLC0415

    from vaflax import runs, speech_features, tasks, tta  # noqa: PLC0415
    from vaflax.data import ops as ops_lib  # noqa: PLC0415

    if data_dir:
      overrides = [*overrides, f'input.data_dir={data_dir}']
    # One device: a stream of small batches gains nothing from a mesh.
    overrides = [*overrides, 'mesh.num_devices=1', 'mesh.fsdp=1', 'mesh.data=-1']
    run = runs.load_run(workdir, checkpoint_step, overrides=overrides)  # model only, eval mode
    self.workdir, config, self.step = run.workdir, run.config, run.step
    self.config = config
    self.window = int(config.input.window)
    pp = config.input.pp_eval
    self._pp, self.uses_audio = ops_lib.build_inputs(pp, image_size=config.image_size)
    # A fusion on a speech encoder (mae_va audio=speech) reads the encoder's states of the
    # video's audio track, made by the recipe's one rule (speech_features.Encoder.clip_features).
    self.speech = (speech_features.Encoder(config.input.speech_encoder)
                   if config.input.get('speech_encoder') else None)
    self._speech_track = (None, None)
    self.uses_audio = self.uses_audio or self.speech is not None
    self.pp_spec = pp.format(image_size=config.image_size)
    self.batch_size = max(1, batch_size // self.window) if self.window else max(1, batch_size)
    self.crop_spec, self.sample_rate, self.audio_samples = self._data_spec()
    # --crop_size / --crop_margin override the run's spec (a deliberate mismatch, for studies).
    if crop_size:
      self.crop_spec = dataclasses.replace(self.crop_spec, size=int(crop_size))
    if crop_margin is not None:
      self.crop_spec = dataclasses.replace(self.crop_spec, margin=float(crop_margin))
    self._model_def, self._state = nnx.split(run.model())
    model_def = self._model_def
    # Flip TTA follows the run's config.eval.flip_tta (predict's --flip_tta sets it), as in
    # training's evaluation and vaflax.evaluate: one rule, tasks.predict_fn.
    predict_fn = tasks.predict_fn(config)
    self.flip = tta.enabled(config)

    def fwd(model_state, batch):
      out = predict_fn(nnx.merge(model_def, model_state), batch, config)
      res = {'va': out['va']}
      if 'quadrant_logits' in out:
        res['quadrant'] = jax.numpy.argmax(out['quadrant_logits'], -1)
      if 'emotion_logits' in out:
        res['expression_logits'] = out['emotion_logits']
      return res

    def features(model_state, batch):
      return nnx.merge(model_def, model_state).features(batch)

    self._fwd = jax.jit(fwd)
    self._features = jax.jit(features)
    self.model_name = config.model_name
    # The run's interval calibration (vaflax/calibration.py), or None. A scaled one needs each
    # face's difficulty features as vaflax/calibrate.py's interval_inputs takes them: the
    # sharpness of the model input and the flip gap of the raw forward (no TTA) of the input
    # and its mirror, so a second forward is built for it, and only for it.
    self.calibration = calibration.load(self.workdir)
    self._raw = None
    if self.calibration is not None and self.calibration.method == 'scaled':
      import ml_collections  # noqa: PLC0415

      raw_config = ml_collections.ConfigDict(config.to_dict())
      runs.apply_overrides(raw_config, ['eval.flip_tta=False'])
      raw_fn = tasks.predict_fn(raw_config)

      def raw(model_state, batch):
        model = nnx.merge(model_def, model_state)
        key = 'frames' if 'frames' in batch else 'image'
        mirrored = {**batch, key: batch[key][..., ::-1, :]}
        return raw_fn(model, batch, raw_config)['va'], raw_fn(model, mirrored, raw_config)['va']

      self._raw = jax.jit(raw)

  def _data_spec(self):
    """(crop spec, audio sample rate, samples per frame) of the run and its (first) dataset."""
    from vaflax.data import sources  # noqa: PLC0415

    name = sources.parse_mixture(self.config.input.dataset)[0][0]
    md, feats = {}, {}
    try:
      info = sources.dataset_info(name, self.config.input.data_dir)
      md, feats = dict(info.metadata or {}), info.features
    except Exception as e:  # noqa: BLE001 -- builder code or data dir unavailable: use defaults
      print(f'note: no dataset info for {name} ({type(e).__name__}); using defaults',
            file=sys.stderr)
    spec, source = run_crop_spec(self.config, md)
    if source != 'run':
      print(f'note: {self.workdir} records no crop spec (config.crop); using '
            f'{"the spec of " + name if source == "dataset" else "the default"}: '
            f'{spec.to_dict()}', file=sys.stderr)
    sr, spf = int(md.get('sample_rate') or 16000), 0
    if self.uses_audio:
      try:
        spf = int(feats['audio'].shape[0])
      except (KeyError, TypeError, IndexError):
        spf = sr // int(md.get('fps') or 25)
    return spec, sr, spf

  @property
  def crop_size(self) -> int:
    return self.crop_spec.size

  @property
  def crop_margin(self) -> float:
    return self.crop_spec.margin

  def model(self):
    """The run's model with its restored weights, in eval mode (what the forward runs)."""
    from flax import nnx  # noqa: PLC0415

    return nnx.merge(self._model_def, self._state)

  def crop(self, rgb_HxWx3, box, landmarks=None) -> tuple[np.ndarray, float]:
    """(the model-input crop of a face, the face's roll inside it in degrees): aligned on its
    landmarks when the run's spec says so and the detector gave them (`Face.landmarks`), else
    the box crop. The roll (quality.crop_roll, NaN without landmarks) is a difficulty feature of
    a scaled calibration: give it to `preprocess`."""
    crop, frame = faces.crop_face(rgb_HxWx3, box=box, landmarks=landmarks, spec=self.crop_spec)
    return crop, quality.crop_roll(frame, landmarks)

  def audio_chunk(self, audio, t: float):
    """The audio of the frame at time t; None for a video-only model or a video without audio
    (`preprocess` gives the latter silence)."""
    if not self.uses_audio or audio is None:
      return None
    if self.speech is not None:
      return self._speech_states(audio, t)
    return audio.chunk(t, self.audio_samples)[0]

  def _speech_states(self, audio, t: float) -> np.ndarray:
    """(I, D) speech-encoder states of the frame at time t: the whole track cut into frames of
    audio_samples from its first sample, through clip_features with the run's window as the
    chunk (as the training cache), computed once per track."""
    s = self.audio_samples
    if self._speech_track[0] is not audio:
      n = max(1, -(-len(audio.samples) // s))
      track = np.zeros((n * s,), np.float32)
      track[:len(audio.samples)] = audio.samples
      chunk = int(self.config.input.get('speech_chunk_frames') or self.window or 1)
      self._speech_track = (audio, self.speech.clip_features(track.reshape(n, s), chunk))
    feats = self._speech_track[1]
    k = int(round((t - audio.t0) * audio.sample_rate / s))
    return feats[min(max(k, 0), len(feats) - 1)]

  def preprocess(self, crop_HxWx3: np.ndarray, audio=None, roll: float = math.nan) -> dict:
    """A uint8 face crop (and its audio chunk) -> the model inputs of one frame, via pp_eval,
    with the face's roll in the crop (`crop`; NaN: unknown, taken as upright) under ROLL_KEY for
    a scaled calibration's difficulty features (`result`); it is not a model input."""
    return {**self._inputs(crop_HxWx3, audio), ROLL_KEY: np.float32(roll)}

  def _inputs(self, crop_HxWx3: np.ndarray, audio) -> dict:
    if self.speech is not None:  # `audio`: this frame's (I, D) states (audio_chunk), or none
      out = self._pp(faces.crop_inputs(crop_HxWx3), np.random.default_rng(0))
      states = (np.zeros((self.speech.num_states, self.speech.model.width), np.float32)
                if audio is None else np.asarray(audio, np.float32))
      return {'image': np.asarray(out['image'], np.float32), 'speech': states}
    if self.uses_audio and audio is None:
      audio = np.zeros((self.audio_samples,), np.float32)
    ex = faces.crop_inputs(crop_HxWx3, audio if self.uses_audio else None)
    out = self._pp(ex, np.random.default_rng(0))
    res = {'image': np.asarray(out['image'], np.float32)}
    if self.uses_audio:
      res['audio'] = np.asarray(out['audio'], np.float32)
    return res

  def dispatch(self, items: list[dict]):
    """Starts the model on a batch of inputs (padded to batch_size); returns a handle for `result`."""
    batch, n = self._batch(items)
    if self._raw is None:
      return self._fwd(self._state, batch), n
    key = 'frames' if 'frames' in batch else 'image'
    roll = np.stack([np.asarray(it.get(ROLL_KEY, math.nan), np.float64) for it in items])
    return (self._fwd(self._state, batch), n, self._raw(self._state, batch), batch[key],
            roll)

  def _batch(self, items: list[dict]) -> tuple[dict, int]:
    """Stacked inputs padded to batch_size (one compiled shape), and the real count."""
    n = len(items)
    batch = {}
    for k in items[0]:
      if k == ROLL_KEY:  # not a model input
        continue
      arr = np.stack([it[k] for it in items])
      if n < self.batch_size:
        arr = np.concatenate([arr, np.zeros((self.batch_size - n,) + arr.shape[1:], arr.dtype)])
      batch['frames' if (k == 'image' and self.window) else k] = arr
    return batch, n

  def embed(self, items: list[dict]) -> np.ndarray:
    """The features the model's head reads (resnet, vit: `Model.features`), (n, D)."""
    batch, n = self._batch(items)
    return np.asarray(self._features(self._state, batch))[:n]

  @staticmethod
  def result(handle) -> dict:
    """{'va', ['quadrant'], ['expression_logits']} of the batch's real items; with a scaled
    calibration also 'difficulty' (n, [T,] F): quality.difficulty_features of each frame."""
    out, n = handle[:2]
    res = {k: np.asarray(v)[:n] for k, v in out.items()}
    if len(handle) > 2:
      (a, b), images, roll = handle[2], handle[3], handle[4]
      a, b = np.asarray(a)[:n], np.asarray(b)[:n]
      images = np.asarray(images)[:n]
      feats = quality.difficulty_features(images.reshape(-1, *images.shape[-3:]),
                                          a.reshape(-1, 2), b.reshape(-1, 2), roll.reshape(-1))
      res['difficulty'] = feats.reshape(*a.shape[:-1], feats.shape[-1])
    return res
