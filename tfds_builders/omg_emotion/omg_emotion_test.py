"""Builds omg_emotion from dummy_data/ (real layout) and checks labels, crops, audio and skips."""

import os
import shutil

import numpy as np
import pytest

from vaflax.data import build
from vaflax.data import synthetic_faces as sf

DUMMY = os.path.join(os.path.dirname(__file__), 'dummy_data')


@pytest.fixture(scope='module')
def builder(tmp_path_factory):
  return build.build('omg_emotion', str(tmp_path_factory.mktemp('omg')), manual_dir=DUMMY,
                     verbose=False)


def _green(pixels):
  return ((pixels[..., 1] > 180) & (pixels[..., 0] < 80) & (pixels[..., 2] < 80)).mean()


def _skips(b, split):
  return {r: s['count'] for r, s in b.info.metadata['skipped'][split].items()}


def test_counts_video_table_and_skips(builder):
  b = builder
  assert {s: i.num_examples for s, i in b.info.splits.items()} == {
      'train': 40, 'validation': 8, 'test': 8}
  # 30 fps source of 15 frames -> 13 frames on the 25 fps grid, the last 3 have no face; the cut
  # from the full video [0.4, 0.8) s holds 10 grid frames, all with a face.
  assert b.info.metadata['videos']['train'] == [
      ['5b44393ed/utterance_1', 0, 12], ['5b44393ed/utterance_3', 12, 10],
      ['9a1c0e77b/utterance_2', 22, 10], ['2f0d6c1aa_1/utterance_1', 32, 8]]
  assert _skips(b, 'train') == {
      'arousal missing or out of range: masked, frames kept': 1,
      'no face found in frame': 3,
      'no valid valence, arousal or emotion in row': 1,
      'row has 6 fields, header has 8': 1,
      'unreadable video (InvalidDataError)': 2,
      'utterance video missing (neither cut nor full video found)': 1,
  }
  assert _skips(b, 'validation') == {} and _skips(b, 'test') == {}
  assert b.info.metadata['fps'] == 25 and b.info.metadata['test_labels'] is True


def test_labels_normalised_per_utterance(builder):
  ds = builder.as_data_source('train')
  # (first record, valence, arousal = 2a - 1, arousal_raw, mask, emotion) per utterance.
  expect = [(0, -0.5, 0.5, 0.75, [1, 1], 3), (12, 0.3, -0.6, 0.2, [1, 1], 5),
            (22, 0.9, 0.0, 0.5, [1, 1], 6), (32, 0.1, 0.0, np.nan, [1, 0], 2)]
  for start, v, a, a_raw, mask, emo in expect:
    ex = ds[start]
    assert ex['valence'] == pytest.approx(v) and ex['arousal'] == pytest.approx(a)
    np.testing.assert_array_equal(ex['va_mask'], mask)
    np.testing.assert_allclose(ex['arousal_raw'], a_raw)
    assert ex['emotion'] == emo and not ex['va_derived'] and ex['landmarks_mask'] == 0
  frames = [int(ds[i]['frame']) for i in range(12, 22)]
  assert frames == list(range(10))  # grid frames 10..12 were the faceless ones
  t = builder.as_data_source('test')[0]
  assert (t['valence'], t['arousal'], t['emotion']) == (-1.0, -1.0, 1)


def test_face_crop_follows_the_face(builder):
  ds = builder.as_data_source('train')
  for rec, seed, face_left in ((0, 4, True), (12, 5, False), (22, 9, True), (32, 10, False)):
    im = ds[rec]['image'].astype(np.float32)
    assert im.shape == (256, 256, 3)
    skin = np.array(sf.sample_identity(np.random.default_rng(seed)).skin, np.float32)
    # The middle of the crop is the face (cheeks / nose band), not background or marker.
    assert np.abs(im[118:138, 100:156].reshape(-1, 3).mean(0) - skin).max() < 35
    near, far = (slice(244, 256), slice(0, 12)) if face_left else (slice(0, 12), slice(244, 256))
    # The green marker strip drawn beside the face shows up on that side of the crop only.
    assert _green(im[:, near]) > 0.5 and _green(im[:, far]) < 0.05


