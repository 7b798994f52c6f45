"""Valence/arousal of the faces in images and videos, with a trained run (`python -m
vaflax.predict`, docs/predict.md). One job per module:

  decode.py     frames of an image or a video, streamed (vaflax.data.video_io)
  detection.py  face finding behind one detector interface (BlazeFace; Haar fallback)
  tracking.py   stable face ids (IoU, landmark or centre matching) and per-track smoothing
  model.py      the run restored once; crops prepared as eval prepared them; batched forward
  batching.py   crops -> batches (frames, or windows of one track) kept in flight
  outputs.py    per-frame CSV, per-clip JSON, plots, overlay video
  pipeline.py   one input through all of the above
  cli.py        flags, folders of inputs, exit codes
"""

from vaflax.predict.batching import Batcher
from vaflax.predict.cli import list_inputs, main, run
from vaflax.predict.decode import IMAGE_EXTS, VIDEO_EXTS, InputError, open_input
from vaflax.predict.detection import Face, FaceFinder
from vaflax.predict.model import Predictor
from vaflax.predict.outputs import CSV_COLUMNS
from vaflax.predict.pipeline import Options, predict_file
from vaflax.predict.tracking import FaceTracker, iou, smooth_track

__all__ = ['CSV_COLUMNS', 'IMAGE_EXTS', 'VIDEO_EXTS', 'Batcher', 'Face', 'FaceFinder',
           'FaceTracker', 'InputError', 'Options', 'Predictor', 'iou', 'list_inputs', 'main',
           'open_input', 'predict_file', 'run', 'smooth_track']
