"""Builds sewa from dummy_data/ (AVEC CES layout) and checks labels, crops, audio and skips."""

import os

import numpy as np
import pytest

from tfds_builders.sewa import sewa_dataset_builder as sewa
from vaflax import detect, faces
from vaflax.data import build, video_io

DUMMY = os.path.join(os.path.dirname(__file__), 'dummy_data', 'avec2019')


@pytest.fixture(scope='module')
def builder(tmp_path_factory):
  return build.build('sewa', str(tmp_path_factory.mktemp('sewa')), manual_dir=DUMMY,
                     verbose=False)


def _skips(b, split):
  return {r: s['count'] for r, s in b.info.metadata['skipped'][split].items()}


def test_counts_video_table_and_skips(builder):
  b = builder
  assert {s: i.num_examples for s, i in b.info.splits.items()} == {'train': 23, 'validation': 6}
  # Train_DE_01: grid frames 0-14 of a 1.5 s video (labels 15, 16 lie after its end).
  assert b.info.metadata['videos'] == {
      'train': [['Train_DE_01', 0, 15], ['Train_HU_01', 15, 8]],
      'validation': [['Devel_DE_01', 0, 6]]}
  assert _skips(b, 'train') == {
      'arousal not a number in [-1, 1]: masked, frame kept': 1,
      'label time outside the decoded video': 2,
      'no face detected (none before or held > 2 s): zero image, masks 0, frame kept': 1,
      'no face detected: previous face box reused': 2,
      'no label row for the frame time: masked, frame kept': 1,
      'no video file for the recording: skipped': 1,
      'row has 3 fields, expected 5': 1,
  }
  assert _skips(b, 'validation') == {}
  assert b.info.metadata['fps'] == 10 and b.info.metadata['sample_rate'] == 16000


def test_labels_and_masks(builder):
  ds = builder.as_data_source('train')
  de = [ds[i] for i in range(15)]
  assert [int(e['frame']) for e in de] == list(range(15))
  # Row k: arousal -0.3 + 0.01 k, valence 0.5 - 0.02 k, liking 0.05 k (make_dummy_data.rows).
  for k in (1, 2, 5, 14):
    np.testing.assert_allclose([de[k]['arousal'], de[k]['valence'], de[k]['liking']],
                               [-0.3 + 0.01 * k, 0.5 - 0.02 * k, 0.05 * k], atol=1e-6)
  masks = np.array([e['va_mask'] for e in de])  # (valence, arousal)
  expect = np.ones((15, 2))
  expect[0] = 0  # no face yet: zero image, no target
  expect[7, 1] = 0  # arousal NaN
  expect[9] = 0  # the row with a wrong field count
  np.testing.assert_array_equal(masks, expect)
  np.testing.assert_array_equal([e['face_mask'] for e in de], [0] + [1] * 14)
  assert not np.asarray(de[0]['image']).any()
  assert de[7]['valence'] == pytest.approx(0.2) and np.isnan(de[7]['arousal_raw'])
  # Row 0 has its labels kept in the raw values (the frame only lacks a face).
  np.testing.assert_allclose([de[0]['valence_raw'], de[0]['arousal_raw']], [0.5, -0.3])
  hu = ds[15]  # labels file without a header row
  np.testing.assert_allclose([hu['arousal'], hu['valence']], [0.2, -0.1], atol=1e-6)
  assert hu['video_id'] == b'Train_HU_01' and hu['file'] == b'video/Train_HU_01.mp4'


def test_crop_is_the_haar_crop_of_the_nearest_frame(builder):
  ds = builder.as_data_source('train')
  path = os.path.join(DUMMY, 'video', 'Train_DE_01.avi')
  ref = {k: rgb for k, _, rgb in video_io.iter_frames(path, fps=10, start=0.0) if k in (1, 3, 6)}
  box1 = detect.largest_face(ref[1])
  for k, box in ((1, box1), (6, detect.largest_face(ref[6]))):
    want, _ = faces.crop_face(ref[k], box=box, spec=sewa.CROP)
    got = np.asarray(ds[k]['image']).astype(np.float32)
    assert np.abs(got - want).mean() < 3.0, k
  # Frame 3 has no face: the box of frame 2 is held (same window as frame 2's detection).
  box2 = detect.largest_face(
      next(rgb for k, _, rgb in video_io.iter_frames(path, fps=10, start=0.0) if k == 2))
  want, _ = faces.crop_face(ref[3], box=box2, spec=sewa.CROP)
  assert np.abs(np.asarray(ds[3]['image']).astype(np.float32) - want).mean() < 3.0


def test_audio_per_step(builder):
  ds = builder.as_data_source('train')
  rms = np.array([np.sqrt(np.mean(np.square(ds[i]['audio']))) for i in range(23)])
  assert all(ds[i]['audio'].shape == (1600,) and ds[i]['audio_mask'] == 1 for i in range(23))
  # Tone amplitude 0.1 before 0.5 s, 0.4 after; chunk k covers [k / 10, (k + 1) / 10).
  # Train_DE_01 reads the 8 kHz wav (resampled), Train_HU_01 the mp4's own track.
  for start, n in ((0, 15), (15, 8)):
    want = np.where(np.arange(n) < 5, 0.1, 0.4) / np.sqrt(2)
    np.testing.assert_allclose(rms[start + 1 : start + n], want[1:], rtol=0.06)
  spectrum = np.abs(np.fft.rfft(ds[8]['audio']))
  assert np.argmax(spectrum) == round(1000 * 1600 / 16000)


def test_face_box_hold_is_bounded(tmp_path, monkeypatch):
  monkeypatch.setattr(sewa, 'MAX_HOLD', 1)
  b = build.build('sewa', str(tmp_path), manual_dir=DUMMY, verbose=False)
  ds = b.as_data_source('train')
  # Frames 3 and 4 have no face: 3 reuses frame 2's box, 4 exceeds the hold of one frame.
  np.testing.assert_array_equal([ds[k]['face_mask'] for k in range(6)], [0, 1, 1, 1, 0, 1])
  assert not np.asarray(ds[4]['image']).any()


def test_no_labels_is_an_error(tmp_path):
  (tmp_path / 'm' / 'video').mkdir(parents=True)
  with pytest.raises(ValueError, match='no Train_\\*.csv label file'):
    build.build('sewa', str(tmp_path / 'd'), manual_dir=str(tmp_path / 'm'), verbose=False)
