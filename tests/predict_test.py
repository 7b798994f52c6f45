import csv
import json
import os

import cv2
import numpy as np
import pytest
import skimage.data
from conftest import tiny_run
from PIL import Image

from vaflax import circumplex, faces, predict
from vaflax.data import video_io

W, H, N, FPS = 320, 180, 30, 25
# The astronaut's face in skimage's 512 px image (x 178-272, y 60-175); frames show the image at
# half size, shifted and slowly zoomed by `_affine`.
FACE_512 = (178.0, 60.0, 272.0, 175.0)


def _affine(i):
  s = 0.5 * (1 + 0.002 * i)
  return s, 32 + 6 * np.sin(i / 5), -10 + 0.3 * i


def _frame(i):
  s, tx, ty = _affine(i)
  m = np.float32([[s, 0, tx], [0, s, ty]])
  return cv2.warpAffine(skimage.data.astronaut(), m, (W, H), flags=cv2.INTER_AREA,
                        borderMode=cv2.BORDER_REFLECT)


def _face_in_frame(i):
  s, tx, ty = _affine(i)
  x0, y0, x1, y1 = FACE_512
  return s * x0 + tx, s * y0 + ty, s * x1 + tx, s * y1 + ty


@pytest.fixture(scope='module')
def media(tmp_path_factory):
  d = tmp_path_factory.mktemp('media')
  video_io.write_mp4(d / 'astro.mp4', np.stack([_frame(i) for i in range(N)]), FPS)
  # No face: a drifting colour gradient.
  g = np.linspace(0, 255, W, dtype=np.float32)[None, :, None]
  blank = [np.broadcast_to((g + 8 * i) % 256, (H, W, 3)).astype(np.uint8) for i in range(10)]
  video_io.write_mp4(d / 'noface.mp4', np.stack(blank), FPS)
  (d / 'broken.mp4').write_bytes(b'this is not a video' * 50)
  Image.fromarray(skimage.data.astronaut()).save(d / 'astro_still.png')
  return d


@pytest.fixture(scope='module')
def predictor(tmp_path_factory, synthetic_data_dir):
  return predict.Predictor(tiny_run(tmp_path_factory, synthetic_data_dir), batch_size=8,
                           data_dir=synthetic_data_dir)


