"""Fuzzing the checkpoint reader (issue 26) with Hypothesis.

The property, for every generated file: `read_checkpoint` returns str -> ndarray whose bytes fit
the budget, every value the storage element its offset and strides name (when the generator
knows them), or it raises CheckpointError; nothing else, within a time and memory bound.
Generators: random opcode streams, state dicts of allowlisted rebuilds with random numbers,
random nested data through Python's own pickler (protocols 0-5: the machine must read exactly
what it wrote), zip archives with random members and damage, safetensors headers.

  .venv/bin/python -m pytest -q tests/reader_fuzz_test.py               # CI: bounded examples
  VAFLAX_FUZZ=long VAFLAX_FUZZ_SECONDS=1800 .venv/bin/python -m pytest -s tests/reader_fuzz_test.py

The long profile repeats each test's search until its share of VAFLAX_FUZZ_SECONDS is spent and
prints the example counts.
"""

import collections
import contextlib
import io
import json
import math
import os
import pickle
import struct
import sys
import tempfile
import time
import tracemalloc
import types
import zipfile

import checkpoint_craft as craft  # tests/checkpoint_craft.py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaflax.convert import pickle_vm, reader, tensors
from vaflax.convert.errors import CheckpointError

LONG = os.environ.get('VAFLAX_FUZZ') == 'long'
SECONDS = float(os.environ.get('VAFLAX_FUZZ_SECONDS', '1800'))
CI_EXAMPLES = int(os.environ.get('VAFLAX_FUZZ_EXAMPLES', '60'))
CPU_SECONDS_PER_READ = 10.0  # a hang guard, far above any read here (they take milliseconds)
MEMORY_SLACK = 64 << 20  # Python objects of the pickle on top of the byte budget
# Long: rounds of 200 fresh random examples, repeated until the time is spent (Hypothesis checks
# no clock itself; a round is short enough to stop near the end).
FUZZ = settings(max_examples=200 if LONG else CI_EXAMPLES, deadline=None, database=None,
                derandomize=not LONG, suppress_health_check=list(HealthCheck))
STATS = collections.defaultdict(collections.Counter)
TESTS = 6  # the long profile splits VAFLAX_FUZZ_SECONDS between the tests below


def repeat(test, *args):
  """Runs the Hypothesis test `test` once (CI), or again and again for its share of
  VAFLAX_FUZZ_SECONDS (long), then prints what its examples did."""
  end = time.monotonic() + (SECONDS / TESTS if LONG else 0)
  rounds = 0
  name = test.__name__.lstrip('_')
  s = STATS[name]
  while True:
    test(*args)
    rounds += 1
    if LONG:
      print(f'{time.strftime("%H:%M:%S")} fuzz {name}: round {rounds}, {s["examples"]} examples '
            f'so far, {s["unexpected"]} unexpected', flush=True)
    if time.monotonic() >= end:
      break
  print(f'\nfuzz {name}: {rounds} rounds, {s["examples"]} examples ({s["read"]} read, '
        f'{s["refused"]} refused, {s["unexpected"]} unexpected exceptions)', flush=True)
  assert s['examples'] > 0 and s['unexpected'] == 0


@pytest.fixture(scope='module')
def folder():
  with tempfile.TemporaryDirectory(prefix='vaflax_fuzz_') as d:
    yield d


def check_read(path, name: str, expected: dict | None = None):
  """The property. `expected`: {key: array} the read must give when it succeeds, if known."""
  size = os.path.getsize(path)
  budget = reader.max_bytes_for(size)
  STATS[name]['examples'] += 1
  t0 = time.process_time()
  tracemalloc.start()
  try:
    got = reader.read_checkpoint(path)
  except CheckpointError as e:
    STATS[name]['refused'] += 1
    assert str(e).startswith(f'{path}: ') and str(e).isprintable()
    return None
  except Exception:
    STATS[name]['unexpected'] += 1
    raise
  finally:
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.process_time() - t0 < CPU_SECONDS_PER_READ
    assert peak <= budget + MEMORY_SLACK, (peak, budget)
  STATS[name]['read'] += 1
  assert all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in got.items())
  assert sum(v.nbytes for v in got.values()) <= budget
  if expected is not None:
    assert sorted(got) == sorted(expected)
    for k, want in expected.items():
      assert got[k].dtype == want.dtype and got[k].shape == want.shape, k
      np.testing.assert_array_equal(got[k], want, err_msg=k)
  return got


