"""Valence/arousal of the faces in images and videos with an exported run, without JAX.

  python -m vaflax.export.run --model=DIR --input=FILE_or_DIR --output=OUT
      [--faces=largest|all] [--min_face=40] [--frame_stride=1] [--max_age=5]

DIR is what `python -m vaflax.export --format=onnx` wrote (face.onnx, detector.onnx,
export.json). Per input, OUT/<name>.csv has predict's per-frame columns (docs/predict.md). This
file needs NumPy, onnxruntime, OpenCV, Pillow and PyAV only: copy it into an application as it
is (it imports nothing from vaflax; run as a script, `python run.py ...`, it loads no JAX).

What it does, per frame: letterbox -> detector.onnx, on the frame at 192 px and (predict's
close-up pass, for faces that fill the frame) at 96 px -> weighted NMS (here, in NumPy) -> the
two passes merged -> faces of side >= min_face, new ones held to a higher score -> ids from a greedy IoU / centre-distance
tracker -> the face crop of the run's recorded crop spec (a NumPy port of vaflax/faces.py
`crop_face`: box crop, or similarity alignment on the 4 keypoints) -> face.onnx (the run's
preprocessing is inside it). Simpler than predict (docs/deploy.md): every frame is searched
whole (no tiles for faces under ~12 px of the detector's 192 px input), the tracker does not
extrapolate motion, and there is no smoothing, overlay or summary JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys

import cv2
import numpy as np

KEYPOINTS = ('eye_left', 'eye_right', 'nose', 'mouth')
CSV_COLUMNS = ('frame', 'time_s', 'face_id', 'x', 'y', 'w', 'h', 'det_score',
               *(f'lm_{n}_{c}' for n in KEYPOINTS for c in 'xy'), 'valence', 'arousal', 'quadrant')
QUADRANTS = ('pleasant-activated', 'unpleasant-activated', 'unpleasant-calm', 'pleasant-calm')
IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')
VIDEO_EXTS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg', '.wmv', '.flv',
              '.3gp', '.ts')
MAX_PIXELS = 8192 * 8192  # larger frames are refused (memory)
START_SCORE = 0.75  # a face no track explains must score this much (predict's hysteresis)
BATCH = 16  # frames detected and scored per onnxruntime call

# vaflax/faces.py TEMPLATES['haar_frame']: the 4 keypoints of an upright face in a unit face box.
_S = 1.0 / 2.2
_EYE_Y = 0.5 - 0.3 * _S
TEMPLATES = {'haar_frame': np.array([[0.5 - _S / 2, _EYE_Y], [0.5 + _S / 2, _EYE_Y],
                                     [0.5, _EYE_Y + 0.5 * _S], [0.5, _EYE_Y + _S]], np.float64)}


# --- The face crop (vaflax/faces.py, same numbers) -----------------------------------------------


def similarity(src_Nx2, dst_Nx2):
  """(A 2x2, t) of the least-squares similarity dst ~ A src + t (2-D Umeyama, complex form)."""
  src, dst = np.asarray(src_Nx2, np.float64), np.asarray(dst_Nx2, np.float64)
  p = (src - src.mean(0)) @ np.array([1, 1j])
  d = (dst - dst.mean(0)) @ np.array([1, 1j])
  energy = float(np.sum(np.abs(p) ** 2))
  if not np.isfinite(energy) or energy <= 1e-12:
    raise ValueError(f'degenerate keypoints {src.tolist()}')
  z = np.sum(np.conj(p) * d) / energy
  A = np.array([[z.real, -z.imag], [z.imag, z.real]])
  return A, dst.mean(0) - A @ src.mean(0)


def crop_face(rgb_HxWx3, box_xywh, keypoints_4x2, spec: dict) -> np.ndarray:
  """The uint8 (size, size, 3) crop of `spec` (export.json 'crop'): aligned on the keypoints
  when spec['aligned'] and they are given, else the square box crop with the margin."""
  size, margin = int(spec['size']), float(spec['margin'])
  img = np.ascontiguousarray(rgb_HxWx3)
  if spec.get('aligned') and keypoints_4x2 is not None:
    dst = (TEMPLATES[spec.get('template', 'haar_frame')] + margin) / (1.0 + 2.0 * margin)
    A, t = similarity(keypoints_4x2, dst)
    scale = float(np.sqrt(abs(np.linalg.det(A))))
    side = max(size, int(round(1.0 / scale))) if scale > 0 else size
    # Pixel j's centre is at j + 0.5; warpAffine maps indices: half a pixel on both sides.
    M = np.concatenate([A * side, (side * (A @ np.array([0.5, 0.5]) + t) - 0.5)[:, None]], 1)
    out = cv2.warpAffine(img, M, (side, side), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if side != size:
      out = cv2.resize(out, (size, size), interpolation=cv2.INTER_AREA)
    return out
  x, y, w, h = (float(v) for v in box_xywh)
  side_i = max(1, int(round(max(w, h) * (1.0 + 2.0 * margin))))
  x0 = int(round(x + 0.5 * w - 0.5 * side_i))
  y0 = int(round(y + 0.5 * h - 0.5 * side_i))
  H, W = img.shape[:2]
  pad = ((max(0, -y0), max(0, y0 + side_i - H)), (max(0, -x0), max(0, x0 + side_i - W)), (0, 0))
  img = np.pad(img, pad)
  window = img[y0 + pad[0][0]:y0 + pad[0][0] + side_i, x0 + pad[1][0]:x0 + pad[1][0] + side_i]
  interp = cv2.INTER_AREA if side_i > size else cv2.INTER_LINEAR
  return cv2.resize(np.ascontiguousarray(window), (size, size), interpolation=interp)


# --- Detection -----------------------------------------------------------------------------------


def letterbox(rgb_HxWx3, side: int):
  """(side x side uint8 input, (scale_x, scale_y, dx, dy)): vaflax/blazeface letterbox."""
  h, w = rgb_HxWx3.shape[:2]
  s = side / max(h, w)
  nw, nh = max(1, round(w * s)), max(1, round(h * s))
  dx, dy = (side - nw) // 2, (side - nh) // 2
  out = np.zeros((side, side, 3), np.uint8)
  interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
  out[dy:dy + nh, dx:dx + nw] = cv2.resize(rgb_HxWx3, (nw, nh), interpolation=interp)
  return out, np.array([nw / w, nh / h, dx, dy], np.float32)


def _iou_matrix(b_Ox4):
  lo = np.maximum(b_Ox4[:, None, :2], b_Ox4[None, :, :2])
  hi = np.minimum(b_Ox4[:, None, 2:], b_Ox4[None, :, 2:])
  inter = np.prod(np.clip(hi - lo, 0, None), -1)
  area = np.prod(np.clip(b_Ox4[:, 2:] - b_Ox4[:, :2], 0, None), -1)
  union = area[:, None] + area[None, :] - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes_Ax4, kps_AxLx2, scores_A, nms_cfg: dict, max_faces: int = 16):
  """MediaPipe's weighted NMS as vaflax/blazeface/detector.py runs it: [(box x1y1x2y2, kps,
  score)], best first."""
  idx = np.argsort(-scores_A, kind='stable')[:int(nms_cfg['candidates'])]
  s, b = scores_A[idx].astype(np.float32), boxes_Ax4[idx].astype(np.float32)
  flat = np.concatenate([b, kps_AxLx2[idx].reshape(len(idx), -1)], -1).astype(np.float32)
  iou = _iou_matrix(b)
  alive = s >= nms_cfg['min_score']
  out = []
  for _ in range(max_faces):
    if not alive.any():
      break
    best = int(np.argmax(alive))
    group = alive & ((iou[best] > nms_cfg['iou']) | (np.arange(len(s)) == best))
    wts = np.where(group, s, np.float32(0))
    mean = (wts @ flat) / max(float(wts.sum()), 1e-12)
    out.append((mean[:4], mean[4:].reshape(-1, 2), float(s[best])))
    alive &= ~group
  return out


# Predict's close-up pass (vaflax/predict/detection.py, BlazeFaceDetector): faces that fill the
# frame are missed at 192 px and found when the frame is letterboxed to 96 px; that pass reports
# faces of side >= 0.15 of the frame's long side, merged with the 192 px pass's.
CLOSE_UP_INPUT = 96
CLOSE_UP_SIDE = 0.15
# detector.onnx takes 192 px only: the 96 px letterbox is run centred on a 192 px canvas of grey
# 128 (0 after the network's x / 127.5 - 1, what a 96 px input is padded with by its first
# convolution). Close to the 96 px network, not equal: docs/deploy.md has the numbers.
CLOSE_UP_FILL = 128


def close_up(x_SxSx3, geometry_4):
  """(the close-up input: the S px letterbox halved to 96 px on an S px grey canvas, its
  geometry from the source frame)."""
  side = x_SxSx3.shape[0]
  small = cv2.resize(x_SxSx3, (CLOSE_UP_INPUT, CLOSE_UP_INPUT), interpolation=cv2.INTER_AREA)
  off = (side - CLOSE_UP_INPUT) // 2
  canvas = np.full_like(x_SxSx3, CLOSE_UP_FILL)
  canvas[off:off + CLOSE_UP_INPUT, off:off + CLOSE_UP_INPUT] = small
  k = CLOSE_UP_INPUT / side
  sx, sy, dx, dy = geometry_4
  return canvas, np.array([sx * k, sy * k, dx * k + off, dy * k + off], np.float32)


def weighted_merge(faces):
  """Predict's merge of the two passes (detection.py `_weighted_merge`): the surest face takes
  every face with IoU > 0.3 and becomes their score-weighted mean box and keypoints, keeping its
  score; largest first."""
  left = sorted(faces, key=lambda f: -f[1])
  out = []
  while left:
    group = [f for f in left if f is left[0] or iou(left[0][0], f[0]) > 0.3]
    left = [f for f in left if all(f is not g for g in group)]
    w = np.array([f[1] for f in group])
    box = (w[:, None] * np.array([f[0] for f in group], np.float64)).sum(0) / w.sum()
    kps = (w[:, None, None] * np.stack([f[2] for f in group])).sum(0) / w.sum()
    out.append((tuple(float(v) for v in box), group[0][1], kps.astype(np.float32)))
  return sorted(out, key=lambda f: -f[0][2] * f[0][3])


class Detector:
  """detector.onnx and the NMS: frames -> [[(box xywh, score, keypoints 4x2)]] in source px,
  faces of side >= min_face, from predict's two whole-frame passes (192 px and the close-up)."""

  def __init__(self, path: str, info: dict, session_options=None, min_face: int = 1):
    import onnxruntime as ort  # noqa: PLC0415

    self.sess = ort.InferenceSession(path, session_options, providers=['CPUExecutionProvider'])
    self.side, self.nms_cfg = int(info['input_side']), info['nms']
    self.min_face = min_face

  def __call__(self, frames: list[np.ndarray]) -> list[list[tuple]]:
    boxed = [letterbox(f, self.side) for f in frames]
    boxed += [close_up(*b) for b in boxed]
    boxes, kps, scores = self.sess.run(['boxes', 'keypoints', 'scores'],
                                       {'frames': np.stack([b[0] for b in boxed])})
    found = []
    for i, (_, (sx, sy, dx, dy)) in enumerate(boxed):
      faces = []
      for b, kp, score in nms(boxes[i], kps[i], scores[i], self.nms_cfg):
        lo = (b[:2] - [dx, dy]) / [sx, sy]
        hi = (b[2:] - [dx, dy]) / [sx, sy]
        faces.append(((*lo, *(hi - lo)), score, ((kp - [dx, dy]) / [sx, sy]).astype(np.float32)))
      found.append(faces)
    out = []
    for i, frame in enumerate(frames):
      far = max(self.min_face, CLOSE_UP_SIDE * max(frame.shape[:2]))
      out.append(weighted_merge([f for f in found[i] if min(f[0][2:]) >= self.min_face]
                                + [f for f in found[len(frames) + i] if min(f[0][2:]) >= far]))
    return out


