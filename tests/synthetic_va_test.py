"""The synthetic sets: synthetic_va_large and synthetic_va_heldout against synthetic_va, and clips
drawn by several processes."""

import itertools
import os
import subprocess
import sys

import numpy as np

from vaflax.data import build

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def test_heldout_keeps_frames_of_the_whole_clip_and_new_identities(tmp_path):
  from vaflax.data import synthetic_faces as sf  # noqa: PLC0415

  full = sf.make_clip(5, 12, 32)
  kept = sf.make_clip(5, 12, 32, keep=[0, 4, 8])
  for a, b in zip(full, kept, strict=True):
    np.testing.assert_array_equal(a[[0, 4, 8]], b)
  held = build.make_builder('synthetic_va_heldout', str(tmp_path))
  base = build.make_builder('synthetic_va', str(tmp_path))
  seeds = lambda b, s: set(range(b.SPLITS[s][1], b.SPLITS[s][1] + b.SPLITS[s][0]))  # noqa: E731
  assert not seeds(held, 'test') & seeds(held, 'validation')
  assert not (seeds(held, 'test') | seeds(held, 'validation')) & set().union(
      *(seeds(base, s) for s in base.SPLITS))


def test_clips_drawn_by_several_processes_equal_one_process_in_order():
  from vaflax.data import synthetic_faces as sf  # noqa: PLC0415

  jobs = [(seed, 4, 32, seed // 2, None) for seed in range(5)]
  drawn = list(sf.make_clips(jobs, workers=2))
  assert len(drawn) == len(jobs)
  for job, clip in zip(jobs, drawn, strict=True):
    for want, got in zip(sf.make_clip(*job), clip, strict=True):
      np.testing.assert_array_equal(got, want)
  # A consumer that stops early (TFDS starts each split up to its first example) is not kept
  # waiting for the clips drawn ahead.
  clips = sf.make_clips(jobs * 8, workers=2)
  np.testing.assert_array_equal(next(clips)[0], drawn[0][0])
  clips.close()


def test_a_script_without_a_main_guard_still_gets_its_clips(tmp_path):
  """Spawned workers import the caller's main module: a script that draws at its top level breaks
  them; its clips are then drawn in its own process, with a warning."""
  script = tmp_path / 'unguarded.py'
  script.write_text('from vaflax.data import synthetic_faces as sf\n'
                    'clips = list(sf.make_clips([(s, 2, 16, s, None) for s in range(3)], workers=2))\n'
                    'print("clips", len(clips))\n')
  r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                     cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
  assert r.returncode == 0 and r.stdout.strip().endswith('clips 3'), r.stderr[-2000:]
  assert 'drawing them in this process' in r.stderr
