"""Builds affectnet from dummy_data/ (csv and npy releases) and checks labels, crops and skips."""

import csv
import os
import shutil

import numpy as np
import pytest

from tfds_builders.affectnet import affectnet_dataset_builder as an
from vaflax import faces
from vaflax.data import build

DUMMY = os.path.join(os.path.dirname(__file__), 'dummy_data')
MARKED = 'valence/arousal -2 (not annotated): masked, image kept'


@pytest.fixture(scope='module')
def csv_build(tmp_path_factory):
  return build.build('affectnet', str(tmp_path_factory.mktemp('affectnet_csv')),
                     manual_dir=os.path.join(DUMMY, 'csv'), verbose=False)


@pytest.fixture(scope='module')
def npy_build(tmp_path_factory):
  return build.build('affectnet', str(tmp_path_factory.mktemp('affectnet_npy')),
                     manual_dir=os.path.join(DUMMY, 'npy'), verbose=False)


def _skips(b, split):
  return {r: s['count'] for r, s in b.info.metadata['skipped'][split].items()}


def _rows(name):
  with open(os.path.join(DUMMY, 'csv', 'Manually_Annotated_file_lists', name)) as f:
    return list(csv.reader(f))


def _red_at(img, xy, r=3):
  x, y = np.round(np.asarray(xy) * img.shape[0]).astype(int)
  red, g, b = img[y - r : y + r + 1, x - r : x + r + 1].reshape(-1, 3).mean(0)
  return red > 150 and g < 90 and b < 90


def test_csv_counts_and_skips(csv_build):
  b = csv_build
  assert {s: i.num_examples for s, i in b.info.splits.items()} == {'train': 8, 'validation': 2}
  assert b.info.metadata['release'] == 'csv'
  assert b.info.metadata['emotion_names'] == [
      'neutral', 'happy', 'sad', 'surprise', 'fear', 'disgust', 'anger', 'contempt']
  assert b.info.metadata['expression_names'][8:] == ['none', 'uncertain', 'no-face']
  # Still images: no video table (the pipeline treats each record as its own "video").
  assert b.info.metadata['videos'] == {'train': [], 'validation': []}
  tr = _skips(b, 'train')
  truncated = [k for k in tr if k.startswith('unreadable or truncated image')]
  assert len(truncated) == 1 and tr.pop(truncated[0]) == 1
  assert tr == {
      'image file missing': 1,
      'landmarks not 136 numbers: landmarks_mask 0, image kept': 1,
      'no label (expression 10 no-face, no valid valence/arousal)': 1,
      'no label (expression 9 uncertain, no valid valence/arousal)': 1,
      'row has 7 fields, expected 9': 1,
      'valence not a number in [-1, 1] nor -2: masked': 1,
      MARKED: 1,
      'face box invalid: cropped from the landmarks instead': 1,
      "expression 'x' not in 0..10: emotion -1": 1,
  }
  assert _skips(b, 'validation') == {}


def test_csv_labels(csv_build):
  tr = csv_build.as_data_source('train')
  rows = _rows('training.csv')
  # Kept rows: 1 happy, 2 contempt, 3 None (8), 6 sad with valence -2, 10 anger with valence 1.5,
  # 11 fear with bad landmarks, 12 surprise with a zero-size box, 13 expression 'x'.
  kept = [rows[i] for i in (1, 2, 3, 6, 10, 11, 12, 13)]
  exp = [(1, 1), (7, 7), (8, -1), (2, 2), (6, 6), (4, 4), (3, 3), (-1, -1)]
  masks = [[1, 1], [1, 1], [1, 1], [0, 1], [0, 1], [1, 1], [1, 1], [1, 1]]
  for i, (row, (code, emo), mask) in enumerate(zip(kept, exp, masks, strict=True)):
    ex = tr[i]
    assert (int(ex['expression']), int(ex['emotion'])) == (code, emo)
    np.testing.assert_array_equal(ex['va_mask'], mask)
    v, a = float(row[7]), float(row[8])
    assert ex['arousal'] == pytest.approx(a) and ex['arousal_raw'] == pytest.approx(a)
    if mask[0]:
      assert ex['valence'] == pytest.approx(v) and ex['valence_raw'] == pytest.approx(v)
    else:
      assert ex['valence'] == 0 and np.isnan(ex['valence_raw'])
    assert ex['file'].decode() == 'Manually_Annotated/Manually_Annotated_Images/' + row[0]
    assert ex['frame'] == -1 and not ex['va_derived']
  val = csv_build.as_data_source('validation')  # validation.csv has no header row
  assert [(int(val[i]['emotion']), float(val[i]['arousal'])) for i in range(2)] == [
      (0, 0.0), (3, pytest.approx(0.7))]