# --- Tracking ------------------------------------------------------------------------------------


def iou(a, b) -> float:
  iw = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
  ih = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
  union = a[2] * a[3] + b[2] * b[3] - iw * ih
  return iw * ih / union if union > 0 else 0.0


def match_score(track, det) -> float:
  """1 + IoU when IoU >= 0.3; else (sizes within 1.5x) closeness of the box centres within half
  a side; 0: no match (predict's rule without its landmark distance)."""
  s = iou(track, det)
  if s >= 0.3:
    return 1.0 + s
  side = max(track[2], track[3])
  d = math.hypot(det[0] + det[2] / 2 - track[0] - track[2] / 2,
                 det[1] + det[3] / 2 - track[1] - track[3] / 2)
  ratio = max(det[2], det[3]) / side
  return 1.0 - d / (0.5 * side) if d < 0.5 * side and 1 / 1.5 < ratio < 1.5 else 0.0


class Tracker:
  """Greedy best-pair matching of boxes to live tracks; a track unseen for > max_age frames ends."""

  def __init__(self, max_age: int = 5):
    self.max_age, self.tracks, self.next, self.t = max_age, {}, 0, 0

  def live(self) -> list[tuple]:
    return [b for b, _ in self.tracks.values()]

  def update(self, boxes: list[tuple]) -> list[int]:
    pairs = sorted(((match_score(b0, b), tid, i) for tid, (b0, _) in self.tracks.items()
                    for i, b in enumerate(boxes)), reverse=True)
    ids, used = [None] * len(boxes), set()
    for score, tid, i in pairs:
      if score > 0 and tid not in used and ids[i] is None:
        used.add(tid)
        ids[i] = tid
    for i, b in enumerate(boxes):
      if ids[i] is None:
        ids[i], self.next = self.next, self.next + 1
      self.tracks[ids[i]] = (b, self.t)
    self.tracks = {k: v for k, v in self.tracks.items() if self.t - v[1] < self.max_age + 1}
    self.t += 1
    return ids