def test_audio_per_frame(builder):
  ds = builder.as_data_source('train')
  # Each video carries its own tone; the cut from the full video must give 660 Hz (not 220 Hz).
  for rec, freq in ((5, 440), (17, 880), (25, 660), (36, 330)):
    ex = ds[rec]
    assert ex['audio'].shape == (640,) and ex['audio_mask'] == 1
    peak = np.argmax(np.abs(np.fft.rfft(ex['audio']))) * 16000 / 640
    assert abs(peak - freq) <= 25
    assert np.sqrt(np.mean(ex['audio'] ** 2)) == pytest.approx(0.5 / np.sqrt(2), abs=0.05)


def test_test_split_without_labels(tmp_path):
  manual = tmp_path / 'manual'
  shutil.copytree(DUMMY, manual)
  os.remove(manual / 'OMGEmotionChallenge' / 'omg_TestVideos_WithLabels.csv')
  b = build.build('omg_emotion', str(tmp_path / 'data'), manual_dir=str(manual), verbose=False)
  assert b.info.metadata['test_labels'] is False
  ds = b.as_data_source('test')
  assert len(ds) == 8
  np.testing.assert_array_equal(ds[0]['va_mask'], [0, 0])
  assert ds[0]['emotion'] == -1


def test_missing_csv_is_a_clear_error(tmp_path):
  (tmp_path / 'm').mkdir()
  (tmp_path / 'm' / 'x.txt').write_text('nothing here')
  with pytest.raises(ValueError, match='omg_TrainVideos.csv'):
    build.build('omg_emotion', str(tmp_path / 'd'), manual_dir=str(tmp_path / 'm'), verbose=False)


def test_truncated_clip_is_counted(tmp_path):
  """A clip cut short (half its bytes, index intact) keeps the frames that decode and is counted
  with how many of the declared frames came; a whole clip is not."""
  import av  # noqa: PLC0415

  from tfds_builders.omg_emotion import make_dummy_data as mk  # noqa: PLC0415
  from tfds_builders.omg_emotion.omg_emotion_dataset_builder import CROP  # noqa: PLC0415
  from vaflax.data import builder_utils as bu  # noqa: PLC0415
  from vaflax.data import video_io  # noqa: PLC0415

  whole = tmp_path / 'whole.mp4'
  # faststart: the index comes first (as in streamed downloads), so it survives the cut.
  with av.open(str(whole), 'w', options={'movflags': 'faststart'}) as out:
    vs = video_io.add_video_stream(out, 25, 96, 64, preset='ultrafast')
    for f in mk.face_frames(4, 30, left=True):
      for p in video_io.encode_rgb(vs, f):
        out.mux(p)
    for p in vs.encode():
      out.mux(p)
  data = whole.read_bytes()
  (tmp_path / 'cut.mp4').write_bytes(data[: len(data) // 2])
  box = lambda rgb: (0.0, 0.0, float(rgb.shape[1]), float(rgb.shape[0]))  # noqa: E731
  counts = {}
  for name in ('whole', 'cut'):
    skips = bu.SkipLog('train')
    n = sum(1 for _ in video_io.face_frames(tmp_path / f'{name}.mp4', fps=25, sample_rate=16000,
                                            spec=CROP, box_fn=box, skips=skips, item=name))
    counts[name] = (n, dict(skips.counts), skips.examples)
  assert counts['whole'] == (30, {}, {})
  n, cut, examples = counts['cut']
  reason = 'clip shorter than its container declares: decoded frames kept (truncated file?)'
  assert 0 < n < 30 and cut == {reason: 1}
  assert examples[reason] == [f'cut ({n} of 30 frames)']
