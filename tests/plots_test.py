"""Tests for vaflax.plots: every plot writes a PNG of the requested pixel size that PIL opens."""

import json

import numpy as np
import pytest
from PIL import Image

from vaflax import circumplex, plots


def check_png(path, size):
  with Image.open(path) as im:
    assert im.format == 'PNG'
    assert im.size == size
    pixels = np.asarray(im.convert('L'))
  assert pixels.std() > 0  # something was drawn, not a blank canvas


@pytest.fixture
def va():
  rng = np.random.default_rng(0)
  target = np.tanh(rng.normal(size=(200, 2)))
  return np.clip(target + 0.2 * rng.normal(size=target.shape), -1, 1), target


def test_circumplex_scatter(tmp_path, va):
  pred, target = va
  mask = np.ones(len(pred))
  mask[:10] = 0
  out = plots.circumplex_scatter(tmp_path / 'sub' / 'c.png', pred, target, mask=mask, title='t',
                                 size=(500, 480))
  assert out == tmp_path / 'sub' / 'c.png'
  check_png(out, (500, 480))


def test_va_scatter(tmp_path, va):
  pred, target = va
  check_png(plots.va_scatter(str(tmp_path / 's.png'), pred, target, size=(800, 400)), (800, 400))


def test_confusion_heatmap(tmp_path, va):
  pred, target = va
  cm = circumplex.quadrant_confusion(circumplex.va_to_quadrant(target),
                                     circumplex.va_to_quadrant(pred))
  check_png(plots.confusion_heatmap(tmp_path / 'cm.png', cm), (640, 560))
  check_png(plots.confusion_heatmap(tmp_path / 'cm2.png', cm, normalise=False, size=(300, 300)),
            (300, 300))
  with pytest.raises(ValueError, match='class names'):
    plots.confusion_heatmap(tmp_path / 'x.png', cm, ['a', 'b'])


def test_va_over_time_and_trajectory(tmp_path):
  t = np.arange(100) / 25.0
  va = np.stack([np.sin(t), 0.5 * np.cos(2 * t)], 1)
  check_png(plots.va_over_time(tmp_path / 'time.png', t, va, target_va=0.9 * va), (960, 420))
  check_png(plots.circumplex_trajectory(tmp_path / 'traj.png', va, t), (640, 640))
  with pytest.raises(ValueError, match='time_s'):
    plots.va_over_time(tmp_path / 'bad.png', t[:5], va)