# --- Inputs and outputs --------------------------------------------------------------------------


def frames_of(path: str, stride: int):
  """(index, time_s, rgb) of an image (one frame) or every stride-th frame of a video."""
  if path.lower().endswith(IMAGE_EXTS):
    from PIL import Image, ImageOps  # noqa: PLC0415

    with Image.open(path) as im:  # PIL refuses decompression bombs
      yield 0, 0.0, _checked(path, np.asarray(ImageOps.exif_transpose(im).convert('RGB')))
    return
  import av  # noqa: PLC0415

  with av.open(path) as container:
    stream = container.streams.video[0]
    stream.thread_type = 'AUTO'
    origin = container.start_time / 1e6 if container.start_time is not None else 0.0
    fps = float(stream.average_rate or stream.guessed_rate or 0) or 1.0
    for i, frame in enumerate(container.decode(stream)):
      if i % stride == 0:
        t = frame.time - origin if frame.time is not None else i / fps
        yield i, float(t), _checked(path, frame.to_ndarray(format='rgb24'))


def _checked(path, rgb):
  if rgb.shape[0] * rgb.shape[1] > MAX_PIXELS:
    raise ValueError(f'{path}: a frame of {rgb.shape[1]}x{rgb.shape[0]} pixels is over the '
                     f'{MAX_PIXELS} pixel limit')
  return rgb


