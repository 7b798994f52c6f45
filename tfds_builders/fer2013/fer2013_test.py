"""Builds fer2013 from both dummy layouts and checks pixels, labels, derived VA, FER+ and skips."""

import csv
import os

import numpy as np
import pytest

from tfds_builders.fer2013 import fer2013_dataset_builder as fer
from vaflax import circumplex
from vaflax.data import build

HERE = os.path.dirname(__file__)


@pytest.fixture(scope='module')
def builder(tmp_path_factory):
  return build.build('fer2013', str(tmp_path_factory.mktemp('fer')),
                     manual_dir=os.path.join(HERE, 'dummy_data'), verbose=False)


def _csv_images(path):
  """Row index -> 48x48 uint8 image, parsed here independently of the builder."""
  with open(path, newline='') as f:
    rows = list(csv.reader(f))[1:]
  out = {}
  for i, r in enumerate(rows):
    vals = r[1].split()
    if len(vals) == 2304 and max(map(int, vals)) <= 255:
      out[i] = np.array(vals, np.uint8).reshape(48, 48)
  return out


def test_splits_skips_and_table(builder):
  b = builder
  assert {s: i.num_examples for s, i in b.info.splits.items()} == {
      'train': 5, 'validation': 2, 'test': 2}
  assert b.info.metadata['ferplus'] is True
  skipped = {r: s['count'] for r, s in b.info.metadata['skipped']['train'].items()}
  assert skipped == {
      "emotion '7' not in 0..6: emotion -1, FER+ votes kept": 1,
      'pixel value outside 0..255': 1,
      'pixels has 2303 values, expected 2304': 1,
      'row has 2 fields, header has 3': 1,
      "unknown Usage 'Bogus' (expected Training, PublicTest, PrivateTest)": 1,
  }
  assert b.info.metadata['skipped']['validation'] == {}
  assert b.info.metadata['videos']['test'] == [['fer0000011', 0, 1], ['fer0000012', 1, 1]]


def test_pixels_labels_and_derived_va(builder):
  images = _csv_images(os.path.join(HERE, 'dummy_data', 'fer2013', 'fer2013.csv'))
  names = builder.info.metadata['emotion_names']
  seen = 0
  for split, rows in (('train', [0, 1, 2, 3, 4]), ('validation', [9, 10]), ('test', [11, 12])):
    ds = builder.as_data_source(split)
    for rec, row in enumerate(rows):
      ex = ds[rec]
      assert ex['video_id'] == f'fer{row:07d}'.encode() and ex['frame'] == -1
      # Lossless: the grey values of the csv in all three channels.
      np.testing.assert_array_equal(ex['image'], np.repeat(images[row][..., None], 3, -1))
      if ex['emotion'] >= 0:
        v, a = circumplex.EMOTION_VA[circumplex.canonical_emotion(names[ex['emotion']])]
        assert (ex['valence'], ex['arousal']) == pytest.approx((v, a))
        assert ex['va_derived'] and ex['va_mask'].tolist() == [1, 1]
      seen += 1
  assert seen == 9
  train = builder.as_data_source('train')
  assert [int(train[i]['emotion']) for i in range(5)] == [0, 3, 6, 4, -1]
  assert (train[0]['valence'], train[0]['arousal']) == pytest.approx((-0.51, 0.59))  # angry
  assert train[4]['va_mask'].tolist() == [0, 0] and not train[4]['va_derived']


def test_ferplus_votes_and_majority(builder):
  train = builder.as_data_source('train')
  np.testing.assert_array_equal(train[1]['ferplus_votes'], [5, 4, 1, 0, 0, 0, 0, 0, 0, 0])
  # anger 9/10; neutral 5 of 9 once the single vote is dropped; a 5/5 tie; not a face;
  # surprise 8/10 on the row whose FER2013 code is invalid.
  assert [int(train[i]['ferplus_emotion']) for i in range(5)] == [4, 0, -1, -1, 2]
  test = builder.as_data_source('test')
  assert [int(test[i]['ferplus_emotion']) for i in range(2)] == [3, -1]  # 'unknown' wins
  assert fer.ferplus_majority([5, 5, 0, 0, 0, 0, 0, 0, 0, 0]) == -1
  assert fer.ferplus_majority([0, 0, 0, 0, 0, 0, 0, 6, 0, 4]) == 7  # contempt 6 of 10


def test_icml_layout_with_spaced_column_names(tmp_path):
  b = build.build('fer2013', str(tmp_path), manual_dir=os.path.join(HERE, 'dummy_data_icml'),
                  verbose=False)
  assert {s: i.num_examples for s, i in b.info.splits.items()} == {
      'train': 1, 'validation': 1, 'test': 1}
  assert b.info.metadata['ferplus'] is False
  ex = b.as_data_source('validation')[0]
  assert ex['emotion'] == 0 and ex['ferplus_emotion'] == -1 and not ex['ferplus_votes'].any()
  with open(os.path.join(HERE, 'dummy_data_icml', 'icml_face_data.csv'), newline='') as f:
    pixels = list(csv.reader(f))[2][2]
  np.testing.assert_array_equal(ex['image'][..., 1], np.array(pixels.split(), np.uint8).reshape(48, 48))


def test_misaligned_ferplus_is_an_error(tmp_path):
  manual = tmp_path / 'm'
  manual.mkdir()
  src = os.path.join(HERE, 'dummy_data')
  (manual / 'fer2013.csv').write_text(open(os.path.join(src, 'fer2013', 'fer2013.csv')).read())
  lines = open(os.path.join(src, 'FERPlus', 'fer2013new.csv')).read().splitlines(True)
  (manual / 'fer2013new.csv').write_text(''.join(lines[:1] + lines[2:]))  # one row lost
  with pytest.raises(ValueError, match='fer2013new.csv'):
    build.build('fer2013', str(tmp_path / 'd'), manual_dir=str(manual), verbose=False)
