"""Builds affwild2_va from dummy_data/ (ABAW 6th and 2020 layouts); checks frames, masks, audio."""

import os

import numpy as np
import pytest

from vaflax.data import build

DUMMY = os.path.join(os.path.dirname(__file__), 'dummy_data')
NO_FACE = 'no cropped_aligned image for the frame (no face): zero image, masks 0, frame kept'
MASKED = 'valence/arousal -5 (not annotated): masked, frame kept'
NO_VIDEO = 'no raw video found: zero audio, audio_mask 0'


@pytest.fixture(scope='module')
def abaw6(tmp_path_factory):
  return build.build('affwild2_va', str(tmp_path_factory.mktemp('aw2_6')),
                     manual_dir=os.path.join(DUMMY, 'abaw6'), verbose=False)


def _skips(b, split):
  return {r: s['count'] for r, s in b.info.metadata['skipped'][split].items()}


def _frame_code(ex):
  """The frame number drawn into the crop's top strip (red = 30 * k), -1 for a zero image."""
  red = float(np.asarray(ex['image'])[1:4, 20:90, 0].mean())
  return -1 if red < 8 and np.asarray(ex['image']).max() < 8 else int(round(red / 30))


def test_counts_video_table_and_skips(abaw6):
  b = abaw6
  assert {s: i.num_examples for s, i in b.info.splits.items()} == {'train': 17, 'validation': 2}
  assert b.info.metadata['annotation_dir'] == os.path.join(
      'Aff-Wild2', '6th ABAW Annotations', 'VA_Estimation_Challenge')
  # One record per annotation line: 7 + 6 + 4 (two people of one video), 2 in validation.
  assert b.info.metadata['videos'] == {
      'train': [['1-30-64x48', 0, 7], ['7-25-64x48_left', 7, 6], ['7-25-64x48_right', 13, 4]],
      'validation': [['video5', 0, 2]]}
  tr = _skips(b, 'train')
  truncated = [k for k in tr if k.startswith('unreadable or truncated image')]
  assert len(truncated) == 1 and tr.pop(truncated[0]) == 1
  assert tr == {'annotation line is not two numbers: masked, frame kept': 1,
                'crop image without annotation line': 1, NO_FACE: 1,
                'no cropped_aligned/<video>/ folder: video skipped': 1, MASKED: 2}
  assert _skips(b, 'validation') == {NO_VIDEO: 1}
  assert b.info.metadata['video_fps'] == {
      '1-30-64x48': 30.0, '7-25-64x48_left': 25.0, '7-25-64x48_right': 25.0}


def test_frames_labels_and_masks(abaw6):
  ds = abaw6.as_data_source('train')
  exs = [ds[i] for i in range(7)]
  # Line k <-> crop k: the crop of record i shows frame i + 1; 00003 has no crop and 00005 is
  # truncated: zero images with face_mask 0.
  assert [_frame_code(e) for e in exs] == [1, 2, -1, 4, -1, 6, 7]
  np.testing.assert_array_equal([e['face_mask'] for e in exs], [1, 1, 0, 1, 0, 1, 1])
  assert [int(e['frame']) for e in exs] == list(range(7))
  assert exs[2]['file'] == b'Aff-Wild2/cropped_aligned/1-30-64x48/00003.jpg'
  # va_mask: -5 line, good, no face, good, truncated crop, bad line, arousal -5.
  np.testing.assert_array_equal([e['va_mask'] for e in exs],
                                [[0, 0], [1, 1], [0, 0], [1, 1], [0, 0], [0, 0], [1, 0]])
  np.testing.assert_allclose([(e['valence'], e['arousal']) for e in exs],
                             [(0, 0), (0.183, 0.241), (0, 0), (0.17, 0.23), (0, 0), (0, 0),
                              (0.1, 0)], atol=1e-6)
  # Frames without a face keep the annotation in the raw values (ABAW scores every line).
  np.testing.assert_allclose([exs[2]['valence_raw'], exs[4]['arousal_raw']], [0.175, 0.9],
                             atol=1e-6)
  assert np.isnan(exs[0]['valence_raw']) and np.isnan(exs[6]['arousal_raw'])
  assert all(e['landmarks_mask'] == 0 and e['emotion'] == -1 for e in exs)
  # The 96 px crop is resized to 112; the two people of one video are separate videos.
  assert np.asarray(ds[8]['image']).shape == (112, 112, 3) and _frame_code(ds[8]) == 2
  np.testing.assert_allclose([ds[13 + k]['valence'] for k in range(4)], [0, -0.1, -0.2, -0.3],
                             atol=1e-6)


def test_audio_from_raw_video(abaw6):
  ds = abaw6.as_data_source('train')
  rms = np.array([np.sqrt(np.mean(np.square(ds[i]['audio']))) for i in range(17)])
  assert all(ds[i]['audio'].shape == (640,) and ds[i]['audio_mask'] == 1 for i in range(17))
  # 1-30-64x48: a steady tone of amplitude 0.3 (RMS 0.212) except the first, half-covered chunk.
  np.testing.assert_allclose(rms[1:7], 0.3 / np.sqrt(2), rtol=0.05)
  # 7-25-64x48 at 25 fps: chunk k is exactly frame k's interval; amplitude 0.1 for frames 0-2,
  # 0.4 from frame 3. Both people of the video get the same audio.
  np.testing.assert_allclose(rms[7:13], np.array([0.1] * 3 + [0.4] * 3) / np.sqrt(2), rtol=0.08)
  np.testing.assert_allclose(rms[13:17], rms[7:11], rtol=1e-5)
  tone = ds[9]['audio']  # a 1 kHz tone: 16 samples per period
  assert np.argmax(np.abs(np.fft.rfft(tone))) == round(1000 * 640 / 16000)
  val = abaw6.as_data_source('validation')
  assert val[0]['audio_mask'] == 0 and not val[0]['audio'].any()
  np.testing.assert_allclose(val[1]['valence'], 0.8, atol=1e-6)


def test_abaw2020_layout_with_test_labels(tmp_path):
  b = build.build('affwild2_va', str(tmp_path), manual_dir=os.path.join(DUMMY, 'abaw2020'),
                  verbose=False)
  assert {s: i.num_examples for s, i in b.info.splits.items()} == {
      'train': 2, 'validation': 1, 'test': 1}
  assert b.info.metadata['annotation_dir'] == os.path.join('annotations', 'VA_Set')
  assert b.info.metadata['videos']['train'] == [['video10_1_left', 0, 2]]
  assert _skips(b, 'validation') == {
      'annotation file has no header line: first line read as frame 1': 1, NO_VIDEO: 1}
  ex = b.as_data_source('validation')[0]
  np.testing.assert_allclose([ex['valence'], ex['arousal']], [-0.2, 0.3], atol=1e-6)
  np.testing.assert_allclose(b.as_data_source('test')[0]['valence'], 0.7, atol=1e-6)


def test_missing_annotations_is_an_error(tmp_path):
  m = tmp_path / 'm' / 'cropped_aligned' / 'v'
  m.mkdir(parents=True)
  with pytest.raises(ValueError, match='no VA annotation folder'):
    build.build('affwild2_va', str(tmp_path / 'd'), manual_dir=str(tmp_path / 'm'),
                verbose=False)
