"""Builds afew_va from dummy_data/ (parts and flat layouts) and checks labels, crops and skips."""

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from tfds_builders.afew_va import afew_va_dataset_builder as afew
from vaflax import faces
from vaflax.data import build

DUMMY = os.path.join(os.path.dirname(__file__), 'dummy_data')
KAGGLE = 'Kaggle *_cropped duplicate folder ignored (not in the official release)'


@pytest.fixture(scope='module')
def parts(tmp_path_factory):
  return build.build('afew_va', str(tmp_path_factory.mktemp('afew_parts')),
                     manual_dir=os.path.join(DUMMY, 'parts'), verbose=False)


def _skips(b, split):
  return {r: s['count'] for r, s in b.info.metadata['skipped'][split].items()}


def _json(clip):
  part = '01' if clip in ('001', '002') else '02'
  with open(os.path.join(DUMMY, 'parts', 'AFEW-VA', part, clip, f'{clip}.json')) as f:
    return json.load(f)


def test_pseudo_split_is_the_documented_actor_hash(parts):
  for clip, split in (('001', 'train'), ('002', 'validation'), ('051', 'test')):
    key = _json(clip)['actor'].strip().lower()
    bucket = int(hashlib.sha1(key.encode()).hexdigest(), 16) % 10
    assert {**dict.fromkeys(range(6), 'train'), 6: 'validation', 7: 'validation',
            8: 'test', 9: 'test'}[bucket] == split
    assert parts.info.metadata['clip_splits'][clip] == split


def test_counts_video_table_and_skips(parts):
  b = parts
  assert {s: i.num_examples for s, i in b.info.splits.items()} == {
      'train': 4, 'validation': 3, 'test': 2}
  videos = b.info.metadata['videos']
  assert videos == {'train': [['001', 0, 4]], 'validation': [['002', 0, 3]],
                    'test': [['051', 0, 2]]}
  assert _skips(b, 'train') == {KAGGLE: 1, 'clip folder without 052.json annotation': 1}
  val = _skips(b, 'validation')
  truncated = [k for k in val if k.startswith('unreadable or truncated image')]
  assert len(truncated) == 1 and val.pop(truncated[0]) == 1
  assert val == {
      'annotated frame image missing': 1,
      'arousal missing or outside [-10, 10]: masked, frame kept': 1,
      'valence missing or outside [-10, 10]: masked, frame kept': 1,
  }
  assert _skips(b, 'test') == {
      KAGGLE: 1, 'frame image without annotation': 1,
      'landmarks missing or not 68 finite (x, y) points: no face box': 1}


def test_labels_scaled_and_masked(parts):
  tr = parts.as_data_source('train')
  got = [(tr[i]['valence_raw'], tr[i]['arousal_raw'], tr[i]['valence'], tr[i]['arousal'])
         for i in range(4)]
  np.testing.assert_allclose(got, [(-2, 3, -0.2, 0.3), (-1, 4, -0.1, 0.4), (0, 5, 0, 0.5),
                                   (7, -10, 0.7, -1.0)], atol=1e-6)
  assert [int(tr[i]['frame']) for i in range(4)] == [0, 1, 2, 3]
  assert tr[0]['video_id'] == b'001' and tr[0]['file'] == b'AFEW-VA/01/001/00000.png'
  assert not tr[0]['va_derived'] and tr[0]['emotion'] == -1
  va = parts.as_data_source('validation')
  assert [int(va[i]['frame']) for i in range(3)] == [0, 3, 4]
  np.testing.assert_array_equal([va[i]['va_mask'] for i in range(3)], [[1, 1], [0, 1], [1, 0]])
  # Masked dimensions: value 0, raw NaN; the other dimension keeps its label.
  assert va[1]['valence'] == 0 and np.isnan(va[1]['valence_raw'])
  assert va[1]['arousal'] == pytest.approx(-0.3)
  assert va[2]['arousal'] == 0 and np.isnan(va[2]['arousal_raw'])
  assert va[2]['valence'] == pytest.approx(-0.6)