# --- Random opcode streams ----------------------------------------------------------------------


def _opcode_token():
  """One opcode the machine knows (or any byte), with argument bytes that are often the right
  length and sometimes not."""
  small_int = st.integers(0, 3).map(lambda i: struct.pack('<I', i))
  return st.tuples(st.sampled_from(pickle_vm.OPCODES) | st.binary(min_size=1, max_size=1),
                   st.one_of(st.just(b''), st.binary(max_size=2), small_int,
                             st.sampled_from([b'torch\nFloatStorage\n', b'collections\n'
                                              b'OrderedDict\n', b'\x04\x00\x00\x00abcd',
                                              b'os\nsystem\n', b'0\n', b'\xff\xff\xff\x7f'])))


@given(tokens=st.lists(_opcode_token(), max_size=60), end=st.booleans(),
       fmt=st.sampled_from(['zip', 'legacy', 'machine']))
@settings(FUZZ)
def _random_opcodes(folder, tokens, end, fmt):
  data = b''.join(op + arg for op, arg in tokens) + (b'.' if end else b'')
  if fmt == 'machine':  # the pickle machine alone, with the reader's hooks
    STATS['random_opcodes']['examples'] += 1
    try:
      pickle_vm.load(data, 'fuzz', tensors.Hooks('fuzz'))
      STATS['random_opcodes']['read'] += 1
    except CheckpointError:
      STATS['random_opcodes']['refused'] += 1
    return
  path = os.path.join(folder, 'ops.pth')
  if fmt == 'zip':
    craft.zip_checkpoint(path, data, {'0': craft.f32(4)})
  else:
    craft.legacy_checkpoint(path, data, [('0', 4, craft.f32(4))])
  check_read(path, 'random_opcodes')


def test_random_opcodes(folder):
  repeat(_random_opcodes, folder)


# --- State dicts of allowlisted rebuilds with random numbers ------------------------------------

ANY_INT = st.one_of(st.integers(0, 12), st.integers(-4, 40), st.sampled_from(
    [-(1 << 20), 1 << 20, 1 << 31, 1 << 48, (1 << 63) - 1, 1 << 70, -(1 << 64)]))


@st.composite
def _tensor_specs(draw):
  """{name: (storage key, numel, offset, size, stride, storage class)}: in half of the files
  every tensor a valid view (strides of some dimension order, its own storage about large
  enough), in the others each tensor valid or anything."""
  out, valid = {}, draw(st.booleans())
  for i in range(draw(st.integers(1, 4))):
    rank = draw(st.integers(0, 3))
    key = str(i) if valid else draw(st.sampled_from(['0', '1', '../0']))
    cls = draw(st.sampled_from(sorted(craft.ITEMSIZE)))
    if valid or draw(st.booleans()):
      size = draw(st.lists(st.integers(0, 4), min_size=rank, max_size=rank))
      order = draw(st.permutations(range(rank)))
      stride, step = [0] * rank, 1
      for d in order:
        stride[d] = step
        step *= max(size[d], 1) + draw(st.integers(0, 1))
      offset = draw(st.integers(0, 3))
      numel = offset + step + draw(st.integers(-1, 2))
    else:
      size = draw(st.lists(st.integers(0, 4) | ANY_INT, min_size=rank, max_size=rank))
      stride = draw(st.lists(st.integers(0, 6) | ANY_INT, min_size=rank, max_size=rank))
      if draw(st.booleans()):
        stride = stride[:draw(st.integers(0, rank))] + draw(st.lists(ANY_INT, max_size=1))
      offset, numel = draw(st.integers(0, 8) | ANY_INT), draw(st.integers(0, 64) | ANY_INT)
    out[f't{i}'] = (key, numel, offset, tuple(size), tuple(stride), cls)
  return out


