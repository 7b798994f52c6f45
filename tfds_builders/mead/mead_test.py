"""Builds mead from dummy_data/ (per-actor layout) in three configs; checks sampling, labels,
derived VA, crops, audio sources and skips."""

import os

import numpy as np
import pytest

from tfds_builders.mead import mead_dataset_builder as mead
from vaflax import circumplex
from vaflax.data import build
from vaflax.data import synthetic_faces as sf

DUMMY = os.path.join(os.path.dirname(__file__), 'dummy_data')
BAD = {
    'mp4 not at <view>/<emotion>/level_<k>/<nnn>.mp4': 1,
    'unknown emotion folder \'bored\'': 1,
    'unreadable video (InvalidDataError)': 1,
}


@pytest.fixture(scope='module')
def front(tmp_path_factory):
  return build.build('mead', str(tmp_path_factory.mktemp('mead')), manual_dir=DUMMY,
                     verbose=False)


def _skips(b, split):
  return {r: s['count'] for r, s in b.info.metadata['skipped'][split].items()}


def _peak_hz(x):
  return np.argmax(np.abs(np.fft.rfft(x))) * mead.SAMPLE_RATE / len(x)


def test_actor_pseudo_split_is_fixed():
  assert [mead.actor_split(a) for a in ('M005', 'W011', 'M012')] == ['train', 'validation', 'test']


def test_front_config_every_5th_frame(front):
  b = front
  assert b.builder_config.name == 'front' and b.info.metadata['frame_stride'] == 5
  assert {s: i.num_examples for s, i in b.info.splits.items()} == {
      'train': 8, 'validation': 3, 'test': 3}
  # 12 frames at 30 fps -> grid frames 0, 5, 10; frame 5 of the neutral clip has no face.
  assert b.info.metadata['videos']['train'] == [
      ['M005/front/angry/level_1/001', 0, 3], ['M005/front/contempt/level_2/003', 3, 3],
      ['M005/front/neutral/level_1/001', 6, 2]]
  assert _skips(b, 'train') == {**BAD, 'no face found in frame': 1}
  ds = b.as_data_source('train')
  assert [int(ds[i]['frame']) for i in range(8)] == [0, 5, 10, 0, 5, 10, 0, 10]


def test_labels_intensity_and_derived_va(front):
  names = front.info.metadata['emotion_names']
  expect = {('train', 0): ('angry', 1), ('train', 3): ('contempt', 2), ('train', 6): ('neutral', 1),
            ('validation', 0): ('happy', 3), ('test', 0): ('surprised', 2)}
  for (split, rec), (emotion, level) in expect.items():
    ex = front.as_data_source(split)[rec]
    assert names[ex['emotion']] == emotion and ex['intensity'] == level and ex['view'] == b'front'
    va = circumplex.emotion_to_va(emotion)
    if va is None:  # contempt: no point in the table
      assert ex['va_mask'].tolist() == [0, 0] and not ex['va_derived']
    else:
      assert (ex['valence'], ex['arousal']) == pytest.approx(va)
      assert ex['va_mask'].tolist() == [1, 1] and ex['va_derived']
  assert front.as_data_source('train')[0]['valence'] == pytest.approx(-0.51)  # angry -> anger


def test_crop_and_audio_sources(front):
  ds = front.as_data_source('train')
  for rec, seed, face_left in ((0, 4, True), (3, 10, False)):
    im = ds[rec]['image'].astype(np.float32)
    skin = np.array(sf.sample_identity(np.random.default_rng(seed)).skin, np.float32)
    assert np.abs(im[118:138, 100:156].reshape(-1, 3).mean(0) - skin).max() < 35
    green = (im[..., 1] > 180) & (im[..., 0] < 80) & (im[..., 2] < 80)
    near, far = (green[:, 244:], green[:, :12]) if face_left else (green[:, :12], green[:, 244:])
    assert near.mean() > 0.5 and far.mean() < 0.05
  # The separate .m4a (660 Hz) wins over the video's own track (440 Hz); without it the
  # video's track (330 Hz) is used; the test clip has no audio at all.
  for split, rec, hz in (('train', 1, 660), ('train', 6, 330), ('validation', 2, 550)):
    ex = front.as_data_source(split)[rec]
    assert ex['audio'].shape == (533,) and ex['audio_mask'] == 1
    assert abs(_peak_hz(ex['audio']) - hz) <= 30
    assert np.sqrt(np.mean(ex['audio'] ** 2)) == pytest.approx(0.5 / np.sqrt(2), abs=0.05)
  t = front.as_data_source('test')[0]
  assert t['audio_mask'] == 0 and not t['audio'].any()


def test_all_views_and_custom_stride(tmp_path):
  b = build.build('mead', str(tmp_path), manual_dir=DUMMY, config='all_views', verbose=False)
  assert b.info.metadata['frame_stride'] == 10
  assert {s: i.num_examples for s, i in b.info.splits.items()} == {
      'train': 8, 'validation': 2, 'test': 4}
  assert [v[0] for v in b.info.metadata['videos']['test']] == [
      'M012/down/surprised/level_1/004', 'M012/front/surprised/level_2/001']  # 'surprise' folder
  assert _skips(b, 'train') == BAD  # the faceless frame 5 is not sampled
  cfg = mead.MeadConfig(name='front_every_frame', frame_stride=1)
  b = build.build('mead', str(tmp_path), manual_dir=DUMMY, config=cfg, verbose=False)
  assert [v[2] for v in b.info.metadata['videos']['train']] == [12, 12, 11]


def test_no_actor_folder_is_a_clear_error(tmp_path):
  (tmp_path / 'm' / 'M003').mkdir(parents=True)
  (tmp_path / 'm' / 'M003' / 'video.tar').write_bytes(b'')
  with pytest.raises(ValueError, match='archive not extracted'):
    build.build('mead', str(tmp_path / 'd'), manual_dir=str(tmp_path / 'm'), verbose=False)
