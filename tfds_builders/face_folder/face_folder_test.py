"""Builds face_folder from dummy_data/ (photos + a video): faces, skips, video table, settings."""

import os

import numpy as np
import pytest

from tfds_builders.face_folder import face_folder_dataset_builder as ff
from tfds_builders.face_folder import make_dummy_data as mk
from vaflax import faces
from vaflax.data import build

DUMMY = os.path.join(os.path.dirname(__file__), 'dummy_data')


@pytest.fixture(scope='module')
def default(tmp_path_factory):
  return build.build('face_folder', str(tmp_path_factory.mktemp('ff')), manual_dir=DUMMY,
                     verbose=False)


@pytest.fixture(scope='module')
def custom(tmp_path_factory):
  return build.build('face_folder', str(tmp_path_factory.mktemp('ff2')), manual_dir=DUMMY,
                     verbose=False, video_stride=5, min_face=24, max_faces=2)


def _skips(b):
  return {r: s['count'] for r, s in b.info.metadata['skipped']['train'].items()}


def _rows(b):
  return [(ex['file'].decode(), int(ex['frame']), int(ex['face_index']))
          for ex in b.as_data_source('train')]


def test_default_records_and_skips(default):
  b = default
  assert b.builder_config.name == 'default'
  assert _rows(b) == [('clips/talk.mp4', 0, 0), ('holiday/astro.jpg', -1, 0),
                      ('holiday/group.jpg', -1, 0), ('holiday/mirror.png', -1, 0)]
  assert _skips(b) == {
      'no face found': 1,  # wall.jpg
      'unreadable image file': 1,  # broken.jpg (truncated)
      'not an image or video file': 1,  # notes.txt (.thumbnails/ is hidden: not even listed)
      'unreadable video file': 1,  # clips/empty.mp4 (zero bytes)
      'no face found (video frame)': 1}  # talk.mp4 frame 10
  # With a video present every record is in the table; the video's frames are consecutive.
  assert b.info.metadata['videos']['train'] == [
      ['clips/talk.mp4', 0, 1], ['holiday/astro.jpg', 1, 1], ['holiday/group.jpg', 2, 1],
      ['holiday/mirror.png', 3, 1]]


def test_custom_settings(custom):
  b = custom
  assert b.builder_config.name == 'stride5_min24_faces2'
  assert b.info.metadata['video_stride'] == 5 and b.info.metadata['max_faces'] == 2
  assert _rows(b) == [
      ('clips/talk.mp4', 0, 0), ('clips/talk.mp4', 5, 0), ('clips/talk.mp4', 15, 0),
      ('holiday/astro.jpg', -1, 0), ('holiday/group.jpg', -1, 0), ('holiday/group.jpg', -1, 1),
      ('holiday/mirror.png', -1, 0)]
  assert b.info.metadata['videos']['train'][:2] == [
      ['clips/talk.mp4', 0, 3], ['holiday/astro.jpg', 3, 1]]
  assert _skips(b)['no face found (video frame)'] == 1  # frame 10 (11 is not sampled)


def test_face_boxes_and_crops(custom):
  src = custom.as_data_source('train')
  seen = {}
  for ex in src:
    rel = ex['file'].decode()
    np.testing.assert_array_equal(ex['va_mask'], [0, 0])
    assert ex['emotion'] == -1 and ex['image'].shape == (ff.CROP.size, ff.CROP.size, 3)
    if rel in mk.FACES:  # Haar boxes vary ~10 % with scale around the mapped astronaut box
      want = mk.FACES[rel][int(ex['face_index'])]
      np.testing.assert_allclose(ex['face_box'], want, atol=0.15 * want[2])
      seen[rel] = seen.get(rel, 0) + 1
      img = ff.read_photo(os.path.join(DUMMY, rel))
      ref, _ = faces.crop_face(img, box=ex['face_box'], spec=ff.CROP)
      assert np.abs(ex['image'].astype(int) - ref.astype(int)).mean() < 3.0
    else:  # video frames: the face drifts 1 source px per frame to the left
      t = int(ex['frame'])
      _, want = mk.window(125 + t, 20, 190, 96)
      np.testing.assert_allclose(ex['face_box'], want, atol=0.15 * want[2])
  assert seen == {'holiday/astro.jpg': 1, 'holiday/group.jpg': 2, 'holiday/mirror.png': 1}


def test_images_only_folder_has_no_video_table(tmp_path):
  manual = tmp_path / 'photos'
  manual.mkdir()
  (manual / 'a.jpg').write_bytes(open(os.path.join(DUMMY, 'holiday', 'astro.jpg'), 'rb').read())
  b = build.build('face_folder', str(tmp_path / 'out'), manual_dir=str(manual), verbose=False)
  assert b.info.splits['train'].num_examples == 1
  assert b.info.metadata['videos'] == {'train': []}


def test_folder_without_media_is_a_clear_error(tmp_path):
  manual = tmp_path / 'docs'
  manual.mkdir()
  (manual / 'readme.txt').write_text('x')
  with pytest.raises(ValueError, match='no image or video files found'):
    build.build('face_folder', str(tmp_path / 'out'), manual_dir=str(manual), verbose=False)