def test_csv_crop_aligned_on_landmarks(csv_build):
  tr = csv_build.as_data_source('train')
  row = _rows('training.csv')[1]
  src = np.asarray([float(v) for v in row[5].split(';')]).reshape(68, 2)
  # Aligned on the 68 landmarks' keypoints: the stored landmarks are the source ones through
  # that similarity, and the keypoints sit near the template.
  ex = tr[0]
  np.testing.assert_allclose(ex['landmarks'], faces.aligned_frame(src, an.CROP).to_crop(src),
                             atol=1e-4)
  want = (faces.TEMPLATES['haar_frame'] + an.CROP.margin) / (1 + 2 * an.CROP.margin)
  np.testing.assert_allclose(faces.keypoints(ex['landmarks']), want, atol=0.05)
  assert ex['landmarks_mask'] == 1
  img = np.asarray(ex['image'])
  assert img.shape == (256, 256, 3) and _red_at(img, ex['landmarks'][30])
  assert tr[5]['landmarks_mask'] == 0 and not tr[5]['landmarks'].any()  # no landmarks: box crop
  # Zero-size box, landmarks given: aligned as well.
  lm = tr[6]['landmarks']
  np.testing.assert_allclose(faces.keypoints(lm), want, atol=0.05)
  assert _red_at(np.asarray(tr[6]['image']), lm[30])


def test_npy_release(npy_build):
  b = npy_build
  assert b.info.metadata['release'] == 'npy'
  assert {s: i.num_examples for s, i in b.info.splits.items()} == {'train': 4, 'validation': 1}
  tr = _skips(b, 'train')
  truncated = [k for k in tr if k.startswith('unreadable or truncated image')]
  assert len(truncated) == 1 and tr.pop(truncated[0]) == 1
  assert tr == {'no annotation file (<id>_exp/_val/_aro.npy)': 1, MARKED: 1}
  ds = b.as_data_source('train')
  # Numeric order of ids: 0 (values stored as strings), 1 (valence -2), 4 (64x48), 10.
  assert [ds[i]['file'].decode().rsplit('/', 1)[1] for i in range(4)] == [
      '0.jpg', '1.jpg', '4.jpg', '10.jpg']
  got = [(int(ds[i]['emotion']), float(ds[i]['valence']), float(ds[i]['arousal'])) for i in
         range(4)]
  np.testing.assert_allclose(got, [(1, 0.5, 0.25), (3, 0.0, 0.3), (0, 0.1, -0.1), (5, -0.6, 0.4)],
                             atol=1e-6)
  np.testing.assert_array_equal(ds[1]['va_mask'], [0, 1])
  # With landmarks: aligned on them, as the csv release; the marker is under the nose tip.
  lnd = np.load(os.path.join(DUMMY, 'npy', 'AffectNet', 'train_set', 'annotations', '0_lnd.npy'))
  src = lnd.reshape(68, 2).astype(np.float64)
  np.testing.assert_allclose(ds[0]['landmarks'], faces.aligned_frame(src, an.CROP).to_crop(src),
                             atol=1e-4)
  assert _red_at(np.asarray(ds[0]['image']), ds[0]['landmarks'][30])
  # 64x48 without landmarks: squared with 8 zero rows above and below (32 px at 256).
  img = np.asarray(ds[2]['image'])
  assert ds[2]['landmarks_mask'] == 0
  assert img[:28].max() < 8 and img[-28:].max() < 8 and img[40:216].mean() > 30


def test_csv_release_wins_when_both_present(tmp_path):
  m = tmp_path / 'm'
  shutil.copytree(os.path.join(DUMMY, 'csv'), m / 'original')
  shutil.copytree(os.path.join(DUMMY, 'npy'), m / 'newer')
  b = build.build('affectnet', str(tmp_path / 'd'), manual_dir=str(m), verbose=False)
  assert b.info.metadata['release'] == 'csv' and b.info.splits['train'].num_examples == 8


def test_nothing_found_is_an_error(tmp_path):
  (tmp_path / 'm').mkdir()
  (tmp_path / 'm' / 'notes.txt').write_text('x')
  with pytest.raises(ValueError, match='training.csv/validation.csv'):
    build.build('affectnet', str(tmp_path / 'd'), manual_dir=str(tmp_path / 'm'), verbose=False)