def _expected(spec, storages) -> dict | None:
  """What a correct reader returns for `spec`, computed by indexing by hand (None: unknown)."""
  out = {}
  for name, (key, numel, off, size, stride, cls) in spec.items():
    dtype = np.dtype(tensors.STORAGE_DTYPES[cls])
    raw = storages.get(key)
    if (raw is None or len(raw) != numel * dtype.itemsize or min((*size, *stride, off), default=0)
        < 0 or len(size) != len(stride) or max(size, default=0) > 4096 or math.prod(size) > 4096):
      return None  # (np.ndindex(0, 2**48) would build a tuple of 2**48 indices: found so)
    flat = np.frombuffer(raw, dtype)
    want = np.zeros(size, dtype)
    for idx in np.ndindex(*size):
      at = off + sum(a * s for a, s in zip(idx, stride, strict=True))
      if at >= numel:
        return None
      want[idx] = flat[at]
    if dtype == np.bool_:
      want = want.view(np.uint8) != 0
    out[name] = want
  return out


@given(spec=_tensor_specs(), data=st.data(), fmt=st.sampled_from(['zip', 'legacy']),
       nest=st.sampled_from([None, 'model', 'state_dict', 'module.']))
@settings(FUZZ)
def _allowlisted_rebuilds(folder, spec, data, fmt, nest):
  storages, counts = {}, {}
  for key in sorted({s[0] for s in spec.values()}):
    numel, cls = next((s[1], s[5]) for s in spec.values() if s[0] == key)
    counts[key] = numel if data.draw(st.integers(0, 4)) > 0 else data.draw(st.integers(-9, 1 << 62))
    exact = 0 <= numel <= 4096 and data.draw(st.integers(0, 4)) > 0
    n = numel * craft.ITEMSIZE[cls] if exact else data.draw(st.integers(0, 64))
    storages[key] = data.draw(st.binary(min_size=n, max_size=n))
  pkl = craft.state_dict(spec)
  if nest in ('model', 'state_dict'):  # {'epoch': 3, nest: state_dict}
    pkl = craft.Pickle().raw(b'}(').str('epoch').int(3).str(nest).raw(pkl[2:-1] + b'u').bytes()
  elif nest == 'module.':
    spec = {f'module.{k}': v for k, v in spec.items()}
    pkl = craft.state_dict(spec)
  path = os.path.join(folder, 'sd.pth')
  if fmt == 'zip':
    craft.zip_checkpoint(path, pkl, storages)
  else:
    craft.legacy_checkpoint(path, pkl, [(k, max(-(1 << 63), min(counts[k], (1 << 63) - 1)), v)
                                         for k, v in storages.items()])
  expected = _expected({k.removeprefix('module.'): v for k, v in spec.items()}, storages)
  check_read(path, 'allowlisted_rebuilds', expected)


def test_allowlisted_rebuilds(folder):
  repeat(_allowlisted_rebuilds, folder)


# --- Python's own pickler, protocols 0-5: the machine reads exactly what it wrote ---------------

SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(10 ** 50), 10 ** 50),
                   st.floats(allow_nan=False), st.text(max_size=12))


def _data(protocol: int):
  leaf = SCALAR | (st.binary(max_size=8) if protocol >= 3 else st.nothing())
  keys = st.one_of(st.text(max_size=6), st.integers(-5, 5))
  def extend(children):
    out = st.lists(children, max_size=4) | st.tuples(children, children) | st.dictionaries(
        keys, children, max_size=4) | st.lists(children, max_size=3).map(tuple)
    if protocol >= 4:
      out |= st.frozensets(SCALAR.filter(lambda x: x == x), max_size=3)
    return out
  return st.recursive(leaf, extend, max_leaves=20)