def _rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_video_end_to_end(predictor, media, tmp_path):
  opts = predict.Options(overlay=True, progress=False)
  s = predict.predict_file(predictor, media / 'astro.mp4', str(tmp_path), opts)
  all_rows = _rows(tmp_path / 'astro.csv')
  assert list(all_rows[0]) == list(predict.CSV_COLUMNS)
  assert s['frames_processed'] == N and s['fps'] == FPS and s['frames_with_face'] >= N - 2
  # Every processed frame has a row; a frame without a face has face_id -1 and empty fields.
  assert [int(r['frame']) for r in all_rows] == list(range(N))
  rows = [r for r in all_rows if r['face_id'] != '-1']
  assert all(set(r.values()) == {''} | {r['frame'], r['time_s'], '-1'} for r in all_rows
             if r['face_id'] == '-1')
  assert len(rows) == s['frames_with_face'] and {r['face_id'] for r in rows} == {'0'}
  assert s['frames_without_face'] == N - s['frames_with_face']
  for r in rows:
    assert 0.5 <= float(r['det_score']) <= 1  # BlazeFace: a probability
    k = int(r['frame'])
    assert float(r['time_s']) == pytest.approx(k / FPS, abs=1e-3)
    x, y, w, h = (float(r[c]) for c in 'xywh')
    lm = {n: (float(r[f'lm_{n}_x']), float(r[f'lm_{n}_y'])) for n in faces.KEYPOINTS}
    assert all(x < px < x + w and y < py < y + h for px, py in lm.values()), (k, lm)
    assert lm['eye_left'][0] < lm['eye_right'][0] and lm['eye_left'][1] < lm['mouth'][1]
    fx0, fy0, fx1, fy1 = _face_in_frame(k)
    assert fx0 < x + w / 2 < fx1 and fy0 < y + h / 2 < fy1, (k, x, y, w, h)
    assert 0.6 < w / (fx1 - fx0) < 1.6
    v, a = float(r['valence']), float(r['arousal'])
    assert -1 <= v <= 1 and -1 <= a <= 1
    assert r['quadrant'] == circumplex.QUADRANT_NAMES[int(circumplex.va_to_quadrant([v, a]))]

  # The CSV holds what the model says on the training crop of that box: crop_face with margin
  # 0.2 at the synthetic set's 112 px, then pp_eval (center_crop(0.925), resize(32), [-1, 1]).
  r = rows[0]
  rgb = _decoded_frame(media / 'astro.mp4', int(r['frame']))
  crop, _ = faces.crop_face(rgb, box=[float(r[c]) for c in 'xywh'], spec=faces.CropSpec(size=112))
  side = int(round(112 * 0.925))
  o = (112 - side) // 2
  img = cv2.resize(crop[o:o + side, o:o + side], (32, 32), interpolation=cv2.INTER_AREA)
  img = img.astype(np.float32) / 255 * 2 - 1
  out = predictor.result(predictor.dispatch([{'image': img}]))
  assert float(r['valence']) == pytest.approx(float(out['va'][0, 0]), abs=2e-4)
  assert float(r['arousal']) == pytest.approx(float(out['va'][0, 1]), abs=2e-4)

  summary = json.load(open(tmp_path / 'astro.json'))
  va = np.array([[float(r['valence']), float(r['arousal'])] for r in rows])
  assert summary['valence']['mean'] == pytest.approx(va[:, 0].mean(), abs=1e-4)
  assert summary['arousal']['std'] == pytest.approx(va[:, 1].std(), abs=1e-4)
  share = summary['quadrant_share']
  assert sum(share.values()) == pytest.approx(1.0)
  counts = {q: sum(r['quadrant'] == q for r in rows) / len(rows) for q in share}
  assert share == pytest.approx(counts)
  assert summary['dominant_quadrant'] == max(counts, key=counts.get)
  assert summary['crop'] == {'margin': 0.2, 'size': 112, 'pp_eval': predictor.pp_spec}
  for name in ('astro_trajectory.png', 'astro_va_time.png'):
    with Image.open(tmp_path / name) as im:
      assert im.format == 'PNG' and min(im.size) >= 400
  with video_io.Video(tmp_path / 'astro_overlay.mp4') as v:
    assert sum(1 for _ in v.frames()) == N


def _decoded_frame(path, k):
  with video_io.Video(path) as v:
    for i, (_, frame) in enumerate(v.frames()):
      if i == k:
        return frame.to_ndarray(format='rgb24')
  raise AssertionError(f'no frame {k}')


def test_stride_and_smoothing(predictor, media, tmp_path):
  opts = dict(frame_stride=3, plots=False, progress=False)
  raw = predict.predict_file(predictor, media / 'astro.mp4', str(tmp_path / 'raw'),
                             predict.Options(**opts))
  sm = predict.predict_file(predictor, media / 'astro.mp4', str(tmp_path / 'sm'),
                            predict.Options(smooth='mean', smooth_window=3, **opts))
  again = predict.predict_file(predictor, media / 'astro.mp4', str(tmp_path / 'again'),
                               predict.Options(**opts))
  assert raw['frames_processed'] == sm['frames_processed'] == again['frames_processed'] == N // 3
  # Predict is deterministic: the same input gives the same CSV, byte for byte. (It once seemed
  # not to be: the fixture video itself differed between sessions, see video_io.encode_rgb.)
  csv0 = (tmp_path / 'raw' / 'astro.csv').read_bytes()
  assert (tmp_path / 'again' / 'astro.csv').read_bytes() == csv0
  r0, r1 = _rows(tmp_path / 'raw' / 'astro.csv'), _rows(tmp_path / 'sm' / 'astro.csv')
  assert [int(r['frame']) for r in r0] == [int(r['frame']) for r in r1] == list(range(0, N, 3))
  r0, r1 = ([r for r in rs if r['face_id'] != '-1'] for rs in (r0, r1))
  for c in ('frame', 'time_s', 'face_id', 'x', 'y', 'w', 'h'):
    assert [r[c] for r in r0] == [r[c] for r in r1]
  v = np.array([float(r['valence']) for r in r0])
  want = predict.smooth_track(np.stack([v, v], -1), 'mean', 3)[:, 0]
  np.testing.assert_allclose([float(r['valence']) for r in r1], want, atol=2e-4)


