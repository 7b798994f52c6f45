"""The command-line layer of every `python -m vaflax.<tool>`: flags, config overrides, one error line.

Each entry point builds its flags with `parser()` (argparse), parses them with `parse()` and runs
its body under `@entry_point`:

- `--config.<field>=<value>` overrides are split out of argv by `split_overrides` and applied by
  `apply_overrides`, the one override parser: a run's config.json (evaluate, predict, calibrate,
  export, `vaflax.load`), a config file (`load_config`: main, benchmark) and the `:arg` of a config
  file (`parse_arg`, configs/common.py) all parse values alike, by the type of the field they set,
  with ml_collections' own per-type parsers (those of `config_flags`): booleans true/t/1 and
  false/f/0 in any case (a bare `--config.flag` is true), ints in base 10 (0x.. and 0o.. too),
  floats as Python's float(), strings as given, tuples as a Python literal (`(1, 2)`, `[1, 2]`) or
  a single element, a group of fields as a dict literal. Two fields ml_collections refuses to
  override are accepted, as config.json needs them: a list (parsed as a tuple, stored as a list)
  and a None (a Python literal, else the text).
- `parse` runs after the flags are known and before JAX starts its backends: it turns glibc's
  trimming off on CPU-only machines (vaflax/cpu.py) and marks absl's flags parsed (Grain
  reads its options from them), so each entry point does neither itself.
- `entry_point` turns the errors a user can cause (a bad flag or override, a missing or unreadable
  file, a bad value in a file: `USER_ERRORS`) into one line `error: ...` on stderr, its control
  characters escaped (`printable`), and exit code 2. Anything else is a bug and keeps its
  traceback.

Why argparse and not absl flags: six of the eight tools already used it; absl keeps every flag in
one process-wide registry, so two tools defining `--config` in one process (a test worker) raise
DuplicateFlagError; and ml_collections' `config_flags` fails inside absl's parser, so a bad
override could only be worded by loading the config file a second time. Here the config is
loaded once and each override checked against it, with the key and its close matches named.
This module imports no JAX and nothing from vaflax but the media layer's error type.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import importlib.util
import os
import re
import sys

import ml_collections
from absl import flags as absl_flags
from ml_collections.config_flags import tuple_parser

from vaflax.media import InputError

# Errors a user causes (flags, files, values in files): one line and exit 2. CheckpointError,
# CalibrationError, CheckpointMismatchError and ConfigError are ValueErrors; CheckpointWriteError
# (a full disk) is an OSError.
USER_ERRORS = (InputError, OSError, ValueError, KeyError)
USAGE_EXIT_CODE = 2


class ConfigError(ValueError):
  """A `--config` file, argument or override that cannot be used; the message names it."""


# --- Text on one line -----------------------------------------------------------------------------

_CONTROL = re.compile(r'[\x00-\x1f\x7f-\x9f]')


def printable(s) -> str:
  """`s` with control characters escaped (\\n, \\x1b, ...) and bytes that are not UTF-8 (a file
  name read with Python's surrogate escapes, PEP 383) as \\xNN: a file name cannot forge or colour
  a log line."""
  s = str(s)
  try:
    s.encode('utf-8')
  except UnicodeEncodeError:
    s = s.encode('utf-8', 'surrogateescape').decode('utf-8', 'backslashreplace')
  return _CONTROL.sub(lambda m: repr(m.group())[1:-1], s)


# --- Overrides: the one parser ---------------------------------------------------------------------

_PREFIX = '--config.'
# ml_collections' config_flags parsers by field type (its _FIELD_TYPE_TO_PARSER), from absl.
_PARSERS = {bool: absl_flags.BooleanParser(), int: absl_flags.IntegerParser(),
            float: absl_flags.FloatParser(), tuple: tuple_parser.TupleParser()}


def split_overrides(argv) -> tuple[list[str], list[str]]:
  """(['a.b=value', ...] from the `--config.a.b=value` flags, the other flags), in order."""
  argv = list(argv)
  return ([a[len(_PREFIX):] for a in argv if a.startswith(_PREFIX)],
          [a for a in argv if not a.startswith(_PREFIX)])


def _literal(text: str):
  import ast  # noqa: PLC0415 -- only for None-valued fields and groups

  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    return text


def parse_value(text: str, field_type):
  """`text` as a value of a field of `field_type`, as ml_collections parses an override."""
  if field_type in _PARSERS:
    return _PARSERS[field_type].parse(text)
  if field_type is list:
    return list(_PARSERS[tuple].parse(text))
  if field_type is str:
    return text
  if field_type is type(None):
    return _literal(text)
  if isinstance(field_type, type) and issubclass(field_type, ml_collections.ConfigDict):
    value = _literal(text)
    if not isinstance(value, dict):
      raise ValueError('a group of fields takes a dict literal, e.g. "{\'a\': 1}"')
    return ml_collections.ConfigDict(value)
  raise ValueError(f'a field of type {field_type.__name__} cannot be set from the command line')


def _no_field(key: str, parts: list[str], i: int, node) -> ConfigError:
  known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
  close = difflib.get_close_matches(parts[i], known, n=3, cutoff=0.5)
  where = 'config.' + '.'.join(parts[:i]) if i else 'the config'
  hint = f' (did you mean {" or ".join(repr(c) for c in close)}?)' if close else ''
  return ConfigError(f'--config.{key}: {where} has no field {parts[i]!r}{hint}. Its fields: '
                     f'{", ".join(known) or "none (it is a value, not a group)"}')


def apply_overrides(config: ml_collections.ConfigDict, overrides) -> None:
  """Applies ['a.b=value', 'flag', ...] to `config` in place, in order; each value is parsed by
  the type of the field it sets (module doc). ConfigError names the override that fails."""
  for item in overrides:
    key, eq, text = item.partition('=')
    parts, node = key.split('.'), config
    for i, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise _no_field(key, parts, i, node)
      parent, node = node, node[part]
    field_type = parent.get_type(parts[-1])
    if not eq:  # absl's bare boolean flag
      if field_type is not bool:
        raise ConfigError(f'--config.{key}: expected --config.{key}=<value> (only a boolean '
                          'field may be given bare)')
      text = 'true'
    try:
      value = parse_value(text, field_type)
    except (ValueError, TypeError) as e:
      if isinstance(node, ml_collections.ConfigDict):
        raise ConfigError(f'--config.{key}={text}: config.{key} is a group of fields; set one of '
                          f'them, e.g. --config.{key}.{next(iter(node.keys()), "<field>")}=...'
                          ) from None
      raise ConfigError(f'--config.{key}={text}: config.{key} has type {field_type.__name__} (the '
                        f"config's value: {node!r}): {e}") from None
    parent[parts[-1]] = value


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """The `arg` of `get_config(arg)` ('runlocal,variant=50') as a ConfigDict over `defaults`; a
  bare word is a boolean set to true, a value takes the type of its default (`parse_value`)."""
  out = dict(defaults)
  for part in (p.strip() for p in (arg or '').split(',')):
    if not part:
      continue
    key, eq, text = part.partition('=')
    if key not in defaults:
      raise ConfigError(f'unknown config argument {key!r}; known: {", ".join(sorted(defaults))}')
    try:
      out[key] = parse_value(text if eq else 'true', type(defaults[key]))
    except (ValueError, TypeError) as e:
      raise ConfigError(f'config argument {part}: expected a {type(defaults[key]).__name__} '
                        f'like its default {defaults[key]!r}: {e}') from None
  return ml_collections.ConfigDict(out)


def load_config(spec: str, overrides=()) -> ml_collections.ConfigDict:
  """`--config=<file>.py[:arg]`: the file's `get_config(arg)` (`get_config()` without ':'), as
  ml_collections' config_flags loads it, with `overrides` applied, then locked (no new fields)."""
  path, colon, arg = spec.partition(':')
  if not os.path.isfile(path):
    folder = os.path.dirname(path) or '.'
    have = sorted(f for f in os.listdir(folder) if f.endswith('.py') and not f.startswith('_')
                  ) if os.path.isdir(folder) else []
    raise ConfigError(f'--config={spec}: no such file' +
                      (f'; {folder} has {", ".join(have)}' if have else ''))
  module_spec = importlib.util.spec_from_file_location('_vaflax_config', path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if colon else module.get_config()
  except ConfigError as e:
    raise ConfigError(f'--config={spec}: {e}') from None
  except (ImportError, AttributeError, TypeError, ValueError, KeyError) as e:
    raise ConfigError(f'--config={spec}: {type(e).__name__}: {e}') from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f'--config={spec}: get_config returned {type(config).__name__}, not a '
                      'ConfigDict')
  apply_overrides(config, overrides)
  config.lock()
  return config


# --- Flags and the one error line ----------------------------------------------------------------


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose usage errors are a ConfigError (one line, exit 2 under `entry_point`) instead
  of a usage block and SystemExit: an entry point called in-process returns 2."""

  def error(self, message):
    raise ConfigError(f'{message} (python -m {self.prog.removeprefix("python -m ")} --help '
                      'lists the flags)')


def parser(module: str, doc: str | None, line: int = 0) -> ArgumentParser:
  """The flags of `python -m <module>`, described by line `line` of its docstring."""
  return ArgumentParser(prog=f'python -m {module}', description=(doc or '').split('\n')[line])


def parse(ap: argparse.ArgumentParser, argv: list[str], overrides: bool = False):
  """Parses `argv`; with `overrides`, also returns the `--config.x=y` overrides split out of it
  (`(args, overrides)`). Then, before JAX starts its backends, the CPU allocator settings
  (vaflax/cpu.py) and absl's flags marked parsed (Grain reads them)."""
  found, rest = split_overrides(argv) if overrides else ([], argv)
  args = ap.parse_args(rest)
  from vaflax import cpu  # noqa: PLC0415 -- it imports JAX: not for --help or a bad flag

  cpu.keep_freed_memory()
  if not absl_flags.FLAGS.is_parsed():
    absl_flags.FLAGS.mark_as_parsed()
  return (args, found) if overrides else args


def report(error: BaseException) -> int:
  """Prints `error` as one line on stderr; returns the exit code 2."""
  print(f'error: {printable(error)}', file=sys.stderr, flush=True)
  return USAGE_EXIT_CODE


def wrote(folder, licence: str, seconds: float) -> int:
  """The last lines of a tool that writes a model folder (convert, export): the terms its
  weights come with, then where it went; returns the exit code 0."""
  print(f'licence: {licence}')
  print(f'wrote {printable(folder)} in {seconds:.1f} s')
  return 0


def entry_point(main):
  """`main(argv) -> int` as an entry point: argv defaults to sys.argv[1:], and a USER_ERRORS
  error becomes one `error: ...` line and 2."""

  @functools.wraps(main)
  def run(argv=None) -> int:
    try:
      return main(list(sys.argv[1:] if argv is None else argv))
    except USER_ERRORS as e:
      return report(e)

  return run