def test_crop_follows_landmarks(parts):
  tr = parts.as_data_source('train')
  ann = _json('001')['frames']
  for i in range(4):
    ex = tr[i]
    img = np.asarray(ex['image'])
    assert img.shape == (256, 256, 3)
    lm = ex['landmarks']
    assert ex['landmarks_mask'] == 1 and lm.shape == (68, 2)
    # The crop is aligned on the landmarks' keypoints (eye centres, nose tip, mouth centre):
    # the landmarks are the source ones through that similarity, and the keypoints sit near the
    # template (4 points, 4 parameters: close, not exact).
    src = np.asarray(ann[f'{i:05d}']['landmarks'])
    np.testing.assert_allclose(lm, faces.aligned_frame(src, afew.CROP).to_crop(src), atol=1e-4)
    want = (faces.TEMPLATES['haar_frame'] + afew.CROP.margin) / (1 + 2 * afew.CROP.margin)
    np.testing.assert_allclose(faces.keypoints(lm), want, atol=0.05)
    # The blue marker drawn on the nose tip (landmark 30) lands under the mapped landmark.
    x, y = np.round(lm[30] * 256).astype(int)
    r, g, b = img[y - 2 : y + 3, x - 2 : x + 3].reshape(-1, 3).mean(0)
    assert b > 150 and r < 90 and g < 90, (i, r, g, b)
  # Frame 3 has the face 20 px outside the left border: the crop is zero-padded there.
  img3 = np.asarray(tr[3]['image'])
  assert img3[:, :20].max() == 0 and img3[:, 128:].mean() > 20


def test_flat_layout(tmp_path):
  b = build.build('afew_va', str(tmp_path), manual_dir=os.path.join(DUMMY, 'flat'), verbose=False)
  assert {s: i.num_examples for s, i in b.info.splits.items()} == {
      'train': 2, 'validation': 2, 'test': 2}
  assert b.info.metadata['videos']['validation'] == [['102', 0, 2]]
  ex = b.as_data_source('test')[1]
  assert ex['file'] == b'103/00001.png' and ex['valence'] == pytest.approx(0.2)
  assert ex['arousal'] == pytest.approx(-0.2)
  assert all(not v for v in b.info.metadata['skipped'].values())


def test_missing_annotations_is_an_error(tmp_path):
  empty = tmp_path / 'm'
  (empty / 'AFEW-VA' / '01').mkdir(parents=True)
  (empty / 'AFEW-VA' / 'readme.txt').write_text('nothing')
  with pytest.raises(ValueError, match='no AFEW-VA clip folder'):
    build.build('afew_va', str(tmp_path / 'd'), manual_dir=str(empty), verbose=False)


def test_partial_download_builds_what_is_there(tmp_path):
  """Only part 01 extracted (clips 001 train, 002 validation): test is empty, a warning and a
  summary line name it with the split rule; the other splits build."""
  shutil.copytree(os.path.join(DUMMY, 'parts', 'AFEW-VA', '01'), tmp_path / 'm' / 'AFEW-VA' / '01')
  b = build.build('afew_va', str(tmp_path / 'd'), manual_dir=str(tmp_path / 'm'), verbose=False)
  assert sorted(b.info.splits) == ['train', 'validation']
  rule = b.info.metadata['split_rule']
  assert b.info.metadata['empty_splits'] == {'test': rule}
  assert f'test             EMPTY: nothing under manual_dir falls in it (split rule: {rule})' in (
      build.summary(b))
  assert b.info.metadata['crop'] == afew.CROP.to_dict()
  # Nothing usable at all (a clip whose only frame lacks its image) is an error.
  clip = tmp_path / 'e' / '002'
  clip.mkdir(parents=True)
  (clip / '002.json').write_text(json.dumps({'actor': 'x', 'frames': {'0': {'valence': 1}}}))
  with pytest.raises(ValueError, match=r"no usable example in any split \(train, validation, test"):
    build.build('afew_va', str(tmp_path / 'd2'), manual_dir=str(tmp_path / 'e'), verbose=False)
