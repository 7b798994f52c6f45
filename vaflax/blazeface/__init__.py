"""BlazeFace full-range face detector (MediaPipe's weights, Apache-2.0) in JAX/Flax NNX.

  model.py      the network, layer for layer as in the .tflite graph
  detector.py   letterbox, anchors, decoding, weighted NMS: frames -> boxes, scores, keypoints
  convert.py    dev time: the .tflite in the mediapipe wheel -> face_detection_full_range.safetensors

The weights ship in this folder with NOTICE (licence) and provenance.json (hashes).
"""

from vaflax.blazeface.detector import KEYPOINTS, BlazeFace, Detections

__all__ = ['KEYPOINTS', 'BlazeFace', 'Detections']
