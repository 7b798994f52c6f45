"""A run's model on one device, fed face crops prepared as its evaluation prepared them."""

from __future__ import annotations

import sys

import numpy as np

from vaflax import faces

# The framing of every builder that crops Haar boxes (face_folder, mead, omg_emotion, ...) and of
# the synthetic set: crop_face margin 0.2 around the (brows-to-mouth) Haar box.
DEFAULT_MARGIN = 0.2
DEFAULT_CROP_SIZE = 112


class Predictor:
  """A run's model restored on one device, with the crop and preprocessing of its training data."""

  def __init__(self, workdir: str, *, checkpoint_step: int | None = None, batch_size: int = 32,
               flip: bool = False, crop_size: int | None = None, crop_margin: float = DEFAULT_MARGIN,
               data_dir: str | None = None, overrides=()):
    import jax  # noqa: PLC0415 -- after flag parsing
    from flax import nnx  # noqa: PLC0415

    from vaflax import runs, tasks, tta  # noqa: PLC0415
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
    self.pp_spec = pp.format(image_size=config.image_size)
    self.batch_size = max(1, batch_size // self.window) if self.window else max(1, batch_size)
    self.crop_margin = float(crop_margin)
    self.crop_size, self.sample_rate, self.audio_samples = self._data_spec(crop_size)
    model_def, self._state = nnx.split(run.model())
    predict_fn = tasks.get(config.task).predict_fn
    if flip:
      predict_fn = tta.flip_tta(predict_fn)
    self.flip = flip

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

  def _data_spec(self, crop_size):
    """(crop size, audio sample rate, samples per frame) of the run's (first) dataset."""
    from vaflax.data import pipeline  # noqa: PLC0415

    name = pipeline.parse_mixture(self.config.input.dataset)[0][0]
    md, feats = {}, {}
    try:
      info = pipeline.dataset_info(name, self.config.input.data_dir)
      md, feats = dict(info.metadata or {}), info.features
    except Exception as e:  # noqa: BLE001 -- builder code or data dir unavailable: use defaults
      print(f'note: no dataset info for {name} ({type(e).__name__}); using defaults',
            file=sys.stderr)
    if not crop_size:
      crop_size = int(md.get('crop_size') or 0)
      if not crop_size:
        crop_size = DEFAULT_CROP_SIZE
        # The framing (margin and pp_eval crops) does not depend on it; only the resampling does.
        print(f'note: crop size of {name} unknown; using {crop_size} (set --crop_size)',
              file=sys.stderr)
    sr, spf = int(md.get('sample_rate') or 16000), 0
    if self.uses_audio:
      try:
        spf = int(feats['audio'].shape[0])
      except (KeyError, TypeError, IndexError):
        spf = sr // int(md.get('fps') or 25)
    return int(crop_size), sr, spf

  def crop(self, rgb_HxWx3, box) -> np.ndarray:
    return faces.crop_face(rgb_HxWx3, box=box, margin=self.crop_margin, size=self.crop_size)[0]

  def audio_chunk(self, audio, t: float):
    """The audio of the frame at time t; None for a video-only model or a video without audio
    (`preprocess` gives the latter silence)."""
    if not self.uses_audio or audio is None:
      return None
    return audio.chunk(t, self.audio_samples)[0]

  def preprocess(self, crop_HxWx3: np.ndarray, audio=None) -> dict:
    """A uint8 face crop (and its audio chunk) -> the model inputs of one frame, via pp_eval."""
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
    return self._fwd(self._state, batch), n

  def _batch(self, items: list[dict]) -> tuple[dict, int]:
    """Stacked inputs padded to batch_size (one compiled shape), and the real count."""
    n = len(items)
    batch = {}
    for k in items[0]:
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
    out, n = handle
    return {k: np.asarray(v)[:n] for k, v in out.items()}