@given(data=st.data(), protocol=st.integers(0, 5))
@settings(FUZZ)
def _python_pickler(protocol, data):
  value = data.draw(_data(protocol))
  blob = pickle.dumps(value, protocol=protocol)
  STATS['python_pickler']['examples'] += 1
  got, end = pickle_vm.load(blob, 'fuzz', tensors.Hooks('fuzz'))
  STATS['python_pickler']['read'] += 1
  assert end == len(blob)
  assert _same(got, value), (got, value)


def _same(a, b) -> bool:
  if type(a) is not type(b):
    return False
  if isinstance(a, list | tuple):
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
  if isinstance(a, dict):
    return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
  return a == b


def test_python_pickler():
  repeat(_python_pickler)


@contextlib.contextmanager
def _fake_torch():
  """`torch` and `torch._utils` modules with the names torch.save pickles, so Python's pickler
  writes real torch-style globals at any protocol (only for the duration of one example)."""
  torch, utils = types.ModuleType('torch'), types.ModuleType('torch._utils')
  def rebuild(*args):
    raise AssertionError('never called')
  rebuild.__module__, rebuild.__qualname__ = 'torch._utils', '_rebuild_tensor_v2'
  utils._rebuild_tensor_v2 = rebuild
  storage = type('FloatStorage', (), {'__module__': 'torch'})
  torch.FloatStorage, torch._utils = storage, utils
  saved = {k: sys.modules.get(k) for k in ('torch', 'torch._utils')}
  sys.modules.update({'torch': torch, 'torch._utils': utils})
  try:
    yield rebuild, storage
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v


class _Tensor:
  def __init__(self, rebuild, storage, numel, offset, size, stride):
    self.args = rebuild, storage, numel, offset, size, stride

  def __reduce__(self):
    rebuild, storage, numel, offset, size, stride = self.args
    return rebuild, (('storage', storage, '0', 'cpu', numel), offset, size, stride, False,
                     collections.OrderedDict())


class _Pickler(pickle.Pickler):
  def persistent_id(self, obj):
    return obj if isinstance(obj, tuple) and obj[:1] == ('storage',) else None


@given(protocol=st.integers(0, 5), n=st.integers(1, 6), offset=st.integers(0, 3),
       extra=_data(2), wrap=st.booleans())
@settings(FUZZ)
def _python_pickler_tensors(folder, protocol, n, offset, extra, wrap):
  with _fake_torch() as (rebuild, storage):
    sd = collections.OrderedDict(w=_Tensor(rebuild, storage, n + offset, offset, (n,), (1,)))
    obj = {'state_dict': sd, 'extra': extra} if wrap else sd
    buf = io.BytesIO()
    _Pickler(buf, protocol=protocol).dump(obj)
  path = os.path.join(folder, 'py.pth')
  craft.zip_checkpoint(path, buf.getvalue(), {'0': craft.f32(n + offset)})
  check_read(path, 'python_pickler_tensors',
             {'w': np.arange(offset, offset + n, dtype=np.float32)})


def test_python_pickler_tensors(folder):
  repeat(_python_pickler_tensors, folder)


# --- Zip archives --------------------------------------------------------------------------------

MEMBERS = ['archive/data.pkl', 'archive/byteorder', 'archive/data/0', 'archive/data/1',
           'other/data.pkl', 'archive/data/../0', '../evil', 'archive/version', 'a/b/data.pkl']


VALID = {'archive/data.pkl': craft.state_dict({'w': ('0', 4, 0, (4,), (1,))}),
         'archive/data/0': craft.f32(4), 'archive/byteorder': b'little'}