def test_smooth_track_values():
  x = np.array([[0.0, 1.0], [3.0, 1.0], [6.0, 1.0], [9.0, 1.0]])
  np.testing.assert_allclose(predict.smooth_track(x, 'mean', 3)[:, 0], [1.5, 3, 6, 7.5])
  np.testing.assert_allclose(predict.smooth_track(x, 'mean', 2)[:, 0], [1.5, 4.5, 7.5, 9])
  a = 2 / 4  # window 3 -> alpha 0.5
  e = predict.smooth_track(x, 'ema', 3)[:, 0]
  np.testing.assert_allclose(e, [0, a * 3, a * 6 + (1 - a) * a * 3,
                                 a * 9 + (1 - a) * (a * 6 + (1 - a) * a * 3)])
  np.testing.assert_array_equal(predict.smooth_track(x, 'none', 3), x)


def test_tracker_keeps_ids_and_drops_old_tracks():
  t = predict.FaceTracker(max_age=2)
  ids, _ = t.update([(10, 10, 40, 40, 5), (200, 10, 40, 40, 5)])
  assert [i for i, _ in ids] == [0, 1]
  # Both move; the detector lists them in the other order; one jumps 15 px (IoU < 0.3 for a
  # 40 px box moving 30 px, but its centre stays within half a side).
  ids, _ = t.update([(215, 12, 40, 40, 5), (14, 10, 40, 40, 5)])
  assert [i for i, _ in ids] == [1, 0]
  ids, _ = t.update([(214, 12, 40, 40, 5)])
  assert [i for i, _ in ids] == [1]
  _, dropped = t.update([(214, 12, 40, 40, 5)])
  assert dropped == []
  _, dropped = t.update([(214, 12, 40, 40, 5)])
  assert dropped == [0]  # unseen for 3 updates > max_age 2
  ids, _ = t.update([(12, 10, 40, 40, 5)])
  assert ids[0][0] == 2  # a new face, a new id
  assert predict.iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)


@pytest.mark.slow
def test_no_face_video_unreadable_file_and_folder(predictor, media, tmp_path, capsys):
  s = predict.predict_file(predictor, media / 'noface.mp4', str(tmp_path), predict.Options(
      progress=False))
  assert s['frames_processed'] == 10 and s['frames_with_face'] == 0 and s['num_rows'] == 0
  assert s['status'] == 'no_face' and s['error'] == ''
  assert 'no face' in s['note'] and s['dominant_quadrant'] is None
  rows = _rows(tmp_path / 'noface.csv')
  assert [(r['frame'], r['face_id'], r['valence']) for r in rows] == [
      (str(k), '-1', '') for k in range(10)]
  assert json.load(open(tmp_path / 'noface.json'))['frames_without_face'] == 10
  with pytest.raises(predict.InputError, match='broken.mp4: cannot open as a video'):
    predict.predict_file(predictor, media / 'broken.mp4', str(tmp_path), predict.Options())

  # The CLI: a folder with a bad file processes the others, gives the bad one an error row,
  # exits 0 and ends with the counts.
  (media / 'notes.txt').write_text('ignored')
  out = tmp_path / 'folder'
  argv = [f'--workdir={predictor.workdir}', f'--output={out}', '--quiet', '--batch_size=8',
          f'--data_dir={predictor.config.input.data_dir}']
  rc = predict.main(argv + [f'--input={media}'])
  cap = capsys.readouterr()
  assert rc == 0 and cap.out.strip().splitlines()[-1] == (
      '4 inputs: 2 ok, 1 no_face, 0 partial, 1 error (0 already done)')
  assert 'notes.txt: not an image or video' in cap.err
  table = {r['path']: r for r in _rows(out / 'summary.csv')}
  assert table['broken.mp4']['status'] == 'error' and table['noface.mp4']['status'] == 'no_face'
  assert 'broken.mp4: cannot open as a video' in table['broken.mp4']['error']
  assert sorted(p.name for p in out.glob('*.csv')) == ['astro.csv', 'astro_still.csv',
                                                        'noface.csv', 'summary.csv']
  still = _rows(out / 'astro_still.csv')
  assert len(still) == 1 and still[0]['frame'] == '0'
  x, y, w, h = (float(still[0][c]) for c in 'xywh')
  assert 178 < x + w / 2 < 272 and 60 < y + h / 2 < 175
  assert predict.main(argv + [f'--input={media / "noface.mp4"}']) == 0
  assert predict.main(argv + [f'--input={media / "missing.mp4"}']) == 2
  assert 'missing.mp4: no such file' in capsys.readouterr().err

  # The console: one input (singular), the clip's line with its JSON's numbers, then the run's.
  one = tmp_path / 'one'
  loud = [a for a in argv if a != '--quiet'] + [f'--output={one}']
  assert predict.main(loud + [f'--input={media / "astro_still.png"}']) == 0
  cap = capsys.readouterr()
  s1 = json.load(open(one / 'astro_still.json'))
  err = cap.err.splitlines()
  assert any(ln.startswith(f'1 input under {media}; shard 1/1: 1, 0 already') for ln in err)
  fps = predict.collection.rate_text(s1['frames_per_second'])
  assert (f"astro_still.png: ok, 1/1 frames with a face, {fps} frames/s "
          '[1/1]') in err
  assert any(ln.startswith('1 frame of 1 input in ') for ln in err)
  assert cap.out.strip().splitlines()[-1] == (
      '1 input: 1 ok, 0 no_face, 0 partial, 0 error (0 already done)')


