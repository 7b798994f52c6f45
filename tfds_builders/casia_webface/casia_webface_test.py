"""Builds casia_webface from dummy_data/; checks identities, crop boxes, fallback and errors."""

import os

import numpy as np
import pytest

from tfds_builders.casia_webface import casia_webface_dataset_builder as cw
from tfds_builders.casia_webface import make_dummy_data as mk
from vaflax import faces
from vaflax.data import build
from vaflax.data import builder_utils as bu

HERE = os.path.dirname(__file__)


@pytest.fixture(scope='module')
def builder(tmp_path_factory):
  return build.build('casia_webface', str(tmp_path_factory.mktemp('casia')),
                     manual_dir=os.path.join(HERE, 'dummy_data'), verbose=False)


def test_counts_identities_and_skips(builder):
  b = builder
  src = b.as_data_source('train')
  assert list(b.info.splits) == ['train'] and len(src) == 5
  rows = [(ex['file'].decode(), ex['identity'].decode(), int(ex['identity_index']))
          for ex in src]
  assert rows == [
      ('CASIA-WebFace/0000045/001.jpg', '0000045', 0),
      ('CASIA-WebFace/0000045/002.jpg', '0000045', 0),
      ('CASIA-WebFace/0000099/001.jpg', '0000099', 1),
      ('CASIA-WebFace/0000099/002.jpg', '0000099', 1),
      ('CASIA-WebFace/0000100/001.jpg', '0000100', 2)]
  skipped = {r: s['count'] for r, s in b.info.metadata['skipped']['train'].items()}
  assert skipped == {'not an image file': 1, 'unreadable image file': 1}
  assert b.info.metadata['num_identities'] == 3
  assert b.info.metadata['fallback_crops'] == 1
  assert b.info.metadata['videos'] == {'train': []}


def test_no_va_labels(builder):
  for ex in builder.as_data_source('train'):
    np.testing.assert_array_equal(ex['va_mask'], [0, 0])
    assert ex['emotion'] == -1 and ex['frame'] == -1 and ex['video_id'] == ex['identity']


def test_crop_boxes(builder):
  for ex in builder.as_data_source('train'):
    rel = ex['file'].decode().split('/', 1)[1]
    assert ex['image'].shape == (cw.CROP.size, cw.CROP.size, 3)
    if rel in mk.FACES:
      # The astronaut's face, where the fixture put it (Haar boxes vary ~10 % with scale).
      assert ex['face_detected']
      x, y, w, h = mk.FACES[rel]
      np.testing.assert_allclose(ex['face_box'], (x, y, w, h), atol=0.12 * w)
    else:  # the gradient image: centred fallback box, side 100 / 2.2
      assert not ex['face_detected']
      side = mk.SIZE / 2.2
      np.testing.assert_allclose(ex['face_box'], ((100 - side) / 2,) * 2 + (side, side),
                                 atol=1e-4)
    # The stored crop is crop_face on that box (up to JPEG).
    src = bu.read_image(os.path.join(HERE, 'dummy_data', ex['file'].decode()))
    want, _ = faces.crop_face(src, box=ex['face_box'], spec=cw.CROP)
    assert np.abs(ex['image'].astype(int) - want.astype(int)).mean() < 3.0


def test_choose_face_prefers_the_central_large_one():
  dets = [(0, 0, 60, 60, 9), (70, 70, 50, 50, 5), (95, 95, 10, 10, 3)]
  # The 10 px box is nearest the centre but too small; of the two large ones the second is central.
  assert cw.choose_face(dets, 200, 200) == dets[1]


def test_record_file_layout_is_refused_clearly(tmp_path):
  with pytest.raises(bu.BadInputError) as e:
    build.build('casia_webface', str(tmp_path), manual_dir=os.path.join(HERE, 'dummy_data_record'),
                verbose=False)
  msg = str(e.value)
  assert 'faces_webface_112x112/train.rec' in msg and 'MXNet RecordIO' in msg
  assert '<identity>/<image>.jpg' in msg and 'rec2image' in msg
