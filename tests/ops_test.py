import numpy as np
import pytest

from vaflax import faces
from vaflax.data import ops


def _example(h=40, w=40, x=30, y=10):
  img = np.zeros((h, w, 3), np.uint8)
  img[y, x] = 255  # a marker pixel; every landmark sits on its centre
  lm = np.tile(np.array([[(x + 0.5) / w, (y + 0.5) / h]], np.float32), (68, 1))
  return {'image': img, 'landmarks': lm}


def test_parse_literals_and_templates():
  assert ops.parse('resize({image_size})|flip_lr(p=0.5)|value_range(-1, 1)', image_size=64) == [
      ('resize', (64,), {}), ('flip_lr', (), {'p': 0.5}), ('value_range', (-1, 1), {})]
  with pytest.raises(ValueError, match='unknown preprocessing op'):
    ops.parse('nope(1)')
  with pytest.raises(ValueError, match='literals'):
    ops.parse('resize(__import__("os").getcwd())')


def test_value_range_and_resize():
  f = ops.build('resize(20)|value_range(-1, 1)')
  ex = f({'image': np.full((40, 40, 3), 255, np.uint8)}, np.random.default_rng(0))
  assert ex['image'].shape == (20, 20, 3) and ex['image'].dtype == np.float32
  np.testing.assert_allclose(ex['image'], 1.0)
  ex = f({'image': np.zeros((3, 40, 40, 3), np.uint8)}, np.random.default_rng(0))  # a window
  assert ex['image'].shape == (3, 20, 20, 3) and np.all(ex['image'] == -1.0)


def test_flip_moves_pixels_and_landmarks():
  ex = ops.build('flip_lr(1.0)')(_example(), np.random.default_rng(0))
  assert ex['image'][10, 40 - 1 - 30].max() == 255
  lm_px = ex['landmarks'] * 40
  # Landmark 36 (left eye corner) now holds the mirrored position of old landmark 45.
  np.testing.assert_allclose(lm_px[36], [40 - 30.5, 10.5], atol=1e-4)
  np.testing.assert_array_equal(faces.flip_landmarks(faces.flip_landmarks(ex['landmarks'])),
                                ex['landmarks'])


def test_center_crop_keeps_landmarks_on_marker():
  ex = ops.build('center_crop(0.5)')(_example(x=25, y=15), np.random.default_rng(0))
  assert ex['image'].shape == (20, 20, 3)
  y, x = np.argwhere(ex['image'][..., 0] == 255)[0]
  np.testing.assert_allclose(ex['landmarks'][0] * 20, [x + 0.5, y + 0.5], atol=1e-4)


def test_random_crop_is_deterministic_and_tracks_marker():
  f = ops.build('random_crop(0.6, 0.9)')
  a = f(_example(), np.random.default_rng(3))
  b = f(_example(), np.random.default_rng(3))
  np.testing.assert_array_equal(a['image'], b['image'])
  side = a['image'].shape[0]
  hits = np.argwhere(a['image'][..., 0] == 255)
  if len(hits):  # the marker survived the crop: landmarks point at it
    y, x = hits[0]
    np.testing.assert_allclose(a['landmarks'][0] * side, [x + 0.5, y + 0.5], atol=1e-3)


def test_random_ops_share_parameters_across_a_window():
  win = {'image': np.stack([np.arange(40 * 40 * 3, dtype=np.uint8).reshape(40, 40, 3)] * 4)}
  ex = ops.build('random_crop(0.5, 0.9)|flip_lr|color_jitter(0.3, 0.3, 0.3)')(win, np.random.default_rng(9))
  for t in range(1, 4):
    np.testing.assert_array_equal(ex['image'][t], ex['image'][0])


def test_standardize_shapes():
  ex = {'image': np.zeros((8, 8, 1), np.uint8), 'valence': 0.5, 'arousal': -0.25,
        'va_mask': np.array([1, 0], np.float32), 'landmarks': np.zeros((68, 2), np.float32),
        'landmarks_mask': 0.0, 'emotion': 3, 'index': 7, 'video': 2, 'video_id': b'x'}
  out = ops.build('standardize')(ex, np.random.default_rng(0))
  assert out['image'].shape == (8, 8, 3)
  np.testing.assert_array_equal(out['va'], [0.5, -0.25])
  assert 'video_id' not in out and int(out['index']) == 7
  with pytest.raises(KeyError, match='no audio'):
    ops.build('standardize(audio=True)')(ex, np.random.default_rng(0))


def _record(image, **extra):
  return dict({'image': image, 'valence': 0.5, 'arousal': -0.25,
               'va_mask': np.ones((2,), np.float32), 'landmarks': np.zeros((68, 2), np.float32),
               'landmarks_mask': 0.0, 'emotion': 3, 'index': 7, 'video': 2}, **extra)


def test_build_inputs_gives_the_eval_pipeline_images_without_labels():
  # What predict runs on a crop is what evaluation runs on a record holding that crop.
  rng = np.random.default_rng(0)
  crop = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
  spec = "standardize|center_crop(0.925)|resize({image_size})|value_range(-1, 1)|keep('image', 'va')"
  full = ops.build(spec, image_size=16)(_record(crop.copy()), np.random.default_rng(0))
  pp, uses_audio = ops.build_inputs(spec, image_size=16)
  mine = pp(faces.crop_inputs(crop.copy()), np.random.default_rng(0))
  assert not uses_audio and set(mine) == {'image'}
  np.testing.assert_array_equal(mine['image'], full['image'])
  spec_audio = 'standardize(audio=True)|resize(16)'
  audio = np.linspace(-1, 1, 640).astype(np.float32)
  full = ops.build(spec_audio)(_record(crop.copy(), audio=audio), np.random.default_rng(0))
  pp, uses_audio = ops.build_inputs(spec_audio)
  mine = pp(faces.crop_inputs(crop.copy(), audio), np.random.default_rng(0))
  assert uses_audio and ops.build_inputs('standardize(True)')[1]
  for k in ('image', 'audio'):
    np.testing.assert_array_equal(mine[k], full[k])
