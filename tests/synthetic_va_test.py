"""synthetic_va_large: synthetic_va's splits with 4x the training clips, the first ones equal."""

import itertools

import numpy as np

from vaflax.data import build


def _first_clip(builder, split):
  n = 24  # FRAMES_PER_CLIP
  return [ex for _, ex in itertools.islice(builder._generate_examples(split), n)]


def test_large_has_4x_train_clips_and_the_default_validation_and_test(tmp_path):
  base = build.make_builder('synthetic_va', str(tmp_path))
  large = build.make_builder('synthetic_va_large', str(tmp_path))
  assert base.SPLITS == {'train': (160, 0), 'validation': (24, 100_000), 'test': (24, 200_000)}
  assert large.SPLITS == {'train': (640, 0), 'validation': (24, 100_000), 'test': (24, 200_000)}
  assert large.data_dir != base.data_dir  # built side by side, the default set stays as it is
  for split in ('train', 'validation'):
    a, b = _first_clip(base, split), _first_clip(large, split)
    assert len(a) == len(b) == 24
    for x, y in zip(a, b, strict=True):
      assert x['image'] == y['image'] and x['file'] == y['file']
      np.testing.assert_array_equal(x['audio'], y['audio'])
      assert (x['valence'], x['arousal']) == (y['valence'], y['arousal'])
