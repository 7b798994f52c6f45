"""Preprocessing ops: a registry of small dict -> dict functions composed from a string.

  "standardize|random_crop(0.8)|resize({image_size})|flip_lr|color_jitter(0.2)|value_range(-1, 1)"

Each op receives the example and a `np.random.Generator` (derived by Grain from the seed and the
element index, so augmentation is deterministic and survives resume). Images may carry leading
axes (a window of T frames: (T, H, W, 3)); random ops draw ONE set of parameters per example so
all frames of a window get the same crop/flip/jitter. Landmarks (..., 68, 2) in [0, 1] crop
coordinates follow every geometric op. Arguments are Python literals parsed with `ast`, never
evaluated as code.
"""

from __future__ import annotations

import ast
import io
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image

from vaflax import faces

Op = Callable[[dict, np.random.Generator], dict]
_REGISTRY: dict[str, Callable[..., Op]] = {}


def register(name: str):
  def deco(factory):
    _REGISTRY[name] = factory
    return factory
  return deco


def available() -> list[str]:
  return sorted(_REGISTRY)


def parse(spec: str, **template) -> list[tuple[str, tuple, dict]]:
  """'a(1)|b(x=2)' -> [('a', (1,), {}), ('b', (), {'x': 2})]; `{name}` is filled from template."""
  if template:
    spec = spec.format(**template)
  out = []
  for part in (p.strip() for p in spec.split('|')):
    if not part:
      continue
    try:
      node = ast.parse(part, mode='eval').body
    except SyntaxError as e:
      raise ValueError(f'preprocessing op {part!r} is not of the form name(args): {e}') from None
    if isinstance(node, ast.Name):
      name, args, kwargs = node.id, (), {}
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
      try:
        args = tuple(ast.literal_eval(a) for a in node.args)
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
      except ValueError:
        raise ValueError(f'preprocessing op {part!r}: arguments must be literals') from None
      name = node.func.id
    else:
      raise ValueError(f'preprocessing op {part!r} is not of the form name(args)')
    if name not in _REGISTRY:
      raise ValueError(f'unknown preprocessing op {name!r} in {spec!r}; known: {", ".join(available())}')
    out.append((name, args, kwargs))
  return out


def _compose(parsed) -> Op:
  fns = [_REGISTRY[n](*a, **k) for n, a, k in parsed]

  def apply(ex, rng):
    for f in fns:
      ex = f(ex, rng)
    return ex

  return apply


def build(spec: str, **template) -> Op:
  """Composes the ops of `spec` into one function (ex, rng) -> ex."""
  return _compose(parse(spec, **template))


# --- helpers -------------------------------------------------------------------------------------


def _per_frame(img, fn):
  """Applies fn to each (H, W, C) image of an array with optional leading axes."""
  if img.ndim == 3:
    return fn(img)
  lead = img.shape[:-3]
  flat = img.reshape((-1,) + img.shape[-3:])
  out = np.stack([fn(f) for f in flat])
  return out.reshape(lead + out.shape[1:])


def _decode_bytes(b) -> np.ndarray:
  with Image.open(io.BytesIO(b)) as im:
    return np.asarray(im.convert('RGB'))


# --- ops -----------------------------------------------------------------------------------------


@register('decode')
def _decode():
  """Encoded image bytes (or a list of them) -> uint8 array; arrays pass through."""
  def f(ex, rng):
    img = ex['image']
    if isinstance(img, bytes | bytearray):
      ex['image'] = _decode_bytes(img)
    elif isinstance(img, list | tuple) and img and isinstance(img[0], bytes | bytearray):
      ex['image'] = np.stack([_decode_bytes(b) for b in img])
    return ex
  return f


@register('standardize')
def _standardize(audio: bool = False):
  """TFDS frame example (see builder_utils) -> the numeric dict that models and losses read.

  The image (and audio) go through `faces.crop_inputs`, as predict's crops do. Strings are
  dropped (they cannot become device arrays); the record index survives as `index`.
  """
  def f(ex, rng):
    if audio and 'audio' not in ex:
      raise KeyError('standardize(audio=True): this dataset has no audio feature')
    inputs = faces.crop_inputs(ex['image'], ex['audio'] if audio else None)
    out = {
        'image': inputs['image'],
        'va': np.stack([np.asarray(ex['valence'], np.float32),
                        np.asarray(ex['arousal'], np.float32)], -1),
        'va_mask': np.asarray(ex['va_mask'], np.float32),
        'landmarks': np.asarray(ex['landmarks'], np.float32),
        'landmarks_mask': np.asarray(ex['landmarks_mask'], np.float32),
        'emotion': np.asarray(ex['emotion'], np.int32),
        'index': np.asarray(ex.get('index', -1), np.int64),
        'video': np.asarray(ex.get('video', -1), np.int32),
    }
    if audio:
      out['audio'] = inputs['audio']
    if 'speech' in ex:  # cached speech-encoder states (vaflax/speech_features.py), (I, D)
      out['speech'] = np.asarray(ex['speech'], np.float32)
    return out
  return f