def _num(x, fmt):
  return '' if x is None or not math.isfinite(x) else format(x, fmt)


def quadrant(v: float, a: float) -> str:
  """vaflax/circumplex.py's quadrant of a VA point (0 counts as non-negative)."""
  return QUADRANTS[(0 if v >= 0 else 1) if a >= 0 else (3 if v >= 0 else 2)]


def csv_row(frame, t, face_id, box=None, score=None, kps=None, va=None) -> list:
  row = [frame, f'{t:.4f}', face_id]
  row += [_num(v, 'g') for v in (box or (math.nan,) * 4)] + [_num(score, '.4f')]
  row += [f'{v:.1f}' for v in np.asarray(kps, np.float64).reshape(-1)] if kps is not None \
      else [''] * (2 * len(KEYPOINTS))
  row += [f'{va[0]:.4f}', f'{va[1]:.4f}', quadrant(*va)] if va is not None else ['', '', '']
  return row


# --- The runner ----------------------------------------------------------------------------------


class Runner:
  def __init__(self, model_dir: str, *, faces: str = 'largest', min_face: int = 40,
               frame_stride: int = 1, max_age: int = 5):
    import onnxruntime as ort  # noqa: PLC0415

    with open(os.path.join(model_dir, 'export.json')) as f:
      self.meta = json.load(f)
    if self.meta.get('format') != 'onnx':
      raise ValueError(f'{model_dir}: export.json says format {self.meta.get("format")!r}; the '
                       'runner runs ONNX exports (--format=onnx)')
    face = self.meta['face']
    if face.get('window'):
      raise ValueError(f'{model_dir}: a window model ({face["window"]} frames) scores clips; '
                       'this runner scores single faces')
    self.crop = face['crop']
    self.face = ort.InferenceSession(os.path.join(model_dir, 'face.onnx'),
                                     providers=['CPUExecutionProvider'])
    self.detector = Detector(os.path.join(model_dir, 'detector.onnx'), self.meta['detector'],
                             min_face=min_face)
    self.largest, self.min_face = faces == 'largest', min_face
    self.stride, self.max_age = frame_stride, max_age

  def _faces(self, found, live):
    """Predict's rules: side >= min_face, new faces need START_SCORE, whole-pixel boxes, the
    largest first."""
    out = []
    for box, score, kps in found:
      if min(box[2], box[3]) < self.min_face:
        continue
      if score < START_SCORE and not any(match_score(t, box) > 0 for t in live):
        continue
      out.append((tuple(float(round(v)) for v in box), score, kps))
    out.sort(key=lambda f: -f[0][2] * f[0][3])
    return out[:1] if self.largest else out

  def rows(self, path: str) -> list[list]:
    tracker, rows = Tracker(self.max_age), []
    chunk = []
    for item in frames_of(path, self.stride):
      chunk.append(item)
      if len(chunk) == BATCH:
        rows += self._chunk(chunk, tracker)
        chunk = []
    if chunk:
      rows += self._chunk(chunk, tracker)
    return rows

  def _chunk(self, chunk, tracker) -> list[list]:
    found = self.detector([rgb for _, _, rgb in chunk])
    pending, crops = [], []
    for (k, t, rgb), dets in zip(chunk, found, strict=True):
      faces = self._faces(dets, tracker.live())
      ids = tracker.update([f[0] for f in faces])
      pending.append((k, t, faces, ids))
      crops += [crop_face(rgb, box, kps, self.crop) for box, _, kps in faces]
    va = np.zeros((0, 2))
    if crops:
      v, a = self.face.run(['valence', 'arousal'], {'faces': np.stack(crops)})
      va = np.stack([v, a], -1).astype(np.float64)
    rows, n = [], 0
    for k, t, faces, ids in pending:
      if not faces:
        rows.append(csv_row(k, t, -1))
      for (box, score, kps), fid in zip(faces, ids, strict=True):
        rows.append(csv_row(k, t, fid, box, score, kps, va[n]))
        n += 1
    return rows

  def write(self, path: str, out_csv: str) -> int:
    rows = self.rows(path)
    tmp = f'{out_csv}.part{os.getpid()}'
    with open(tmp, 'w', newline='') as f:
      w = csv.writer(f)
      w.writerow(CSV_COLUMNS)
      w.writerows(rows)
    os.replace(tmp, out_csv)
    return len(rows)