@given(base=st.booleans(), members=st.dictionaries(st.sampled_from(MEMBERS), st.one_of(
    st.binary(max_size=40), st.just(craft.f32(4)), st.just(b'little'), st.just(b'big'),
    st.just(craft.state_dict({'w': ('0', 4, 0, (4,), (1,))})),
    st.just(craft.state_dict({'w': ('1', 2, 1, (2, 1), (1, 0))}))), max_size=6),
    compression=st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                                 zipfile.ZIP_LZMA]),
    damage=st.just([]) | st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                                  max_size=3),
    cut=st.none() | st.none() | st.integers(0, 2000))
@settings(FUZZ)
def _zip_archives(folder, base, members, compression, damage, cut):
  """A valid archive (or none) with members replaced or added, compressed, damaged, cut."""
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, 'w', compression) as z:
    for name, data in ({**VALID, **members} if base else members).items():
      z.writestr(name, data)
  raw = bytearray(buf.getvalue())
  for at, value in damage:  # flipped bytes anywhere: headers, directory, data
    if raw:
      raw[at % len(raw)] = value
  raw = raw[:cut] if cut is not None and cut > 4 else raw
  path = os.path.join(folder, 'z.pth')
  with open(path, 'wb') as f:
    f.write(b'PK\x03\x04' + bytes(raw[4:]))
  check_read(path, 'zip_archives')


def test_zip_archives(folder):
  repeat(_zip_archives, folder)


# --- safetensors headers -------------------------------------------------------------------------

DTYPES = sorted(reader.SAFETENSORS_DTYPES) + ['F8_E4M3', 'U64', 'C64', 'X', '']


@st.composite
def _safetensors(draw):
  """(header bytes, data, expected or None): consistent headers (expected known) or random."""
  if draw(st.booleans()):  # consistent: offsets in order, the data exactly covered
    header, data, expected, at = {}, b'', {}, 0
    for i in range(draw(st.integers(0, 3))):
      code = draw(st.sampled_from(sorted(reader.SAFETENSORS_DTYPES)))
      dtype = np.dtype(reader.SAFETENSORS_DTYPES[code])
      shape = draw(st.lists(st.integers(0, 3), max_size=3))
      raw = draw(st.binary(min_size=math.prod(shape) * dtype.itemsize,
                           max_size=math.prod(shape) * dtype.itemsize))
      header[f'k{i}'] = {'dtype': code, 'shape': shape, 'data_offsets': [at, at + len(raw)]}
      want = np.frombuffer(raw, dtype).reshape(shape)
      expected[f'k{i}'] = want.view(np.uint8) != 0 if dtype == np.bool_ else want
      data, at = data + raw, at + len(raw)
    if draw(st.booleans()):
      header['__metadata__'] = {'format': 'pt'}
    return json.dumps(header).encode(), data, expected
  entry = st.fixed_dictionaries({}, optional={
      'dtype': st.sampled_from(DTYPES) | st.integers(), 'shape': st.lists(ANY_INT, max_size=3),
      'data_offsets': st.lists(ANY_INT, max_size=3)})
  header = draw(st.dictionaries(st.text(max_size=4), entry | st.integers() | st.none(),
                                max_size=3))
  head = json.dumps(header).encode()
  if draw(st.booleans()):
    head = draw(st.binary(max_size=30)) + head[:draw(st.integers(0, len(head)))]
  return head, draw(st.binary(max_size=64)), None


@given(case=_safetensors(), header_len=st.none() | ANY_INT.filter(lambda n: 0 <= n < 1 << 64))
@settings(FUZZ)
def _safetensors_headers(folder, case, header_len):
  head, data, expected = case
  path = craft.safetensors_file(os.path.join(folder, 'x.safetensors'), head, data, header_len)
  check_read(path, 'safetensors_headers', expected if header_len is None else None)


def test_safetensors_headers(folder):
  repeat(_safetensors_headers, folder)
