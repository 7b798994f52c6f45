"""Valence/arousal of the faces in images and videos, with a trained run (`python -m
vaflax.predict`, docs/predict.md). One job per module:

  decode.py      frames of an image or a video, streamed (vaflax.data.video_io)
  detection.py   face finding behind one detector interface (BlazeFace; Haar fallback)
  tracking.py    stable face ids (IoU, landmark or centre matching), per-track smoothing
  model.py       the run restored once; crops prepared as eval prepared them; batched forward
  batching.py    crops -> batches (frames, or windows of one track) kept in flight
  outputs.py     per-frame CSV, per-clip JSON, plots, overlay video, crops; atomic writes
  pipeline.py    one input's steps: scan (decode..preprocess), Clip (rows), finish_clip (outputs)
  collection.py  the one scheduler of inputs (many, or one: predict_file): listing, shards,
                 resume, decoding threads, shared batches
  summary.py     the collection's table (summary.csv) and its circumplex plot
  cropped.py     `--cropped`: inputs that are face crops
  cli.py         flags, exit codes
"""

from vaflax.predict.batching import Batcher
from vaflax.predict.cli import list_inputs, main
from vaflax.predict.collection import Input, in_shard, parse_shard, predict_file, predict_many, run
from vaflax.predict.decode import IMAGE_EXTS, VIDEO_EXTS, InputError, open_input
from vaflax.predict.detection import Face, FaceFinder
from vaflax.predict.model import Predictor
from vaflax.predict.outputs import CSV_COLUMNS, KEYPOINTS
from vaflax.predict.pipeline import Options
from vaflax.predict.summary import read_table
from vaflax.predict.tracking import FaceTracker, iou, smooth_track

__all__ = ['CSV_COLUMNS', 'IMAGE_EXTS', 'KEYPOINTS', 'VIDEO_EXTS', 'Batcher', 'Face',
           'FaceFinder', 'FaceTracker', 'Input', 'InputError', 'Options', 'Predictor', 'in_shard',
           'iou', 'list_inputs', 'main', 'open_input', 'parse_shard', 'predict_file',
           'predict_many', 'read_table', 'run', 'smooth_track']
