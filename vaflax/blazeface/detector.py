"""Frames -> faces with BlazeFace full-range: letterbox, network, anchor decoding, weighted NMS.

`detect(frames_BxHxWx3)` letterboxes the uint8 frames on the host (OpenCV) and runs the rest,
network, decoding, NMS and the mapping back to source pixels, as one jitted function of fixed
shapes batched over frames; it gives `Detections` padded to `max_faces` per frame with a `valid`
mask, and compiles once per batch size (frame size is data), on CPU, GPU or TPU alike.

What MediaPipe's face detection graph does around the .tflite (face_detection_full_range.pbtxt:
SsdAnchorsCalculator, TensorsToDetectionsCalculator, NonMaxSuppressionCalculator), written
here from those options:
- input: the frame scaled to fit 192x192 keeping its aspect, centred, black borders, values
  mapped to [-1, 1];
- anchors: one per cell of the 48x48 grid (stride 4, offset 0.5), fixed size 1, so a regressor
  is an offset in 192-pixel units from the cell centre (x before y), w and h are absolute;
- score: sigmoid of the logit clipped to +-100; faces above `min_score` (0.5, MediaPipe's default
  min_detection_confidence);
- weighted NMS: the best remaining detection takes every remaining one whose IoU with it exceeds
  0.3 and becomes their score-weighted mean (box and keypoints), keeping its own score.
The network is fully convolutional: `detect(frames, side=96)` runs it on a smaller letterbox (any
multiple of 32; anchors on the same stride-4 grid), which predict uses for faces that fill the
frame (vaflax/predict/detection.py).
Keypoints come out as BlazeFace's six (the subject's right eye, left eye, nose tip, mouth centre,
right and left ear tragion); `detect` keeps the first four, which are vaflax's canonical
(eye_left, eye_right, nose, mouth) with left/right as seen in the image of an upright face.

Shape letters (vaflax/models/__init__.py): B frames, H W frame size, A anchors (2304 at 192 px), O
candidates kept before NMS, Q face slots (max_faces), L keypoints.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vaflax.blazeface import model as model_lib
from vaflax.faces import KEYPOINTS  # noqa: F401 (re-exported: the one canonical keypoint order)

WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       'face_detection_full_range.safetensors')
BLAZEFACE_KEYPOINTS = ('right_eye', 'left_eye', 'nose_tip', 'mouth_centre', 'right_ear_tragion',
                       'left_ear_tragion')  # the subject's right eye is on the image's left
# BlazeFace keypoints -> faces.KEYPOINTS (the ear tragions are dropped).
CANONICAL = tuple(BLAZEFACE_KEYPOINTS.index(k) for k in
                  ('right_eye', 'left_eye', 'nose_tip', 'mouth_centre'))
MIN_SCORE = 0.5
NMS_IOU = 0.3
SCORE_CLIP = 100.0
CANDIDATES = 128  # anchors kept (best scores) before NMS: a face lights up ~10


class Detections(NamedTuple):
  boxes_BxQx4: np.ndarray  # x, y, w, h in source pixels
  scores_BxQ: np.ndarray  # probability
  keypoints_BxQxLx2: np.ndarray  # KEYPOINTS order, source pixels
  valid_BxQ: np.ndarray  # bool; slots are sorted by score, valid first


@functools.lru_cache(maxsize=1)
def load_model(path: str = WEIGHTS) -> model_lib.BlazeFaceFullRange:
  """The network with the shipped weights (float16 on disk, float32 in use); every parameter must
  come from the file and every tensor of the file must be used."""
  from vaflax import checkpoint  # noqa: PLC0415 -- orbax import only when a detector is built
  from vaflax.convert import reader  # noqa: PLC0415

  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: BlazeFace weights missing (they ship in the vaflax package; '
                            f'rebuild them with python -m vaflax.blazeface.convert)')
  # Abstract first: random initial values would only be overwritten (and cost seconds eagerly).
  model = nnx.eval_shape(lambda: model_lib.BlazeFaceFullRange(rngs=nnx.Rngs(0)))
  report = checkpoint.transfer_weights(reader.read_checkpoint(path), model, source_name=path)
  if report.missing or report.unexpected:
    raise ValueError(f'{path}: missing {report.missing[:4]}, unexpected {report.unexpected[:4]}')
  return model


def anchors_Ax2(side: int = model_lib.INPUT_SIDE) -> np.ndarray:
  """Cell centres of the stride-4 grid of a `side` px input (48x48 at 192) in input pixels,
  row-major (the regressor order)."""
  c = (np.arange(side // model_lib.STRIDE, dtype=np.float32) + 0.5) * model_lib.STRIDE
  ys, xs = np.meshgrid(c, c, indexing='ij')
  return np.stack([xs.ravel(), ys.ravel()], -1)


def letterbox(frames, side: int = model_lib.INPUT_SIDE) -> tuple[np.ndarray, np.ndarray]:
  """uint8 frames -> (the side x side uint8 network inputs, geometry (B, 4): sx, sy, dx, dy).

  `frames`: a (B, H, W, 3) array or a sequence of (H, W, 3) arrays of any sizes (views of one
  larger frame, such as tiles, are read in place: nothing is copied but the results). A frame is
  scaled to fit the square keeping its aspect (area averaging when it shrinks) and centred on
  black; a source point p lands at (p_x * sx + dx, p_y * sy + dy). This runs on the host with
  OpenCV, before the device: the reduction of a large frame is a memory-bound pass that XLA's CPU
  backend runs ~50x slower, and the device then receives 110 KB per frame instead of the whole
  frame (6 MB at 1080p)."""
  out = np.zeros((len(frames), side, side, 3), np.uint8)
  geometry = np.zeros((len(frames), 4), np.float32)
  for i, frame in enumerate(frames):
    h, w = frame.shape[:2]
    scale = side / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    dx, dy = (side - nw) // 2, (side - nh) // 2
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out[i, dy:dy + nh, dx:dx + nw] = cv2.resize(frame, (nw, nh), interpolation=interp)
    geometry[i] = (nw / w, nh / h, dx, dy)
  return out, geometry


def downscale(x_BxSxSx3, geometry_Bx4, side: int) -> tuple[np.ndarray, np.ndarray]:
  """Network inputs (`letterbox`) scaled down to `side` px, with the geometry from the source
  frames: the frames letterboxed to `side` without reading them again."""
  small, g = letterbox(x_BxSxSx3, side)
  g0 = np.asarray(geometry_Bx4, np.float32)
  return small, np.stack([g0[:, 0] * g[:, 0], g0[:, 1] * g[:, 1], g0[:, 2] * g[:, 0] + g[:, 2],
                          g0[:, 3] * g[:, 1] + g[:, 3]], -1)


def decode(reg_BxAx16, logits_BxA):
  """Boxes (x1, y1, x2, y2), all six keypoints (input pixels) and probabilities per anchor."""
  a = jnp.asarray(anchors_Ax2(round(logits_BxA.shape[-1] ** 0.5) * model_lib.STRIDE))
  centre_BxAx2 = reg_BxAx16[..., 0:2] + a
  half_BxAx2 = reg_BxAx16[..., 2:4] / 2
  boxes_BxAx4 = jnp.concatenate([centre_BxAx2 - half_BxAx2, centre_BxAx2 + half_BxAx2], -1)
  kps_BxAxLx2 = reg_BxAx16[..., 4:].reshape(logits_BxA.shape + (6, 2)) + a[:, None, :]
  scores_BxA = jax.nn.sigmoid(jnp.clip(logits_BxA, -SCORE_CLIP, SCORE_CLIP))
  return boxes_BxAx4, kps_BxAxLx2, scores_BxA


def _iou_OxO(b_Ox4):
  lo = jnp.maximum(b_Ox4[:, None, :2], b_Ox4[None, :, :2])
  hi = jnp.minimum(b_Ox4[:, None, 2:], b_Ox4[None, :, 2:])
  inter = jnp.prod(jnp.clip(hi - lo, 0), -1)
  area = jnp.prod(jnp.clip(b_Ox4[:, 2:] - b_Ox4[:, :2], 0), -1)
  union = area[:, None] + area[None, :] - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1), 0.0)


def weighted_nms(boxes_Ax4, kps_AxLx2, scores_A, max_faces: int, min_score: float):
  """One frame: (boxes Qx4, keypoints QxLx2, scores Q, valid Q), best first (MediaPipe's
  WEIGHTED NMS on the CANDIDATES best anchors)."""
  s_O, idx = jax.lax.top_k(scores_A, CANDIDATES)
  b_O, kp_O = boxes_Ax4[idx], kps_AxLx2[idx]
  iou = _iou_OxO(b_O)
  flat_O = jnp.concatenate([b_O, kp_O.reshape(CANDIDATES, -1)], -1)

  def pick(alive_O, _):
    best = jnp.argmax(alive_O)  # candidates are sorted by score: the first alive is the best
    ok = alive_O[best]
    group = alive_O & ((iou[best] > NMS_IOU) | (jnp.arange(CANDIDATES) == best))
    w = jnp.where(group, s_O, 0.0)
    mean = (w @ flat_O) / jnp.maximum(w.sum(), 1e-12)
    return alive_O & ~group, (mean, s_O[best], ok)

  _, (flat_Q, score_Q, ok_Q) = jax.lax.scan(pick, s_O >= min_score, None, length=max_faces)
  return flat_Q[:, :4], flat_Q[:, 4:].reshape(max_faces, -1, 2), score_Q, ok_Q


@functools.partial(jax.jit, static_argnames=('max_faces', 'min_score'))
def _run(graphdef, state, x_BxSxSx3, geometry_Bx4, max_faces, min_score):
  """Detections in source pixels, and the network's raw outputs (one compiled function for both:
  the parity test reads the raw ones)."""
  model = nnx.merge(graphdef, state)
  reg_BxAx16, logits_BxA = model(x_BxSxSx3.astype(jnp.float32) / 127.5 - 1.0)
  boxes_BxQx4, kps_BxQxLx2, scores_BxQ, ok_BxQ = jax.vmap(
      lambda b, k, s: weighted_nms(b, k, s, max_faces, min_score))(
          *decode(reg_BxAx16, logits_BxA))
  scale_Bx1x2, off_Bx1x2 = geometry_Bx4[:, None, :2], geometry_Bx4[:, None, 2:]
  lo_BxQx2 = (boxes_BxQx4[..., :2] - off_Bx1x2) / scale_Bx1x2
  hi_BxQx2 = (boxes_BxQx4[..., 2:] - off_Bx1x2) / scale_Bx1x2
  kps_BxQxLx2 = ((kps_BxQxLx2[..., CANONICAL, :] - off_Bx1x2[:, :, None])
                 / scale_Bx1x2[:, :, None])
  zero = lambda v: jnp.where(ok_BxQ.reshape(ok_BxQ.shape + (1,) * (v.ndim - 2)), v, 0)
  dets = (zero(jnp.concatenate([lo_BxQx2, hi_BxQx2 - lo_BxQx2], -1)), zero(scores_BxQ),
          zero(kps_BxQxLx2), ok_BxQ)
  return dets, (reg_BxAx16, logits_BxA)


def _is_frame(dtype, shape) -> bool:
  return dtype == np.uint8 and len(shape) == 3 and shape[-1] == 3 and all(shape)


class BlazeFace:
  """The detector: `detect(frames_BxHxWx3 uint8) -> Detections` (NumPy), jitted per shape."""

  def __init__(self, max_faces: int = 16, min_score: float = MIN_SCORE, weights: str = WEIGHTS):
    self.max_faces, self.min_score = max_faces, float(min_score)
    self.graphdef, self.state = nnx.split(load_model(weights))

  def raw(self, x_Bx192x192x3):
    """The network's outputs (regressors (B, 2304, 16), logits (B, 2304)) for uint8 inputs of
    the network's size, as they are fed to it (mapped to [-1, 1])."""
    x = np.asarray(x_Bx192x192x3)
    side = model_lib.INPUT_SIDE
    if x.dtype != np.uint8 or x.shape[1:] != (side, side, 3):
      raise ValueError(f'BlazeFace.raw: expected uint8 (B, {side}, {side}, 3), got {x.dtype} {x.shape}')
    geometry = np.tile(np.array([1, 1, 0, 0], np.float32), (len(x), 1))
    _, (reg, logits) = _run(self.graphdef, self.state, x, geometry, self.max_faces, self.min_score)
    return np.asarray(reg), np.asarray(logits)

  def detect(self, frames_BxHxWx3, side: int = model_lib.INPUT_SIDE) -> Detections:
    """Detections of uint8 frames: a (B, H, W, 3) array or a list of (H, W, 3) arrays (any
    sizes, e.g. tiles of one frame), letterboxed to `side` px (MediaPipe's 192 by default)."""
    frames = frames_BxHxWx3 if isinstance(frames_BxHxWx3, list) else np.asarray(frames_BxHxWx3)
    if isinstance(frames, list):
      bad = not frames or not all(isinstance(f, np.ndarray) and _is_frame(f.dtype, f.shape)
                                  for f in frames)
      what = f'a list of {len(frames)} arrays'
    else:
      bad = frames.ndim != 4 or not len(frames) or not _is_frame(frames.dtype, frames.shape[1:])
      what = f'{frames.dtype} {frames.shape}'
    if bad:
      raise ValueError(f'BlazeFace.detect: expected uint8 frames (B >= 1, H >= 1, W >= 1, 3), got '
                       f'{what}')
    return self.run(*letterbox(frames, side))

  def run(self, x_BxSxSx3, geometry_Bx4) -> Detections:
    """Detections of letterboxed inputs (`letterbox`, `downscale`; S a multiple of 32), mapped to
    source pixels by their geometry (B, 4): sx, sy, dx, dy."""
    dets, _ = _run(self.graphdef, self.state, np.asarray(x_BxSxSx3),
                   np.asarray(geometry_Bx4, np.float32), self.max_faces, self.min_score)
    return Detections(*(np.asarray(v) for v in dets))