class _FakeWindowPredictor:
  """Stands in for a temporal model: va[t] of a window = (pixel value of frame t, -that)."""

  window, batch_size = 3, 2

  def __init__(self):
    self.batches = []

  def dispatch(self, items):
    frames = np.stack([it['image'] for it in items])  # (B, T, 1, 1, 1)
    self.batches.append(frames.shape)
    v = frames.reshape(len(items), -1)  # (B, T), or (B, 1) for a frame model
    return {'va': np.stack([v, -v], -1)}, len(items)

  @staticmethod
  def result(handle):
    return handle[0]


def test_window_models_get_windows_of_one_track():
  p = _FakeWindowPredictor()
  batcher = predict.Batcher(p)
  order = [(0, 1.0), (1, 10.0), (0, 2.0), (0, 3.0), (1, 20.0), (0, 4.0)]  # (face, value) in time
  rows = [batcher.add(face, {'image': np.full((1, 1, 1), value, np.float32)})
          for face, value in order]
  assert rows == list(range(len(order)))
  batcher.end_track(1)  # the tracker dropped face 1: its partial window goes now
  va, quadrant = batcher.finish()
  np.testing.assert_array_equal(va[:, 0], [v for _, v in order])  # each frame its own value
  np.testing.assert_array_equal(va[:, 1], [-v for _, v in order])
  assert quadrant is None
  # Windows: face 0 [1, 2, 3] full, face 1 [10, 20] padded, face 0 [4] padded; 2 per batch.
  assert p.batches == [(2, 3, 1, 1, 1), (1, 3, 1, 1, 1)]


def test_face_finder_takes_any_detector_and_maps_window_results_to_the_frame():
  # The detector interface (frame, min size -> Faces) that a CNN detector will implement.
  calls = []

  def detector(rgb, min_size):
    calls.append(rgb.shape[:2])
    h, w = rgb.shape[:2]  # one 50 px face at the centre of whatever it is shown
    lm = np.array([[w / 2 - 10, h / 2], [w / 2 + 10, h / 2]], np.float32)
    return [predict.Face((w / 2 - 25, h / 2 - 25, 50.0, 50.0), 0.9, lm)]

  finder = predict.FaceFinder(min_face=40, detect_every=10, largest_only=True, detector=detector)
  frame = np.zeros((200, 300, 3), np.uint8)
  full = finder(frame, [])
  assert calls == [(200, 300)] and full[0].box == (125.0, 75.0, 50.0, 50.0)
  near = finder(frame, [(110.0, 60.0, 50.0, 50.0)])  # searched in a window around the track
  assert calls[1] == (100, 100)
  assert near[0].box == (110.0, 60.0, 50.0, 50.0) and near[0].score == 0.9  # window at (85, 35)
  np.testing.assert_allclose(near[0].landmarks, [[125, 85], [145, 85]])


