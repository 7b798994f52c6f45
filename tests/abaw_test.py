"""vaflax.abaw on a fixture in the Aff-Wild2 layout: missing crops, a `_left` video, a video
without crops, an unreadable crop, -5 labels."""

import numpy as np
import pytest
from conftest import fixture
from PIL import Image

import vaflax
from vaflax import abaw, metrics

SAMPLE_HEADER = 'image_location,valence,arousal'


@pytest.fixture(scope='module')
def layout(tmp_path_factory):
  from vaflax.convert import __main__ as cli  # noqa: PLC0415

  root = tmp_path_factory.mktemp('affwild2')
  run_dir = root / 'run'
  assert cli.main(['--format=torchvision_resnet', f'--input={fixture("resnet18_w4.pth")}',
                   f'--workdir={run_dir}']) == 0
  faces = np.load(fixture('resnet18_w4_outputs.npz'))['faces']
  crops = root / 'cropped_aligned'
  have = {'1-30-1280x720': [1, 2, 4, 6], '6-30-1920x1080_left': [1, 2, 3]}
  for video, frames in have.items():
    (crops / video).mkdir(parents=True)
    for k in frames:
      face = np.roll(faces[k % len(faces)], 7 * k, axis=1)  # a different crop per frame
      Image.fromarray(face).save(crops / video / f'{k:05d}.jpg', quality=95)
  (crops / '1-30-1280x720' / '00006.jpg').write_bytes(b'broken jpeg')  # unreadable: filled
  frames = {'1-30-1280x720': 7, '6-30-1920x1080_left': 3, '7-25-600x480': 2}
  sample = root / 'sample.txt'
  sample.write_text(SAMPLE_HEADER + '\n' + ''.join(
      f'{v}/{k:05d}.jpg,0,0\n' for v, n in frames.items() for k in range(1, n + 1)))
  ann = root / 'Validation_Set'
  ann.mkdir()
  rng = np.random.default_rng(0)
  for v, n in frames.items():
    va = rng.uniform(-1, 1, (n, 2)).round(3)
    va[0] = -5  # not annotated
    (ann / f'{v}.txt').write_text('valence,arousal\n' + ''.join(f'{a},{b}\n' for a, b in va))
  return root, run_dir, frames


@pytest.mark.slow
def test_submission_rows_fill_rule_and_score(layout, tmp_path, capsys):
  root, run_dir, frames = layout
  out = tmp_path / 'sub.txt'
  assert abaw.main([f'--workdir={run_dir}', f'--sample={root / "sample.txt"}',
                    f'--frames={root / "cropped_aligned"}', f'--output={out}']) == 0
  log = capsys.readouterr().out
  assert ('12 rows in 3 videos: 6 predicted; filled 1 by interpolation, 3 by the video\'s mean, '
          '2 with 0 (5 without a crop, 1 unreadable)') in log
  lines = out.read_text().splitlines()
  sample = (root / 'sample.txt').read_text().splitlines()
  assert lines[0] == SAMPLE_HEADER
  assert [ln.split(',')[0] for ln in lines] == [ln.split(',')[0] for ln in sample]
  va = np.array([[float(x) for x in ln.split(',')[1:]] for ln in lines[1:]])
  assert np.isfinite(va).all() and np.abs(va).max() <= 1

  # Predicted rows are what the run says of the crop, as --cropped scores it.
  run = vaflax.load(str(run_dir))
  a = root / 'cropped_aligned' / '1-30-1280x720'
  p = run.predict([np.asarray(Image.open(a / f'{k:05d}.jpg')) for k in (1, 2, 4)])
  got = np.stack([p['valence'], p['arousal']], -1)
  np.testing.assert_allclose(va[[0, 1, 3]], got, atol=2e-6)
  np.testing.assert_allclose(va[2], (got[1] + got[2]) / 2, atol=2e-6)  # 3: between 2 and 4
  np.testing.assert_allclose(va[4], got.mean(0), atol=2e-6)  # 5, 6 (unreadable), 7: after the
  np.testing.assert_allclose(va[5], got.mean(0), atol=2e-6)  # last crop -> the video's mean;
  np.testing.assert_allclose(va[6], got.mean(0), atol=2e-6)  # a crop that cannot be read is missing
  np.testing.assert_array_equal(va[10:], 0)  # a video without crops -> 0

  # Scoring: the ABAW metric is the mean of the two pooled CCCs over the annotated frames.
  assert abaw.main([f'--predictions={out}', f'--labels={root / "Validation_Set"}']) == 0
  log = capsys.readouterr().out
  labels = abaw.read_labels(root / 'Validation_Set')
  t = np.concatenate([labels[v][1:] for v in sorted(labels)])  # line 1 of each is -5
  rows = {ln.split(',')[0]: i for i, ln in enumerate(lines[1:])}
  pred = np.stack([va[rows[f'{v}/{k:05d}.jpg']] for v in sorted(labels)
                   for k in range(2, frames[v] + 1)])
  want = metrics.va_metrics(pred, t)['ccc_mean']
  assert '9 annotated frames' in log and f'ABAW score (mean) {want:.4f}' in log

  # The validation mode writes every annotation line as a row and scores it in one go.
  val = tmp_path / 'val.txt'
  assert abaw.main([f'--workdir={run_dir}', f'--frames={root / "cropped_aligned"}',
                    f'--labels={root / "Validation_Set"}', f'--output={val}']) == 0
  assert val.read_text().splitlines()[1:] == lines[1:]  # the sample lists the same frames
  assert f'ABAW score (mean) {want:.4f}' in capsys.readouterr().out


def test_fill_rule_by_hand_and_bad_files(tmp_path):
  nan = np.nan
  locs = [f'v/{k}.jpg' for k in range(6)] + ['w/1.jpg']
  va = np.array([[nan, nan], [0.2, 0.0], [nan, nan], [nan, nan], [0.8, 0.6], [nan, nan],
                 [nan, nan]])
  filled, counts = abaw.fill(va, locs)
  np.testing.assert_allclose(filled[:, 0], [0.5, 0.2, 0.4, 0.6, 0.8, 0.5, 0.0])
  np.testing.assert_allclose(filled[:, 1], [0.3, 0.0, 0.2, 0.4, 0.6, 0.3, 0.0])
  assert counts == {'predicted': 2, 'interpolated': 2, 'video_mean': 2, 'zero': 1}
  bad = tmp_path / 'bad.txt'
  bad.write_text('video,frame\n')
  with pytest.raises(ValueError, match='bad.txt: the first line must be the header'):
    abaw.read_sample(bad)
