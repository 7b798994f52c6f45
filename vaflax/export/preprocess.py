"""A run's evaluation preprocessing (`input.pp_eval`) as a JAX function of a uint8 crop batch.

Predict prepares a face with the NumPy/OpenCV ops of vaflax/data/ops.py; an exported model must
do the same inside its graph, so that a user feeds it the uint8 crop and nothing else. The ops a
`pp_eval` may hold are deterministic and geometric or pointwise on a crop of known size, so each
becomes a fixed-shape JAX op:

- `center_crop(scale)`: a static slice (the same window as ops.py computes);
- `resize(size)`: OpenCV's resize is linear in the pixels and separable, so it is two matrix
  products with weights read off cv2.resize applied to an identity (INTER_AREA when shrinking,
  INTER_LINEAR when growing, as ops.py picks), then rounded to whole levels because OpenCV
  resizes a uint8 image to uint8;
- `value_range(lo, hi)`, `normalize(mean, std)`: pointwise.

Record ops (`standardize`, `keep`) shape labelled examples and do not touch the image; random
ops (augmentation) have no place in an evaluation graph and are refused.
"""

from __future__ import annotations

import cv2
import jax.numpy as jnp
import numpy as np

from vaflax.data import ops as ops_lib

SKIPPED = (*ops_lib.RECORD_OPS, 'decode')


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) float32 weights W with cv2.resize(x) = W @ x along one axis (ops.py's
  interpolation choice: area when shrinking, bilinear when growing)."""
  interp = cv2.INTER_AREA if n_in > n_out else cv2.INTER_LINEAR
  eye = np.eye(n_in, dtype=np.float32)
  return cv2.resize(eye, (n_in, n_out), interpolation=interp).astype(np.float32)


def describe(pp_spec: str, crop_size: int) -> list[dict]:
  """The image ops of a formatted `pp_eval`, with the sizes they act on: what export.json
  records and what `build` compiles. Raises ValueError for an op that cannot be exported."""
  steps, side = [], int(crop_size)
  for name, args, kwargs in ops_lib.parse(pp_spec):
    if name in SKIPPED:
      continue
    if name == 'center_crop':
      scale = float(kwargs.get('scale', args[0] if args else 1.0))
      new = max(1, int(round(side * scale)))
      steps.append({'op': 'center_crop', 'from': side, 'to': new, 'offset': (side - new) // 2})
      side = new
    elif name == 'resize':
      size = int(kwargs.get('size', args[0] if args else side))
      if size != side:
        steps.append({'op': 'resize', 'from': side, 'to': size,
                      'interpolation': 'area' if side > size else 'bilinear',
                      'rounded_to_uint8': True})
      side = size
    elif name == 'value_range':
      lo = float(kwargs.get('lo', args[0] if args else -1.0))
      hi = float(kwargs.get('hi', args[1] if len(args) > 1 else 1.0))
      steps.append({'op': 'value_range', 'lo': lo, 'hi': hi})
    elif name == 'normalize':
      mean = kwargs.get('mean', args[0] if args else (0.485, 0.456, 0.406))
      std = kwargs.get('std', args[1] if len(args) > 1 else (0.229, 0.224, 0.225))
      steps.append({'op': 'normalize', 'mean': [float(m) for m in mean],
                    'std': [float(s) for s in std]})
    else:
      raise ValueError(f'pp_eval op {name!r} (in {pp_spec!r}) cannot be exported: an evaluation '
                       'graph holds only center_crop, resize, value_range and normalize')
  if not any(s['op'] in ('value_range', 'normalize') for s in steps):
    raise ValueError(f'pp_eval {pp_spec!r} never maps the uint8 image to floats (no value_range)')
  return steps


def build(steps: list[dict]):
  """x uint8 (..., S, S, 3) -> float32 model input, the ops of `describe` in JAX."""
  def apply(x):
    x = x.astype(jnp.float32)
    for s in steps:
      if s['op'] == 'center_crop':
        o, n = s['offset'], s['to']
        x = x[..., o:o + n, o:o + n, :]
      elif s['op'] == 'resize':
        w_OxI = jnp.asarray(resize_matrix(s['from'], s['to']))
        # Rank 4 with explicit letters: jax2onnx 0.17 loses the dynamic batch of an ellipsis
        # einsum (one example out whatever the batch).
        lead = x.shape[:-3]
        x = x.reshape((-1,) + x.shape[-3:])
        x = jnp.einsum('oh,nhwc->nowc', w_OxI, x)
        x = jnp.einsum('pw,nowc->nopc', w_OxI, x)
        x = x.reshape(lead + x.shape[1:])
        x = jnp.clip(jnp.round(x), 0.0, 255.0)  # OpenCV resizes uint8 to uint8
      elif s['op'] == 'value_range':
        x = x / 255.0 * (s['hi'] - s['lo']) + s['lo']
      elif s['op'] == 'normalize':
        x = (x - jnp.asarray(s['mean'], jnp.float32)) / jnp.asarray(s['std'], jnp.float32)
    return x

  return apply
