"""Builds celeba_faces from both dummy layouts; checks partition, attributes, crop and skips."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from tfds_builders.celeba_faces import celeba_faces_dataset_builder as cb
from tfds_builders.celeba_faces import make_dummy_data as mk
from vaflax import faces
from vaflax.data import build
from vaflax.data import builder_utils as bu

HERE = os.path.dirname(__file__)
LAYOUTS = {'official': 'dummy_data', 'kaggle': 'dummy_data_kaggle'}


@pytest.fixture(scope='module', params=sorted(LAYOUTS))
def built(request, tmp_path_factory):
  manual = os.path.join(HERE, LAYOUTS[request.param])
  b = build.build('celeba_faces', str(tmp_path_factory.mktemp(request.param)),
                  manual_dir=manual, verbose=False)
  return request.param, b


def _skips(b, split):
  return {r: s['count'] for r, s in b.info.metadata['skipped'][split].items()}


def test_partition_and_skips(built):
  layout, b = built
  assert {s: i.num_examples for s, i in b.info.splits.items()} == {
      'train': 3, 'validation': 2, 'test': 1}
  files = {s: [ex['file'].decode() for ex in b.as_data_source(s)] for s in cb.SPLITS}
  img_dir = 'CelebA/Img/img_align_celeba' if layout == 'official' else (
      'img_align_celeba/img_align_celeba')
  assert files == {
      'train': [f'{img_dir}/00000{i}.jpg' for i in (1, 2, 3)],
      'validation': [f'{img_dir}/00000{i}.jpg' for i in (4, 5)],
      'test': [f'{img_dir}/000009.jpg']}
  train = _skips(b, 'train')
  assert train.pop('bad annotation row') == 1  # 000006: 39 attribute values
  assert train.pop('unreadable image file') == 1  # 000007: truncated
  assert train == ({'bad partition row': 1} if layout == 'official' else {})
  assert _skips(b, 'validation') == {}
  assert _skips(b, 'test') == {'missing image file': 1}  # 000008
  assert b.info.metadata['videos'] == {'train': [], 'validation': [], 'test': []}


def test_labels_attributes_and_masks(built):
  _, b = built
  for split in cb.SPLITS:
    for ex in b.as_data_source(split):
      i = int(ex['video_id'].decode())
      assert ex['smiling'] == bool(i % 2)
      np.testing.assert_array_equal(ex['attributes'], np.array(mk.attributes(i)) > 0)
      np.testing.assert_array_equal(ex['va_mask'], [0, 0])
      assert ex['emotion'] == -1 and ex['landmarks_mask'] == 0 and ex['frame'] == -1
      np.testing.assert_array_equal(
          ex['bbox_wild'], [10 * i, 20 * i, 100 + i, 150 + i])
  assert b.info.metadata['attribute_names'][cb.SMILING] == 'Smiling'


def test_crop_follows_the_five_points(built):
  _, b = built
  for ex in b.as_data_source('train'):
    i = int(ex['video_id'].decode())
    img = ex['image']
    assert img.shape == (cb.CROP.size, cb.CROP.size, 3) and img.dtype == np.uint8
    # Independent reference: the landmarks the fixture drew, aligned to the template.
    _, five = mk.draw(i)
    ref = faces.aligned_frame(five, cb.CROP).to_crop(five)
    np.testing.assert_allclose(ex['landmarks5'], ref, atol=1e-5)
    # Eyes and mouth centre land near the template's places (4 points, 4 parameters).
    want = (faces.TEMPLATES['haar_frame'] + cb.CROP.margin) / (1 + 2 * cb.CROP.margin)
    np.testing.assert_allclose(faces.keypoints(ex['landmarks5']), want, atol=0.05)
    assert (ex['landmarks5'] > 0.1).all() and (ex['landmarks5'] < 0.9).all()
    # The eyes sit above the mouth and left/right are kept.
    lm = ex['landmarks5']
    assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0] and lm[0, 1] < lm[3, 1]
    # The green marker drawn on the nose tip lands on the nose landmark in the crop.
    x, y = np.round(lm[2] * cb.CROP.size).astype(int)
    px = img[y - 2 : y + 3, x - 2 : x + 3].reshape(-1, 3).astype(int).mean(0)
    assert px[1] > 180 and px[0] < 90 and px[2] < 90, (i, px)


def test_crop_pixels_match_crop_face(built):
  layout, b = built
  ex = b.as_data_source('validation')[0]
  root = os.path.join(HERE, LAYOUTS[layout])
  src = bu.read_image(os.path.join(root, ex['file'].decode()))
  _, five = mk.draw(int(ex['video_id'].decode()))
  want, _ = faces.crop_face(src, landmarks=five, spec=cb.CROP)
  got = np.asarray(Image.open(io.BytesIO(bu.encode_image(want))))  # same JPEG round trip
  assert np.abs(ex['image'].astype(int) - got.astype(int)).mean() < 1.0


def test_missing_lists_give_a_clear_error(tmp_path):
  os.makedirs(tmp_path / 'CelebA' / 'Anno')
  (tmp_path / 'CelebA' / 'Anno' / 'list_attr_celeba.txt').write_text('0\n')
  with pytest.raises(bu.BadInputError, match='list_eval_partition'):
    build.build('celeba_faces', str(tmp_path / 'out'), manual_dir=str(tmp_path), verbose=False)