def list_inputs(path: str) -> list[tuple[str, str]]:
  """(file, output name without extension) of a media file or of a folder's media files."""
  if os.path.isfile(path):
    return [(path, os.path.splitext(os.path.basename(path))[0])]
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path}: no such file or folder')
  found = []
  for root, _, files in os.walk(path):
    for name in sorted(files):
      if name.lower().endswith(IMAGE_EXTS + VIDEO_EXTS):
        rel = os.path.relpath(os.path.join(root, name), path)
        found.append((os.path.join(root, name), os.path.splitext(rel)[0].replace(os.sep, '__')))
  return sorted(found)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog='python -m vaflax.export.run', description=__doc__.split('\n')[0])
  ap.add_argument('--model', required=True, help='the folder python -m vaflax.export wrote')
  ap.add_argument('--input', required=True, help='an image, a video or a folder of them')
  ap.add_argument('--output', required=True, help='output folder (one CSV per input)')
  ap.add_argument('--faces', default='largest', choices=('largest', 'all'))
  ap.add_argument('--min_face', type=int, default=40, help='smallest face side (pixels)')
  ap.add_argument('--frame_stride', type=int, default=1)
  ap.add_argument('--max_age', type=int, default=5)
  args = ap.parse_args(argv)
  if args.min_face < 1 or args.frame_stride < 1 or args.max_age < 0:
    ap.error('--min_face and --frame_stride must be >= 1, --max_age >= 0')
  runner = Runner(args.model, faces=args.faces, min_face=args.min_face,
                  frame_stride=args.frame_stride, max_age=args.max_age)
  os.makedirs(args.output, exist_ok=True)
  failed = 0
  for path, name in list_inputs(args.input):
    try:
      n = runner.write(path, os.path.join(args.output, f'{name}.csv'))
      print(f'{path}: {n} rows -> {name}.csv')
    except Exception as e:  # noqa: BLE001 -- one unreadable file does not stop the others
      failed += 1
      print(f'{path}: error: {type(e).__name__}: {e}', file=sys.stderr)
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
