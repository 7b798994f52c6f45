"""The BlazeFace detector (vaflax/blazeface) as one JAX function for export.

In: a letterboxed frame batch, uint8 (N, 192, 192, 3) (`letterbox` in vaflax/blazeface/detector.py:
the frame scaled to fit keeping its aspect, area averaging when it shrinks, bilinear when it
grows, centred on black). Out, per anchor (A = 2304): `boxes` (N, A, 4) x1, y1, x2, y2 and
`keypoints` (N, A, 4, 2) in vaflax's KEYPOINTS order, both in 192-pixel letterbox units, and
`scores` (N, A) probabilities. The weighted non-maximum suppression that predict runs in JAX
(`weighted_nms`) stays outside the graph: its data-dependent loop has no portable ONNX form that
matches MediaPipe's weighted merge, and it is 30 lines of NumPy (vaflax/export/run.py `nms`), run
on the few anchors above the score threshold. export.json records its parameters.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from vaflax.blazeface import detector as det
from vaflax.blazeface import model as model_lib


def detector_graph():
  """(fn, inputs, outputs, info) of the detector predict uses (BlazeFace full range)."""
  graphdef, state = nnx.split(det.load_model(det.WEIGHTS))
  side = model_lib.INPUT_SIDE
  n_anchors = model_lib.GRID * model_lib.GRID

  def fn(frames):
    model = nnx.merge(graphdef, state)
    reg, logits = model(frames.astype(jnp.float32) / 127.5 - 1.0)
    boxes, kps, scores = det.decode(reg, logits)
    return boxes, kps[:, :, det.CANONICAL, :], scores

  inputs = [{'name': 'frames', 'shape': [None, side, side, 3], 'dtype': 'uint8'}]
  outputs = [{'name': 'boxes', 'shape': [None, n_anchors, 4], 'dtype': 'float32'},
             {'name': 'keypoints', 'shape': [None, n_anchors, len(det.CANONICAL), 2],
              'dtype': 'float32'},
             {'name': 'scores', 'shape': [None, n_anchors], 'dtype': 'float32'}]
  info = {
      'model': 'BlazeFace full range (MediaPipe face_detection_full_range), vaflax/blazeface',
      'licence': 'Apache-2.0 (MediaPipe; vaflax/blazeface/NOTICE)',
      'input_side': side,
      'letterbox': 'scale to fit input_side x input_side keeping the aspect (OpenCV INTER_AREA '
                   'when shrinking, INTER_LINEAR when growing), centre on black; a source point p '
                   'maps to p * scale + offset',
      'boxes': 'x1, y1, x2, y2 in letterbox pixels, per anchor',
      'keypoints': 'KEYPOINTS (eye_left, eye_right, nose, mouth; left/right as seen in the '
                   'image) in letterbox pixels, per anchor',
      'nms': {'where': 'outside the graph (the runner, in NumPy)', 'kind': 'weighted',
              'candidates': det.CANDIDATES, 'iou': det.NMS_IOU, 'min_score': det.MIN_SCORE,
              'rule': 'take the best remaining of the top `candidates` anchors scoring >= '
                      'min_score; every remaining one with IoU > iou joins it; the detection is '
                      'their score-weighted mean box and keypoints with the best one\'s score'},
  }
  return fn, inputs, outputs, info
