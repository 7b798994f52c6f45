"""Builds imdb_wiki from dummy_data/ (faces-only layout): filters, crop boxes, ages, configs."""

import datetime
import os

import numpy as np
import pytest

from tfds_builders.imdb_wiki import imdb_wiki_dataset_builder as iw
from tfds_builders.imdb_wiki import make_dummy_data as mk
from vaflax import faces
from vaflax.data import build
from vaflax.data import builder_utils as bu

DUMMY = os.path.join(os.path.dirname(__file__), 'dummy_data')
KEPT = [  # (file, fixture original, gender, name, celeb_id)
    ('imdb_crop/01/nm0000001_rm124825600_1899-5-10_1968.jpg', mk.O3, 1, 'Fred Astaire', 1),
    ('imdb_crop/02/nm0000002_rm1346607872_1924-9-16_2004.jpg', mk.O1, -1, '', 2),
    ('wiki_crop/17/10000217_1981-05-05_2009.jpg', mk.O1, 1, 'A', -1),
    ('wiki_crop/41/10003541_1937-09-27_1971.jpg', mk.O2, 1, 'F', -1),
]


@pytest.fixture(scope='module')
def builder(tmp_path_factory):
  return build.build('imdb_wiki', str(tmp_path_factory.mktemp('iw')), manual_dir=DUMMY,
                     verbose=False)


def _skips(b):
  return {r: s['count'] for r, s in b.info.metadata['skipped']['train'].items()}


def test_kept_and_skipped(builder):
  b = builder
  assert b.builder_config.name == 'default' and b.info.metadata['min_face_score'] == 1.0
  src = b.as_data_source('train')
  assert [ex['file'].decode() for ex in src] == [k[0] for k in KEPT]
  assert _skips(b) == {
      'no face (face_score -inf)': 1, 'below face-score threshold 1': 1, 'second face': 1,
      'missing image file': 1, 'unreadable image file': 1, 'bad face_location': 1}
  assert b.info.metadata['videos'] == {'train': []}


def test_features(builder):
  for ex, (_, _, gender, name, cid) in zip(builder.as_data_source('train'), KEPT, strict=True):
    assert ex['gender'] == gender and ex['name'].decode() == name and ex['celeb_id'] == cid
    np.testing.assert_array_equal(ex['va_mask'], [0, 0])
    assert ex['emotion'] == -1 and np.isnan(ex['valence_raw'])
    assert np.isnan(ex['second_face_score']) and ex['face_score'] >= 1.0
  ex = builder.as_data_source('train')[2]  # wiki 1981-05-05, photo 2009
  want = (datetime.date(2009, 7, 1) - datetime.date(1981, 5, 5)).days / 365.2425
  assert ex['age'] == pytest.approx(want, abs=1e-4)


def test_crop_box_against_face_location(builder):
  for ex, (rel, (orig, box), *_) in zip(builder.as_data_source('train'), KEPT, strict=True):
    # Where the fixture's crop put the face_location box (the 40 % margin, clipped).
    _, want = mk.crop_release(orig, box)
    np.testing.assert_allclose(ex['face_box'], want, atol=1.0)
    img = bu.read_image(os.path.join(DUMMY, rel))
    ref, _ = faces.crop_face(img, box=ex['face_box'], spec=iw.CROP)
    assert np.abs(ex['image'].astype(int) - ref.astype(int)).mean() < 3.0
    # The green marker drawn at the face centre lands at the crop centre.
    c = iw.CROP.size // 2
    px = ex['image'][c - 3 : c + 4, c - 3 : c + 4].reshape(-1, 3).astype(int).mean(0)
    assert px[1] > 170 and px[0] < 110 and px[2] < 110, (rel, px)
  # The cut-at-the-border case really is one: its face is less than 0.4 w from the left edge.
  assert mk.crop_release(*mk.O2)[1][0] < iw.CROP_RELEASE_MARGIN * mk.O2[1][2]


def test_face_box_rules():
  assert iw.face_box([11, 21, 50, 80], 'full') == (10, 20, 40, 60)
  assert iw.face_box([101, 21, 140, 80], 'crop') == (16, 20, 40, 60)  # min(100, 16), min(20, 24)
  assert iw.box_inside((0, 0, 40, 40), 40, 40) and not iw.box_inside((30, 0, 40, 40), 40, 40)


def test_threshold_as_constructor_argument(tmp_path):
  b = build.build('imdb_wiki', str(tmp_path), manual_dir=DUMMY, verbose=False,
                  min_face_score=0.4)
  assert b.builder_config.name == 'min_score_0p4' and b.info.metadata['min_face_score'] == 0.4
  files = [ex['file'].decode() for ex in b.as_data_source('train')]
  assert len(files) == 5 and 'wiki_crop/12/100012_1948-07-03_2008.jpg' in files
  assert 'below face-score threshold 0.4' not in _skips(b)
  with pytest.raises(ValueError, match='either config'):
    build.make_builder('imdb_wiki', str(tmp_path), min_face_score=2.0, config='default')


def test_missing_mat_is_a_clear_error(tmp_path):
  (tmp_path / 'imdb_crop' / '00').mkdir(parents=True)
  (tmp_path / 'imdb_crop' / '00' / 'x.jpg').write_bytes(b'')
  with pytest.raises(bu.BadInputError, match='imdb_crop/imdb.mat'):
    build.build('imdb_wiki', str(tmp_path / 'out'), manual_dir=str(tmp_path), verbose=False)
