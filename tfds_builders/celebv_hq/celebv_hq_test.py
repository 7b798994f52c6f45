"""Builds celebv_hq from dummy_data/ and checks the cut, the official box crop, per-segment
emotions, derived VA, attributes, audio and skips."""

import json
import os

import cv2
import numpy as np
import pytest

from tfds_builders.celebv_hq import celebv_hq_dataset_builder as cv
from tfds_builders.omg_emotion.make_dummy_data import face_frames
from vaflax import circumplex
from vaflax.data import build

DUMMY = os.path.join(os.path.dirname(__file__), 'dummy_data')


@pytest.fixture(scope='module')
def builder(tmp_path_factory):
  return build.build('celebv_hq', str(tmp_path_factory.mktemp('cv')), manual_dir=DUMMY,
                     verbose=False)


def _face(seed, n, k):
  """Frame k of the dummy face clip of `seed`, upscaled as crop_face does (64 -> 256 px)."""
  return cv2.resize(face_frames(seed, n)[k, :, :64], (256, 256),
                    interpolation=cv2.INTER_LINEAR).astype(np.float32)


def test_official_box_geometry():
  # Widen by 0.02, scale, square of side 2 * (min(w, h) // 2) around the same centre.
  box = {'top': 0.0, 'bottom': 1.0, 'left': 40 / 112, 'right': 104 / 112}
  assert cv.official_box(box, 112, 64) == (40, 0, 64, 64)
  box = {'top': 0.1, 'bottom': 0.5, 'left': 0.25, 'right': 0.5}
  # top 0.08*100=8, bottom 52, left 0.23*200=46, right 104 -> h 44, w 58, half 22, centre (75, 30)
  assert cv.official_box(box, 200, 100) == (53, 8, 44, 44)
  assert [cv.ytb_split(y) for y in ('M2Ohb0FAaJU', 'aS1dF3gH5jK', '8fNYvvDbzDZ')] == [
      'train', 'validation', 'test']


def test_counts_table_and_skips(builder):
  b = builder
  assert {s: i.num_examples for s, i in b.info.splits.items()} == {
      'train': 45, 'validation': 8, 'test': 8}
  # 0.6 s at 25 fps = 15 frames per raw clip; 0.2 s = 5; the processed clip has 10 frames.
  assert b.info.metadata['videos']['train'] == [
      ['M2Ohb0FAaJU_0', 0, 15], ['M2Ohb0FAaJU_1', 15, 15], ['M2Ohb0FAaJU_2', 30, 5],
      ['_0tf2n3rlJU_0', 35, 10]]
  skipped = {r: s['count'] for r, s in b.info.metadata['skipped']['train'].items()}
  assert skipped == {
      'bad clip entry: appearance has 39 values, expected 40 zeros/ones': 1,
      'bad clip entry: duration 5.0..4.0 is not a time span': 1,
      'video not downloaded (neither <ytb_id>.mp4 nor <clip>.mp4)': 1,
  }
  md = b.info.metadata
  assert md['emotion_names'] == cv.EMOTION_NAMES + ['confused']  # data-driven extension
  assert len(md['appearance_names']) == 40 and md['action_names'][2] == 'close_eyes'


def test_cut_and_crop_follow_the_json(builder):
  ds = builder.as_data_source('train')
  for k in (0, 7, 14):  # clip _0 = raw seconds [0.4, 1.0) = the seed-4 part, frame k
    im = ds[k]['image'].astype(np.float32)
    assert np.abs(im - _face(4, 15, k)).mean() < 8  # the bbox square is exactly the face
    assert np.abs(im - _face(5, 10, 0)).mean() > 20  # not the identity shown before the cut
  im = ds[35 + 4]['image'].astype(np.float32)  # processed clip: the whole frame
  assert np.abs(im - _face(10, 10, 4)).mean() < 8


def test_emotions_per_segment_and_derived_va(builder):
  ds = builder.as_data_source('train')
  names = builder.info.metadata['emotion_names']
  emo = [names[e] if e >= 0 else None for e in (int(ds[i]['emotion']) for i in range(45))]
  # clip _1: neutral [0, 0.2) s, nothing in [0.2, 0.32), sad [0.32, 0.6) at 25 fps.
  assert emo[:15] == ['happy'] * 15
  assert emo[15:30] == ['neutral'] * 5 + [None] * 3 + ['sad'] * 7
  assert emo[30:35] == ['confused'] * 5 and emo[35:] == ['contempt'] * 10
  for i in range(45):
    ex = ds[i]
    va = circumplex.EMOTION_VA.get(emo[i]) if emo[i] else None
    if va is None:  # gap, unknown label, contempt
      assert ex['va_mask'].tolist() == [0, 0] and not ex['va_derived']
    else:
      assert (ex['valence'], ex['arousal']) == pytest.approx(va) and ex['va_derived']
  val = builder.as_data_source('validation')[0]
  assert names[val['emotion']] == 'anger'  # json spells it 'angry'
  assert (val['valence'], val['arousal']) == pytest.approx((-0.51, 0.59))


def test_attributes_and_audio(builder):
  with open(os.path.join(DUMMY, 'celebvhq_info.json')) as f:
    clips = json.load(f)['clips']
  ds = builder.as_data_source('train')
  for rec, key in ((0, 'M2Ohb0FAaJU_0'), (20, 'M2Ohb0FAaJU_1'), (40, '_0tf2n3rlJU_0')):
    np.testing.assert_array_equal(ds[rec]['appearance'], clips[key]['attributes']['appearance'])
    np.testing.assert_array_equal(ds[rec]['action'], clips[key]['attributes']['action'])
  # The raw video's tone is 220 / 440 / 660 Hz in its three parts: the cut must pick the right one.
  for split, rec, hz in (('train', 7, 440), ('train', 22, 660), ('train', 32, 220),
                         ('validation', 4, 550)):
    ex = builder.as_data_source(split)[rec]
    assert ex['audio'].shape == (640,) and ex['audio_mask'] == 1
    assert abs(np.argmax(np.abs(np.fft.rfft(ex['audio']))) * 25 - hz) <= 25
  assert ds[40]['audio_mask'] == 0 and not ds[40]['audio'].any()  # processed clip, no audio


def test_bad_json_is_a_clear_error(tmp_path):
  (tmp_path / 'm').mkdir()
  (tmp_path / 'm' / 'celebvhq_info.json').write_text('{"clips": {}}')
  with pytest.raises(ValueError, match='celebvhq_info.json'):
    build.build('celebv_hq', str(tmp_path / 'd'), manual_dir=str(tmp_path / 'm'), verbose=False)