# Ops that shape the labelled record rather than the model inputs: `build_inputs` leaves them out.
RECORD_OPS = ('standardize', 'keep')


def build_inputs(spec: str, **template) -> tuple[Op, bool]:
  """The ops of `spec` that act on model inputs, for crops without labels (predict), and whether
  its `standardize` takes audio. Apply them to `faces.crop_inputs(crop, audio)`: that is what
  `standardize` makes of a record's image and audio, so predict's crops get the inputs of eval."""
  parsed = parse(spec, **template)
  uses_audio = any(n == 'standardize' and bool(k.get('audio', a[0] if a else False))
                   for n, a, k in parsed)
  return _compose([p for p in parsed if p[0] not in RECORD_OPS]), uses_audio


@register('resize')
def _resize(size: int):
  def f(ex, rng):
    img = ex['image']
    if img.shape[-3:-1] != (size, size):
      interp = cv2.INTER_AREA if img.shape[-2] > size else cv2.INTER_LINEAR
      ex['image'] = _per_frame(img, lambda x: cv2.resize(x, (size, size), interpolation=interp))
    return ex
  return f


def _crop_window(ex, x0, y0, side_x, side_y):
  h, w = ex['image'].shape[-3:-1]
  ex['image'] = ex['image'][..., y0 : y0 + side_y, x0 : x0 + side_x, :]
  if 'landmarks' in ex:
    lm = ex['landmarks']
    ex['landmarks'] = np.stack(
        [(lm[..., 0] * w - x0) / side_x, (lm[..., 1] * h - y0) / side_y], -1).astype(np.float32)
  return ex


@register('random_crop')
def _random_crop(min_scale: float = 0.8, max_scale: float = 1.0):
  """A random square crop whose side is a uniform fraction [min_scale, max_scale] of the image."""
  def f(ex, rng):
    h, w = ex['image'].shape[-3:-1]
    side = max(1, int(round(min(h, w) * rng.uniform(min_scale, max_scale))))
    x0 = int(rng.integers(0, w - side + 1))
    y0 = int(rng.integers(0, h - side + 1))
    return _crop_window(ex, x0, y0, side, side)
  return f


@register('center_crop')
def _center_crop(scale: float = 1.0):
  def f(ex, rng):
    h, w = ex['image'].shape[-3:-1]
    side = max(1, int(round(min(h, w) * scale)))
    return _crop_window(ex, (w - side) // 2, (h - side) // 2, side, side)
  return f


@register('flip_lr')
def _flip_lr(p: float = 0.5):
  """Horizontal flip with probability p; landmarks are mirrored AND re-indexed (iBUG-68)."""
  def f(ex, rng):
    if rng.random() < p:
      ex['image'] = np.ascontiguousarray(ex['image'][..., :, ::-1, :])
      if 'landmarks' in ex:
        ex['landmarks'] = faces.flip_landmarks(ex['landmarks'])
    return ex
  return f


@register('color_jitter')
def _color_jitter(brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2):
  def f(ex, rng):
    b = 1.0 + rng.uniform(-brightness, brightness)
    c = 1.0 + rng.uniform(-contrast, contrast)
    s = 1.0 + rng.uniform(-saturation, saturation)
    x = ex['image'].astype(np.float32)
    grey = x.mean(-1, keepdims=True)
    x = grey + (x - grey) * s
    x = (x - x.mean()) * c + x.mean()
    ex['image'] = np.clip(x * b, 0, 255).astype(np.uint8)
    return ex
  return f


@register('value_range')
def _value_range(lo: float = -1.0, hi: float = 1.0):
  """uint8 [0, 255] -> float32 [lo, hi]."""
  def f(ex, rng):
    ex['image'] = (ex['image'].astype(np.float32) / 255.0) * (hi - lo) + lo
    return ex
  return f


@register('normalize')
def _normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
  """Float image -> (image - mean) / std per channel; the defaults are ImageNet's (torchvision,
  MAE), applied after value_range(0, 1). Converted PyTorch weights record it in their config."""
  mean, std = np.float32(mean), np.float32(std)

  def f(ex, rng):
    ex['image'] = (ex['image'].astype(np.float32) - mean) / std
    return ex
  return f


@register('keep')
def _keep(*keys):
  def f(ex, rng):
    missing = [k for k in keys if k not in ex]
    if missing:
      raise KeyError(f'keep{keys}: example has no {missing}; it has {sorted(ex)}')
    return {k: ex[k] for k in keys}
  return f
