"""A converted speech encoder at inference: hidden states of a waveform, the per-video-frame
features of a clip, and the on-disk cache of those features for the fusion stage.

The fusion with audio='speech' (configs/mae_va.py) reads, for every video frame, the encoder's
I = layers + 1 hidden states averaged over the 50 Hz frames that fall on it
(models/speech.frame_pooling). They are computed once per clip and cached, because the frozen
encoder (95M parameters for a base model) would otherwise run at every training step for the
same numbers. The rule (`clip_features`): the clip's audio track is cut into chunks of
`chunk_frames` video frames of continuous audio (the fusion's window), the last chunk aligned to
the clip's end; each chunk is normalised (zero mean, unit variance, as the hub feature
extractors do per utterance), encoded, and pooled onto its video frames. Training windows,
evaluation and predict all read features made by this one function.

The cache: `<cache_dir>/<encoder checksum[:16]>/<dataset>/<split>-c<chunk>-s<samples>.npy`, one
(records, I, D) float16 array in the split's record order, plus a `.json` beside it (the full
checksum, the dataset's version and record count). The checksum is the SHA-256 of the encoder's
weights (names, shapes and bytes), so other weights never read these features; a different
chunk or frame length is another file; a metadata mismatch (dataset rebuilt) recomputes. Files
are written to a temporary name and renamed, so a killed run leaves no half cache. Delete the
folder to reclaim the space (records x I x D x 2 bytes: 13 x 768 x 2 = 20 kB per frame for a base
model, about 30 GB for Aff-Wild2's 1.5M frames).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vaflax import checkpoint as ckpt_lib
from vaflax import runs
from vaflax.models import speech

CHUNK_BATCH = 16  # chunks per encoder call (a base model: ~0.2 GB of states per 4 s chunk)


def weights_checksum(state) -> str:
  h = hashlib.sha256()
  for key, arr in sorted(ckpt_lib.flat_weights(state).items()):
    arr = np.ascontiguousarray(arr)
    h.update(f'{key}:{arr.dtype}:{arr.shape};'.encode())
    h.update(arr.tobytes())
  return h.hexdigest()


def encoder_dims(workdir: str) -> dict:
  """{'num_states': I, 'dim': D} of the speech encoder run in `workdir` (its config only)."""
  config = runs.load_config(os.path.abspath(os.path.expanduser(workdir)))
  if config.model_name != 'speech':
    raise ValueError(f'{workdir}: a {config.model_name!r} run, not a speech encoder (write one '
                     'with python -m vaflax.convert --format=speech)')
  return {'num_states': int(config.model.num_layers) + 1, 'dim': int(config.model.hidden_size)}


class Encoder:
  """A speech encoder run (vaflax.convert --format=speech), restored once, jitted per length."""

  def __init__(self, workdir: str, step: int | None = None):
    self.run = runs.load_run(workdir, step)
    if self.run.config.model_name != 'speech':
      raise ValueError(f'{self.run.workdir}: a {self.run.config.model_name!r} run, not a speech '
                       'encoder (python -m vaflax.convert --format=speech)')
    self.workdir = self.run.workdir
    self.model = self.run.model()
    self.sample_rate = int(self.run.config.input.get('sample_rate', speech.SAMPLE_RATE))
    self._checksum = None
    graphdef, state = nnx.split(self.model)

    @jax.jit
    def encode(state, wave_BxX):
      return nnx.merge(graphdef, state)(speech.normalize_wave(wave_BxX))

    @jax.jit
    def encode_raw(state, wave_BxX):
      return nnx.merge(graphdef, state)(wave_BxX)

    @functools.partial(jax.jit, static_argnums=(2, 3))
    def encode_pooled(state, wave_BxX, num_video_frames, samples_per_frame):
      model = nnx.merge(graphdef, state)
      return model.pool_to_video(model(speech.normalize_wave(wave_BxX)), num_video_frames,
                                 samples_per_frame)

    self._state, self._encode, self._encode_raw = state, encode, encode_raw
    self._encode_pooled = encode_pooled

  @property
  def checksum(self) -> str:
    if self._checksum is None:
      self._checksum = weights_checksum(self._state)
    return self._checksum

  @property
  def num_states(self) -> int:
    return self.model.num_states

  def hidden_states(self, wave_X, *, normalize: bool = True) -> np.ndarray:
    """(I, T, D) float32 of a 1-D 16 kHz waveform."""
    wave_X = np.asarray(wave_X, np.float32)
    if wave_X.ndim != 1:
      raise ValueError(f'expected a 1-D waveform (samples,), got shape {wave_X.shape}')
    if self.model.num_frames(wave_X.shape[0]) < 1:
      raise ValueError(f'{wave_X.shape[0]} samples: too short for one frame (400 samples, 25 ms '
                       f'at {self.sample_rate} Hz)')
    fn = self._encode if normalize else self._encode_raw
    return np.asarray(fn(self._state, jnp.asarray(wave_X[None])), np.float32)[:, 0]

  def clip_features(self, audio_TxS, chunk_frames: int) -> np.ndarray:
    """(T, I, D) float32 per-video-frame features of a clip whose audio is (T, S): S samples per
    video frame (see the module docstring for the chunking rule)."""
    audio_TxS = np.asarray(audio_TxS, np.float32)
    t, s = audio_TxS.shape
    c = max(1, min(int(chunk_frames), t))
    starts = list(range(0, t - c + 1, c))
    if starts[-1] + c < t:
      starts.append(t - c)
    # Chunks go CHUNK_BATCH at a time (each normalised on its own, as one utterance).
    pooled = []
    for g in range(0, len(starts), CHUNK_BATCH):
      waves = np.stack([audio_TxS[st:st + c].reshape(c * s) for st in starts[g:g + CHUNK_BATCH]])
      # Pooled inside the jitted call: one compile per chunk shape, not an einsum per call.
      pooled.append(np.asarray(self._encode_pooled(self._state, jnp.asarray(waves), c, s)))
    pooled_IxNxCxD = np.concatenate(pooled, axis=1)
    out = np.zeros((t, self.num_states, self.model.width), np.float32)
    done = 0
    for k, start in enumerate(starts):  # the tail chunk fills only the frames not yet covered
      out[done:start + c] = np.transpose(pooled_IxNxCxD[:, k], (1, 0, 2))[done - start:]
      done = start + c
    return out


def _atomic_save(path: str, arr: np.ndarray, meta: dict) -> None:
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'wb') as f:
    np.save(f, arr)
  os.replace(tmp, path)
  with open(f'{path[:-4]}.json.tmp', 'w') as f:
    json.dump(meta, f, indent=1)
  os.replace(f'{path[:-4]}.json.tmp', f'{path[:-4]}.json')


def split_cache(encoder: Encoder, cache_dir: str, dataset: str, split: str, version: str,
                records, videos, chunk_frames: int) -> np.ndarray:
  """The (records, I, D) float16 features of a whole split, read from the cache or computed
  (video by video, `records[i]['audio']` (S,) per frame, `videos` the builder's (name, first
  record, frames) table) and written there. Returned memory-mapped."""
  n = len(records)
  s = int(np.asarray(records[0]['audio']).shape[-1])
  folder = os.path.join(os.path.expanduser(cache_dir), encoder.checksum[:16], dataset)
  path = os.path.join(folder, f'{split}-c{int(chunk_frames)}-s{s}.npy')
  meta = dict(encoder=encoder.checksum, encoder_run=encoder.workdir, dataset=dataset,
              version=str(version), split=split, records=n, chunk_frames=int(chunk_frames),
              samples_per_frame=s, shape=[n, encoder.num_states, encoder.model.width])
  try:
    with open(f'{path[:-4]}.json') as f:
      cached = json.load(f)
    if {k: v for k, v in cached.items() if k != 'encoder_run'} == {
        k: v for k, v in meta.items() if k != 'encoder_run'}:
      return np.load(path, mmap_mode='r')
  except (FileNotFoundError, json.JSONDecodeError, ValueError):
    pass
  os.makedirs(folder, exist_ok=True)
  print(f'[speech] computing {dataset}/{split} features ({n} frames) with {encoder.workdir} '
        f'into {path}', flush=True)
  out = np.zeros(meta['shape'], np.float16)
  table = videos or [(str(i), i, 1) for i in range(n)]
  for _, start, count in table:
    audio = np.stack([np.asarray(records[i]['audio'], np.float32)
                      for i in range(start, start + count)])
    out[start:start + count] = encoder.clip_features(audio, chunk_frames)
  _atomic_save(path, out, meta)
  return np.load(path, mmap_mode='r')


def cache_dir(config) -> str:
  """config.input.speech_cache_dir, by default `<data_dir>/speech_features`."""
  return (config.input.get('speech_cache_dir') or
          os.path.join(os.path.expanduser(config.input.data_dir), 'speech_features'))


class FeatureSource:
  """A split's records (data/sources.py IndexedSource) with ex['speech'] (I, D) float32, the
  cached states of the encoder `config.input.speech_encoder` for that frame. The cache is made
  (or found) when the source is opened, from `audio_records` (the same records; their images
  need not be decoded); workers open the .npy memory-mapped on first read."""

  def __init__(self, src, videos, name: str, split: str, version, config, audio_records):
    encoder = Encoder(config.input.speech_encoder)
    chunk = int(config.input.get('speech_chunk_frames') or config.input.window or 1)
    cached = split_cache(encoder, cache_dir(config), name, split, version, audio_records, videos,
                         chunk)
    self.path, self._src, self._feats = cached.filename, src, None

  def __len__(self):
    return len(self._src)

  def __getitem__(self, i):
    if self._feats is None:
      self._feats = np.load(self.path, mmap_mode='r')
    ex = dict(self._src[i])
    ex['speech'] = np.asarray(self._feats[int(ex['index'])], np.float32)
    return ex

  def __getstate__(self):  # pickled into data workers: the path, not the mapping
    return dict(self.__dict__, _feats=None)
