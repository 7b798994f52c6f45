"""Atomic writes: a file appears whole under its name or not at all, and a killed run's
temporary files can be told apart and removed by the next run.

Every writer of vaflax uses `atomic` (predict's and abaw's tables, plots and videos, evaluate,
final metrics, calibration, caches, exports): the data go to `<name>.part<pid>h<host><ext>` and are
renamed over `<name>` when the block ends without an exception (os.replace is atomic on POSIX and
on Windows within one file system), so readers and reruns never see half a file. The one writer
outside it is data/balance.py's label cache, which lives in a TFDS data_dir that may be a remote
(gs://) path and so renames through etils.epath.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import socket
import time

# Temporary names: <name>.part<pid>h<host><ext>, the host a short hash of its name, so that a
# later run can tell files of its own host's dead processes (removable) from those of live runs
# on other hosts sharing OUT.
HOST = hashlib.sha1(socket.gethostname().encode('utf-8', 'replace')).hexdigest()[:6]
_PART = re.compile(r'\.part(\d+)h([0-9a-f]{6})(\.[^./]*)?$')
STALE_OTHER_HOST_S = 24 * 3600  # another host's temporary file this old is of a dead run


@contextlib.contextmanager
def atomic(path):
  """Yields a temporary name with the same extension (writers pick the format from it); renames
  it to `path` when the block ends without an exception, removes it otherwise."""
  root, ext = os.path.splitext(os.fspath(path))
  tmp = f'{root}.part{os.getpid()}h{HOST}{ext}'
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:  # e.g. EPERM: a process of another user holds the id
    return True
  return True


def remove_stale_parts(out_dir: str) -> list[str]:
  """Removes the temporary files (`atomic`'s pattern only) that dead runs left under `out_dir`:
  those of this host whose process is gone, and those of other hosts older than a day. A kill
  leaves them (a rename never happened); returns what was removed."""
  gone = []
  now = time.time()
  for p in glob.glob(os.path.join(glob.escape(out_dir), '**', '*.part*'), recursive=True):
    m = _PART.search(p)
    if not m or not os.path.isfile(p):
      continue
    pid, host = int(m.group(1)), m.group(2)
    try:
      if host == HOST:
        stale = pid != os.getpid() and not _alive(pid)
      else:
        stale = now - os.path.getmtime(p) > STALE_OTHER_HOST_S
      if stale:
        os.remove(p)
        gone.append(p)
    except OSError:  # removed meanwhile by another run
      pass
  return gone


def write_json(path, obj, *, indent: int | None = 2) -> str:
  """`obj` as JSON at `path`, atomically; returns the path."""
  with atomic(path) as tmp, open(tmp, 'w') as f:
    json.dump(obj, f, indent=indent)
    f.write('\n')
  return os.fspath(path)


def write_bytes(path, data: bytes) -> str:
  with atomic(path) as tmp, open(tmp, 'wb') as f:
    f.write(data)
  return os.fspath(path)