def _faststart_truncated(src, dst):
  """The first half of a remux of `src` with its index (moov) first: FFmpeg opens it and
  decodes the frames before the cut, like a download cut short."""
  import av  # noqa: PLC0415

  full = dst.with_suffix('.full.mp4')
  with av.open(str(src)) as i, av.open(str(full), 'w', options={'movflags': 'faststart'}) as o:
    s = i.streams.video[0]
    out = o.add_stream_from_template(s)
    for p in i.demux(s):
      if p.dts is not None:
        p.stream = out
        o.mux(p)
  data = full.read_bytes()
  full.unlink()
  dst.write_bytes(data[: len(data) // 2])


@pytest.mark.slow
def test_collection_bad_inputs_resume_after_a_kill_and_shards(predictor, media, tmp_path,
                                                              monkeypatch):
  from vaflax.predict import collection, summary  # noqa: PLC0415

  src = tmp_path / 'clips'
  (src / 'sub').mkdir(parents=True)
  for name in ('a.mp4', 'sub/b.mp4', 'sub/c.mp4'):
    (src / name).write_bytes((media / 'astro.mp4').read_bytes())
  (src / 'still.png').write_bytes((media / 'astro_still.png').read_bytes())
  (src / 'empty.mp4').write_bytes(b'')
  (src / 'text.mp4').write_text('not a video\n' * 20)
  _faststart_truncated(media / 'astro.mp4', src / 'sub' / 'cut.mp4')
  out = tmp_path / 'out'
  opts = predict.Options(frame_stride=2, plots=False, progress=False)

  # A run killed after its second finished input (Ctrl-C lands in the model thread).
  finished = []

  def on_done(s):
    finished.append(s['path'])
    if len(finished) == 2:
      raise KeyboardInterrupt

  _, inputs, _ = collection.list_inputs(src)
  with pytest.raises(KeyboardInterrupt):
    collection.predict_many(predictor, inputs, str(out), opts, workers=2, on_done=on_done)
  kept = {p: (out / f'{os.path.splitext(p)[0]}.json').stat().st_mtime_ns for p in finished}
  assert len(kept) == 2 and not list(out.rglob('*.part*'))

  res = collection.run(predictor, src, str(out), opts, workers=2)
  assert res.skipped == 2  # the two finished inputs were not redone ...
  assert {p: (out / f'{os.path.splitext(p)[0]}.json').stat().st_mtime_ns for p in kept} == kept
  rows = {r['path']: r for r in res.rows}  # ... and every input has exactly one row
  assert sorted(rows) == sorted(i.rel for i in inputs) == [
      'a.mp4', 'empty.mp4', 'still.png', 'sub/b.mp4', 'sub/c.mp4', 'sub/cut.mp4', 'text.mp4']
  assert [r['path'] for r in summary.read_table(str(out))] == sorted(rows)
  assert rows['empty.mp4']['status'] == 'error' and 'empty file' in rows['empty.mp4']['error']
  assert rows['text.mp4']['status'] == 'error' and 'cannot open' in rows['text.mp4']['error']
  cut = rows['sub/cut.mp4']
  assert cut['status'] == 'partial' and 'truncated' in cut['error']
  assert 0 < int(cut['frames']) < N // 2
  for p in ('a.mp4', 'sub/b.mp4', 'sub/c.mp4'):
    r = rows[p]
    assert r['status'] == 'ok' and int(r['frames']) == N // 2 and int(r['face_frames']) >= 13
    assert r['quadrant'] in circumplex.QUADRANT_NAMES
    assert sum(float(r[c]) for c in summary.SHARE_COLUMNS) == pytest.approx(1.0, abs=1e-3)
  # Clips that shared device batches got what the clip alone gets.
  alone = predict.predict_file(predictor, src / 'a.mp4', str(tmp_path / 'alone'), opts)
  for x, y in zip(_rows(tmp_path / 'alone' / 'a.csv'), _rows(out / 'sub' / 'b.csv'), strict=True):
    assert x['frame'] == y['frame'] and x['x'] == y['x']
    assert float(x['valence']) == pytest.approx(float(y['valence']), abs=2e-4)
  assert float(rows['a.mp4']['valence_mean']) == pytest.approx(alone['valence']['mean'], abs=1e-4)

  # --overwrite redoes an input; a changed input is redone without it.
  (src / 'still.png').touch()
  again = collection.run(predictor, src, str(out), opts)
  assert again.skipped == len(inputs) - 1

  # Shards: each takes its inputs by itself (here from SLURM's variables), writes its table;
  # the folder reads as one table with every input once.
  for k in (0, 1):
    monkeypatch.setenv('SLURM_PROCID', str(k))
    monkeypatch.setenv('SLURM_NTASKS', '2')
    shard = collection.parse_shard('auto')
    assert shard == (k + 1, 2)
    assert collection.run(predictor, src, str(out), opts, shard=shard).skipped == sum(
        collection.in_shard(i.rel, shard) for i in inputs)
  assert (out / 'summary-1of2.csv').exists() and (out / 'summary-2of2.csv').exists()
  assert [r['path'] for r in summary.read_table(str(out))] == sorted(rows)
  assert predict.main(['--merge', f'--output={out}']) == 0
  (out / 'summary-2of2.csv').unlink()
  with pytest.raises(ValueError, match='summary-2of2.csv'):
    summary.read_table(str(out))


def test_parse_shard_and_hash_partition():
  from vaflax.predict import collection  # noqa: PLC0415

  assert collection.parse_shard('3/8') == (3, 8)
  assert collection.parse_shard('auto', {}) == (1, 1)
  assert collection.parse_shard('auto', {'JAX_PROCESS_ID': '1', 'JAX_NUM_PROCESSES': '4'}) == (2, 4)
  assert collection.parse_shard('auto', {'TPU_WORKER_ID': '0', 'TPU_WORKER_HOSTNAMES': 'a,b'}) == (
      1, 2)
  for bad in ('0/2', '3/2', 'x'):
    with pytest.raises(ValueError, match='--shard'):
      collection.parse_shard(bad)
  rels = [f'd{i // 10}/clip{i}.mp4' for i in range(200)]
  owners = [[k for k in range(1, 4) if collection.in_shard(r, (k, 3))] for r in rels]
  assert all(len(o) == 1 for o in owners)  # each input in exactly one shard ...
  sizes = np.bincount([o[0] for o in owners])[1:]
  assert sizes.min() > 40  # ... and the shards are about equal (200 / 3)
  # The hash is of the bytes of the path: fixed values, the same on every machine.
  assert [collection.in_shard('a.mp4', (k, 4)) for k in range(1, 5)].count(True) == 1


def test_batcher_shares_batches_between_clips():
  p = _FakeWindowPredictor()
  p.window, p.batch_size = 0, 4
  b = predict.Batcher(p)
  value = lambda x: {'image': np.full((1, 1, 1), x, np.float32)}  # noqa: E731
  a_rows = [b.add(('a', 0), value(x)) for x in (1.0, 2.0, 3.0)]
  b_rows = [b.add(('b', 0), value(x)) for x in (10.0, 20.0)]
  assert not b.resolved(a_rows)  # a's third crop waits in the batch that b's crops fill
  b.flush()
  assert p.batches == [(4, 1, 1, 1), (1, 1, 1, 1)]  # one batch held crops of both clips
  va, head = b.take(a_rows)
  np.testing.assert_array_equal(va[:, 0], [1, 2, 3])
  assert head is None and b.resolved(b_rows)
  np.testing.assert_array_equal(b.take(b_rows)[0][:, 1], [-10, -20])


def test_clip_quadrant_rule():
  from vaflax.predict import outputs  # noqa: PLC0415

  assert outputs.clip_quadrant([5, 1, 0, 0], [-0.5, -0.5]) == 0  # most rows wins
  assert outputs.clip_quadrant([3, 0, 0, 3], [0.2, -0.1]) == 3  # tie: the mean VA's quadrant
  assert outputs.clip_quadrant([0, 2, 2, 0], [0.3, 0.3]) == 1  # mean outside the tie: lowest id


@pytest.mark.slow
def test_predict_video_api_matches_the_csv(predictor, media, tmp_path):
  import vaflax  # noqa: PLC0415

  run = vaflax.load(predictor.workdir, batch_size=8,
                    overrides=[f'input.data_dir={predictor.config.input.data_dir}'])
  records, s = run.predict_video(media / 'astro.mp4', frame_stride=3)
  predict.predict_file(predictor, media / 'astro.mp4', str(tmp_path),
                       predict.Options(frame_stride=3, plots=False, progress=False))
  rows = _rows(tmp_path / 'astro.csv')
  assert isinstance(records, dict) or hasattr(records, 'iloc')  # dict without pandas
  assert list(records) == list(predict.CSV_COLUMNS)
  assert s['frames_processed'] == len(rows) == len(records['frame']) == N // 3
  np.testing.assert_array_equal(records['frame'], [int(r['frame']) for r in rows])
  for col in ('valence', 'arousal', 'x', 'det_score'):
    want = [float(r[col]) if r[col] else np.nan for r in rows]
    np.testing.assert_allclose(np.asarray(records[col], np.float64), want, atol=1e-4)
  assert s['dominant_quadrant'] == json.load(open(tmp_path / 'astro.json'))['dominant_quadrant']


def test_predict_image_is_predict_on_the_same_pixels(predictor, media, tmp_path):
  import vaflax  # noqa: PLC0415

  run = vaflax.load(predictor.workdir, batch_size=8,
                    overrides=[f'input.data_dir={predictor.config.input.data_dir}'])
  records, s = run.predict_image(skimage.data.astronaut(), faces='all')
  predict.predict_file(predictor, media / 'astro_still.png', str(tmp_path),
                       predict.Options(faces='all', plots=False, progress=False))
  rows = _rows(tmp_path / 'astro_still.csv')
  assert len(rows) == len(records['frame']) == s['num_rows'] == 1
  for col in ('x', 'y', 'w', 'h', 'lm_nose_x', 'det_score', 'valence', 'arousal'):
    tol = 1e-4 if col in ('det_score', 'valence', 'arousal') else 0.051  # the CSV's rounding
    np.testing.assert_allclose(float(records[col][0]), float(rows[0][col]), atol=tol)
  with pytest.raises(ValueError, match=r'shape \(512, 512, 3\) \(one photo\? run.predict_image'):
    run.predict(skimage.data.astronaut())
  with pytest.raises(ValueError, match=r'uint8 RGB array \(H, W, 3\); got a float64'):
    run.predict_image(skimage.data.astronaut() / 255.0)


def test_save_crops_writes_the_model_input_crop(predictor, media, tmp_path):
  s = predict.predict_file(predictor, media / 'astro_still.png', str(tmp_path),
                           predict.Options(save_crops=True, plots=False, progress=False))
  row = _rows(tmp_path / 'astro_still.csv')[0]
  saved = np.asarray(Image.open(tmp_path / 'astro_still_crops' / f"0_{row['face_id']}.png"))
  want, roll = predictor.crop(skimage.data.astronaut(), tuple(float(row[c]) for c in 'xywh'))
  assert np.isnan(roll)  # no keypoints given: the face's roll in the crop is unknown
  assert want.shape == (112, 112, 3)  # the synthetic set's crop size, before pp_eval
  np.testing.assert_array_equal(saved, want)  # PNG: the exact pixels the model was given
  assert s['files']['crops_dir'] == str(tmp_path / 'astro_still_crops')


def test_the_run_records_its_crop_and_predict_cuts_it(predictor, synthetic_data_dir):
  """The crop travels with the data (issue 15): the training loop records the crop spec of its
  dataset's build in config.json, and predict cuts faces with exactly that spec."""
  import json  # noqa: PLC0415

  from vaflax import faces  # noqa: PLC0415
  from vaflax.data import sources  # noqa: PLC0415

  recorded = json.load(open(os.path.join(predictor.workdir, 'config.json')))['crop']
  built = sources.dataset_info('synthetic_va', synthetic_data_dir).metadata['crop']
  assert recorded == dict(built) and recorded['size'] > 0
  assert predictor.crop_spec == faces.CropSpec.from_dict(recorded)


@pytest.mark.slow
def test_flip_tta_is_the_runs_switch(predictor, synthetic_data_dir):
  """One rule for flip TTA (vaflax/tasks/__init__.py predict_fn): predict's --flip_tta sets the run's
  config.eval.flip_tta, and the output is the mean over each crop and its mirror."""
  assert predictor.flip is False
  flipped = predict.Predictor(predictor.workdir, batch_size=8, data_dir=synthetic_data_dir,
                              overrides=['eval.flip_tta=True'])
  assert flipped.flip is True and flipped.config.eval.flip_tta is True
  x = predictor.preprocess(skimage.data.astronaut()[60:175, 178:272])  # the model's input
  plain = [predictor.result(predictor.dispatch([{'image': im}]))['va'][0]
           for im in (x['image'], np.ascontiguousarray(x['image'][:, ::-1]))]
  got = flipped.result(flipped.dispatch([x]))['va'][0]
  assert np.abs(plain[0] - plain[1]).max() > 1e-4  # the untrained model is not mirror-symmetric
  np.testing.assert_allclose(got, 0.5 * (plain[0] + plain[1]), rtol=1e-5, atol=1e-6)