def test_training_curves(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  with open(path, 'w') as f:
    for step in range(1, 21):
      f.write(json.dumps({'step': step, 'train/loss': 2.0 / step, 'train/lr': 1e-3}) + '\n')
      if step % 5 == 0:
        rec = {'step': step, 'eval/ccc_mean': step / 25, 'eval/pcc_mean': None}
        f.write(json.dumps(rec) + '\n')
  series = plots.read_metrics_jsonl(path)
  assert sorted(series) == ['eval/ccc_mean', 'train/loss', 'train/lr']  # null values dropped
  np.testing.assert_array_equal(series['eval/ccc_mean'][0], [5, 10, 15, 20])
  check_png(plots.training_curves(tmp_path / 'curves.png', path), (1000, 440))
  check_png(plots.training_curves(tmp_path / 'c2.png', path, keys=['eval/ccc_mean'],
                                  size=(400, 300)), (400, 300))
  with pytest.raises(ValueError, match='no numeric series'):
    plots.training_curves(tmp_path / 'c3.png', path, keys=['nope'])


def png_title(path) -> str:
  with Image.open(path) as im:
    return im.text.get('Title', '')


def test_titles_are_drawn_and_written_into_the_png_text(tmp_path, va):
  pred, target = va
  cm = circumplex.quadrant_confusion(circumplex.va_to_quadrant(target),
                                     circumplex.va_to_quadrant(pred))
  p = plots.confusion_heatmap(tmp_path / 'cm.png', cm, title='Quadrants: x/test, flip TTA')
  assert png_title(p) == 'Quadrants: x/test, flip TTA'
  p = plots.va_scatter(tmp_path / 's.png', pred, target, title='x/test, step 3')
  assert png_title(p).split(' | ')[0] == 'x/test, step 3'  # the suptitle, then each panel's
  assert 'valence: CCC' in png_title(p) and 'arousal: CCC' in png_title(p)
  with Image.open(plots.va_scatter(tmp_path / 'u.png', pred, target)) as im:
    assert not im.text['Title'].startswith('x/')  # no suptitle unless asked


def test_circumplex_scatter_numbers_and_names_the_points(tmp_path):
  va = np.array([[0.5, 0.5], [-0.4, 0.2], [0.1, -0.6]])
  names = ['clip_a.mp4', 'b$c.jpg', 'd.png']
  p = plots.circumplex_scatter(tmp_path / 'n.png', va, labels=names, title='3 clips')
  check_png(p, (640 + 260, 640))  # room for the legend of names
  unnamed = plots.circumplex_scatter(tmp_path / 'u.png', va, title='3 clips')
  with Image.open(p) as a, Image.open(unnamed) as b:
    # The numbered points are drawn larger and in colours: more coloured pixels.
    def coloured(im):
      x = np.asarray(im.convert('RGB'), np.int16)
      return int(((x.max(-1) - x.min(-1)) > 60).sum())
    assert coloured(a) > 2 * coloured(b)
  with pytest.raises(ValueError, match='2 labels for 3 points'):
    plots.circumplex_scatter(tmp_path / 'x.png', va, labels=names[:2])


def test_va_over_time_spans_the_clip_with_faceless_gaps(tmp_path):
  t = np.arange(160) / 25.0  # a 6.4 s clip; a face only in its first 2.4 s
  va = np.stack([np.sin(t), 0.5 * np.cos(2 * t)], 1)
  va[t >= 2.4] = np.nan

  def shaded_columns(path):
    x = np.asarray(Image.open(path).convert('RGB'))
    return np.flatnonzero((np.all(x == 230, -1)).sum(0) > 100)  # the 0.9 grey of the gap

  cols = shaded_columns(plots.va_over_time(tmp_path / 'gap.png', t, va, duration_s=6.4))
  assert len(cols) > 400  # ~ 4 s of the 6.4 s axis (~ 850 px wide)
  full = np.nan_to_num(va)
  assert len(shaded_columns(plots.va_over_time(tmp_path / 'full.png', t, full,
                                               duration_s=6.4))) == 0


def test_predict_pictures_photo_without_time_and_video_over_the_whole_clip(tmp_path):
  from vaflax.predict import outputs  # noqa: PLC0415

  # A photo with two faces: one circumplex of its faces, numbered; no time plot.
  rows = [outputs.Row(0, 0.0, f, 10, 10, 40, 40, 0.9) for f in (0, 1)]
  files = outputs.write_plots(str(tmp_path), 'group.jpg', rows, np.array([[0.3, 0.2], [-0.1, 0.5]]),
                              is_video=False)
  assert sorted(files) == ['trajectory_png']
  assert png_title(files['trajectory_png']) == 'group.jpg: 2 face(s)'
  with Image.open(files['trajectory_png']) as im:
    assert im.size == (640 + 260, 640)  # the legend of numbered faces
  # A 6.4 s clip whose face is seen in its first 2.4 s only: the time axis covers the clip.
  t = np.arange(160) / 25
  clip = [outputs.Row(k, t[k], 0 if t[k] < 2.4 else outputs.NO_FACE, 10, 10, 40, 40, 0.9)
          for k in range(160)]
  face = [r for r in clip if r.face_id == 0]
  va = np.stack([np.sin(t[:len(face)]), np.cos(t[:len(face)])], 1) * 0.5
  files = outputs.write_plots(str(tmp_path), 'clip.mp4', face, va, is_video=True,
                              clip_rows=clip, duration_s=6.4)
  assert png_title(files['va_time_png']) == 'clip.mp4, face 0'
  x = np.asarray(Image.open(files['va_time_png']).convert('RGB'))
  assert (np.all(x == 230, -1).sum(0) > 100).sum() > 400  # the faceless 4 s, shaded
