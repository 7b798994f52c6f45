"""The one error type of the checkpoint reader, and text from a file made safe to print.

A checkpoint comes from the internet: every name it carries (a global, a key, a zip member, even
the file's own name) may hold terminal escape codes, newlines or bidi overrides. Messages show
such text through `printable`, so an error stays one honest line.
"""

from __future__ import annotations

import os

# Escaped: what str.isprintable() rejects: controls (ESC, CR, LF, BEL), formats (bidi overrides,
# zero-width), separators, lone surrogates (undecodable file names), unassigned and private use
# characters (found by the fuzz suite in a safetensors key).
MAX_SHOWN = 120  # characters of one name in a message


def printable(text, limit: int = MAX_SHOWN) -> str:
  """`text` with every control or format character written as a Python escape, cut to `limit`."""
  if isinstance(text, bytes):
    text = text.decode('utf-8', 'backslashreplace')
  text = os.fspath(text) if isinstance(text, os.PathLike) else str(text)
  out = []
  for ch in text[:limit]:
    if not ch.isprintable():
      code = ord(ch)
      out.append(f'\\x{code:02x}' if code < 0x100 else f'\\u{code:04x}')
    else:
      out.append(ch)
  return ''.join(out) + ('...' if len(text) > limit else '')


class CheckpointError(ValueError):
  """A checkpoint file that cannot be read as weights: `path`, the `key` concerned (a tensor, a
  storage, a zip member, a pickle position) and what is wrong."""

  def __init__(self, path, problem: str, key=None):
    self.path, self.key, self.problem = path, key, problem
    where = f'{printable(path, 300)}: ' + (f'{printable(key)}: ' if key is not None else '')
    super().__init__(where + problem)


class UnsafeCheckpointError(CheckpointError):
  """The pickle asks for something that could run code: a global outside the allowlist, or an
  opcode that would call or mutate an object the reader did not create for this file."""
