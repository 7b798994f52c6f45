"""Reads PyTorch checkpoints without torch, without running code from them, and without trusting
one number they hold.

`read_checkpoint(path) -> {key: np.ndarray}` understands
- the zip archive that torch.save writes since 1.6 (`<root>/data.pkl` + one `<root>/data/<key>`
  member per storage),
- the legacy torch.save stream (a magic number, protocol and system-info pickles, the object
  pickle, the list of storage keys, then each storage as an int64 element count + raw bytes),
- `.safetensors`, through the `safetensors` package (its NumPy API), which enforces the format's
  rules (offsets in order, no overlap, no gap, the file exactly covered, no negative numbers),
- TorchScript archives (torch.jit.save; face-alignment 1.3+ ships its models so): the same zip
  layout, whose data.pkl holds the module tree as objects of `__torch__.*` classes. They stay
  inert data (convert/tensors.py) and are flattened to state_dict keys (`conv1.weight`). Their
  code and constants.pkl are never read.

The order of a read, so that nothing is allocated or cut before it is checked:
1. the pickle runs on convert/pickle_vm.py's machine with convert/tensors.py's allowlist: it
   yields dicts of `TensorRef`s (storage key, dtype, offset, size, stride: plain numbers);
2. the state dict is picked (`_state_dict`: nesting followed once, cycles and depth refused);
3. every picked tensor's view is checked against its storage's declared size (`check_view`) and
   its bytes counted against the budget;
4. each storage used is read once, after its size in the zip directory (or the legacy stream)
   is compared with the size the pickle declares, and counted against the budget;
5. the tensors are cut out of their storages.
The budget: bytes read plus bytes returned at most MAX_BYTES_PER_FILE_BYTE x the file's size +
MAX_BYTES_FLOOR (a torch.save file needs about 2x: its storages, then the tensors; tied weights
add one more). Set VAFLAX_CHECKPOINT_MAX_BYTES (bytes) to read a file that needs more.
Every refusal is a CheckpointError (UnsafeCheckpointError when the file asks to run or touch
code) naming the file, the key and what is wrong; docs/reliability.md lists the attacks tried.
"""

from __future__ import annotations

import lzma
import math
import os
import struct
import zipfile
import zlib

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open

from vaflax.convert import pickle_vm, tensors
from vaflax.convert.errors import CheckpointError, UnsafeCheckpointError, printable
from vaflax.convert.tensors import STORAGE_DTYPES, ScriptObject, StorageRef, TensorRef

__all__ = ['STORAGE_DTYPES', 'Checkpoint', 'CheckpointError', 'UnsafeCheckpointError',
           'read_checkpoint']

SAFETENSORS_DTYPES = {
    'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16, 'F64': np.float64,
    'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8,
    'BOOL': np.bool_,
}
# Keys under which training scripts nest the weights ({'model': sd} in MAE, 'state_dict' in many).
NESTED_KEYS = ('model', 'state_dict', 'model_state_dict', 'module')
MAX_NESTING = 8  # dicts followed through NESTED_KEYS
MAX_MODULE_DEPTH = 200  # TorchScript submodules in submodules
MAX_KEY = 1024  # characters of a state_dict key
MAX_BYTES_PER_FILE_BYTE = 4
MAX_BYTES_FLOOR = 16 << 20
MAX_BYTES_ENV = 'VAFLAX_CHECKPOINT_MAX_BYTES'
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# What zipfile raises on a broken archive (a bad directory, CRC, compression method, password).
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError,
               EOFError, OSError, ValueError, struct.error, zlib.error, lzma.LZMAError)


class Checkpoint(dict):
  """{key: array} as read, and the container it came from (`kind`: zip, legacy, safetensors or
  torchscript), which tells a mapper what the tensors cannot (convert/fan.py: the pooling)."""

  def __init__(self, tensors_, kind: str):
    super().__init__(tensors_)
    self.kind = kind


def max_bytes_for(file_size: int) -> int:
  """The default budget of a file of `file_size` bytes, or VAFLAX_CHECKPOINT_MAX_BYTES."""
  env = os.environ.get(MAX_BYTES_ENV, '').strip()
  if env:
    if not env.isdigit():
      raise ValueError(f'{MAX_BYTES_ENV}={printable(env, 40)}: expected a number of bytes')
    return int(env)
  return MAX_BYTES_PER_FILE_BYTE * file_size + MAX_BYTES_FLOOR


class Budget:
  def __init__(self, path, max_bytes: int, why: str):
    self.path, self.max_bytes, self.why, self.used = path, max_bytes, why, 0

  def take(self, nbytes: int, key, what: str):
    self.used += nbytes
    if self.used > self.max_bytes:
      raise CheckpointError(
          self.path, f'{what} ({nbytes} bytes) brings the bytes read and returned to {self.used}, '
          f'over the budget of {self.max_bytes} ({self.why}); if you trust the file, set '
          f'{MAX_BYTES_ENV}', key)


def read_checkpoint(path, max_bytes: int | None = None) -> Checkpoint:
  """{'layer1.0.conv1.weight': array, ...} from a .pth/.pt/.bin/.safetensors file or a
  TorchScript archive, in the source's layout and dtype (bfloat16 as ml_dtypes.bfloat16)."""
  path = os.fspath(path)
  with open(path, 'rb') as f:
    head = f.read(8)
    size = os.fstat(f.fileno()).st_size
  if max_bytes is None:
    why = (f'{MAX_BYTES_ENV}' if os.environ.get(MAX_BYTES_ENV, '').strip() else
           f'{MAX_BYTES_PER_FILE_BYTE} x the file size + {MAX_BYTES_FLOOR >> 20} MiB')
    budget = Budget(path, max_bytes_for(size), why)
  else:
    budget = Budget(path, max_bytes, 'max_bytes')
  if path.endswith('.safetensors'):
    return Checkpoint(_read_safetensors(path, budget), 'safetensors')
  if head[:4] == b'PK\x03\x04':
    try:
      z = zipfile.ZipFile(path)
    except _ZIP_ERRORS as e:
      raise _broken_zip(path, e) from None
    with z:
      return _read_zip(z, path, budget)
  if head[:2] == b'\x80\x02':
    with open(path, 'rb') as f:
      return _read_legacy(f, size, path, budget)
  raise CheckpointError(path, 'not a PyTorch checkpoint (zip or legacy pickle) nor .safetensors')


# --- Containers ----------------------------------------------------------------------------------


def _broken_zip(path, e: Exception, member=None) -> CheckpointError:
  return CheckpointError(path, f'a broken zip archive ({type(e).__name__}: {printable(e)})',
                         member)


def _member(z: zipfile.ZipFile, info: zipfile.ZipInfo, budget: Budget, what: str) -> bytes:
  """One archive member, its size from the zip directory counted before it is read."""
  budget.take(info.file_size, info.filename, what)
  try:
    raw = z.read(info)
  except _ZIP_ERRORS as e:
    raise _broken_zip(budget.path, e, info.filename) from None
  if len(raw) != info.file_size:  # zipfile checks CRCs, not every length
    raise CheckpointError(budget.path, f'{len(raw)} bytes, the zip directory says '
                          f'{info.file_size}', info.filename)
  return raw


def _read_zip(z: zipfile.ZipFile, path, budget: Budget) -> Checkpoint:
  infos = {i.filename: i for i in z.infolist()}
  pkl = [n for n in infos if n.endswith('/data.pkl') and n.count('/') == 1]
  if len(pkl) != 1:
    raise CheckpointError(path, f'a zip file with {len(pkl)} <name>/data.pkl members (a '
                          'torch.save archive has one)')
  root = pkl[0][:-len('data.pkl')]
  byteorder = infos.get(root + 'byteorder')
  if byteorder is not None and (byteorder.file_size > 16 or
                                _member(z, byteorder, budget, 'byteorder').strip() != b'little'):
    raise CheckpointError(path, 'big-endian checkpoint; not supported', byteorder.filename)
  data = _member(z, infos[pkl[0]], budget, 'the pickle')
  obj, _ = pickle_vm.load(data, path, tensors.Hooks(path))
  kind = 'torchscript' if isinstance(obj, ScriptObject) else 'zip'

  def storage_bytes(ref: StorageRef, key: str) -> bytes:
    info = infos.get(f'{root}data/{ref.key}')
    if info is None:
      raise CheckpointError(path, f'its storage {printable(ref.key)} is not in the archive', key)
    if info.file_size != ref.nbytes:
      raise CheckpointError(path, f'storage {printable(ref.key)} holds {info.file_size} bytes in '
                            f'the archive; the pickle declares {ref.numel} x {ref.dtype} = '
                            f'{ref.nbytes}', key)
    return _member(z, info, budget, 'its storage')

  return Checkpoint(_cut(_state_dict(obj, path), storage_bytes, budget), kind)


def _load_at(f, size: int, pos: int, path, hooks_of):
  """(object, offset after it, its hooks) of the pickle at `pos`: read from the file in growing
  pieces (its end is only known once it has run), never mapped, so a file that shrinks while it
  is read is an error, not a SIGBUS."""
  n = 1 << 20
  while True:
    f.seek(pos)
    data = f.read(n)
    hooks = hooks_of()
    try:
      obj, end = pickle_vm.load(data, path, hooks)
      return obj, pos + end, hooks
    except pickle_vm.PastEndError:
      if len(data) >= size - pos:  # the rest of the file was there: the pickle is cut short
        raise
      n *= 8


def _read_legacy(f, size: int, path, budget: Budget) -> Checkpoint:
  hooks_of = lambda: tensors.Hooks(path, legacy=True)  # noqa: E731
  magic, pos, _ = _load_at(f, size, 0, path, hooks_of)
  if type(magic) is not int or magic != _LEGACY_MAGIC:
    raise CheckpointError(path, 'neither a zip archive, a safetensors file nor a legacy '
                          'torch.save stream (wrong magic number)')
  _, pos, _ = _load_at(f, size, pos, path, hooks_of)  # protocol version
  sys_info, pos, _ = _load_at(f, size, pos, path, hooks_of)
  if isinstance(sys_info, dict) and sys_info.get('little_endian') is False:
    raise CheckpointError(path, 'big-endian checkpoint; not supported')
  obj, pos, hooks = _load_at(f, size, pos, path, hooks_of)
  keys, pos, _ = _load_at(f, size, pos, path, hooks_of)
  if not isinstance(keys, list) or not all(type(k) in (str, int) for k in keys):
    raise CheckpointError(path, 'the list of storage keys after the pickle is not a list of keys')
  # The storages follow, each an int64 element count and its bytes: where each one lies.
  declared = hooks.storages
  where = {}
  for key in map(str, keys):
    ref = declared.get(key)
    if ref is None:
      raise CheckpointError(path, 'the stream holds a storage no tensor declares',
                            f'storage {key}')
    f.seek(pos)
    head = f.read(8)
    if len(head) < 8:
      raise CheckpointError(path, 'the file ends before it', f'storage {key}')
    (count,) = struct.unpack('<q', head)
    if count != ref.numel:
      raise CheckpointError(path, f'{count} elements in the stream; the pickle declares '
                            f'{ref.numel}', f'storage {key}')
    where[key] = pos + 8
    pos += 8 + ref.nbytes
    if pos > size:
      raise CheckpointError(path, f'its {ref.nbytes} bytes run past the end of the file',
                            f'storage {key}')

  def storage_bytes(ref: StorageRef, key: str) -> bytes:
    if ref.key not in where:
      raise CheckpointError(path, f'its storage {printable(ref.key)} is not in the stream', key)
    budget.take(ref.nbytes, key, 'its storage')
    f.seek(where[ref.key])
    raw = f.read(ref.nbytes)
    if len(raw) != ref.nbytes:  # the file shrank since it was measured
      raise CheckpointError(path, f'the file ends inside its storage {ref.key}', key)
    return raw

  return Checkpoint(_cut(_state_dict(obj, path), storage_bytes, budget), 'legacy')


def _read_safetensors(path, budget: Budget) -> dict[str, np.ndarray]:
  out = {}
  try:
    with safe_open(path, framework='np', backend='pread') as f:  # read, never mapped
      for key in f.keys():
        piece = f.get_slice(key)
        code, shape = piece.get_dtype(), tuple(piece.get_shape())
        if code not in SAFETENSORS_DTYPES:
          raise CheckpointError(path, f'dtype {printable(code)} is not supported', key)
        dtype = np.dtype(SAFETENSORS_DTYPES[code])
        budget.take(math.prod(shape) * dtype.itemsize, key, 'the tensor')
        # With ml_dtypes imported (convert/tensors.py), the package's NumPy API gives BF16 as
        # ml_dtypes.bfloat16; without it, it raises. Checked here, never assumed.
        arr = f.get_tensor(key)
        if arr.dtype != dtype or arr.shape != shape:
          raise CheckpointError(path, f'the safetensors package gave {arr.dtype}{arr.shape} for '
                                f'{code}{shape}', key)
        out[key] = tensors.as_bool(arr) if arr.dtype == np.bool_ else arr
  except SafetensorError as e:
    raise CheckpointError(path, f'not a valid safetensors file: {printable(e, 300)}') from None
  return out


# --- From the pickle's objects to arrays ---------------------------------------------------------


def _state_dict(obj, path) -> dict[str, TensorRef]:
  """The tensors of a loaded checkpoint: descends into a 'model'/'state_dict' entry when the top
  level holds no tensors itself, and drops `module.` prefixes (DataParallel/DDP)."""
  if isinstance(obj, ScriptObject):
    obj = _script_tensors(obj, path)
  seen = set()
  while isinstance(obj, dict) and not any(isinstance(v, TensorRef) for v in obj.values()):
    nested = [k for k in NESTED_KEYS if isinstance(obj.get(k), dict)]
    if not nested:
      break
    seen.add(id(obj))
    obj = obj[nested[0]]
    if id(obj) in seen:
      raise CheckpointError(path, 'a dict that contains itself (a cycle)', nested[0])
    if len(seen) > MAX_NESTING:
      raise CheckpointError(path, f'weights nested more than {MAX_NESTING} dicts deep', nested[0])
  if not isinstance(obj, dict):
    raise CheckpointError(path, f'holds a {type(obj).__name__}, not a dict of tensors')
  out = {}
  for k, v in obj.items():
    if not isinstance(v, TensorRef):
      continue
    k = str(k)
    if len(k) > MAX_KEY:
      raise CheckpointError(path, f'a key of {len(k)} characters (at most {MAX_KEY})', k)
    while k.startswith('module.'):
      k = k[len('module.'):]
    if k in out:
      raise CheckpointError(path, 'two tensors under this name once `module.` is dropped', k)
    out[k] = v
  if not out:
    shown = ', '.join(printable(k, 40) for k in list(obj)[:8])
    raise CheckpointError(path, f'no tensors found (top-level keys: {shown})')
  return out


def _script_tensors(root: ScriptObject, path) -> dict[str, TensorRef]:
  """A TorchScript module tree -> state_dict entries (parameters and buffers by attribute name).
  Each module is visited once: one shared by two parents is listed under its first name (as
  torch's named_modules does), one that contains itself is an error."""
  out, done, active = {}, set(), set()

  def visit(obj: ScriptObject, prefix: str, depth: int):
    if depth > MAX_MODULE_DEPTH or len(prefix) > MAX_KEY:
      raise CheckpointError(path, f'TorchScript modules nested deeper than {MAX_MODULE_DEPTH} '
                            f'(or a key over {MAX_KEY} characters)', prefix[:80])
    active.add(id(obj))
    for k, v in (obj.state or {}).items():
      name = f'{prefix}{k}'
      if isinstance(v, TensorRef):
        out[name] = v
      elif isinstance(v, ScriptObject):
        if id(v) in active:
          raise CheckpointError(path, 'a TorchScript module that contains itself (a cycle)', name)
        if id(v) not in done:
          visit(v, name + '.', depth + 1)
    active.discard(id(obj))
    done.add(id(obj))

  visit(root, '', 0)
  return out


def _cut(refs: dict[str, TensorRef], storage_bytes, budget: Budget) -> dict[str, np.ndarray]:
  """Arrays for `refs`: every view checked and counted first, then each storage read once
  (`storage_bytes(ref, key)`) and the tensors cut out of it."""
  for key, ref in refs.items():
    problem = tensors.check_view(ref)
    if problem:
      raise CheckpointError(budget.path, problem, key)
    budget.take(ref.numel * ref.storage.dtype.itemsize, key, 'the tensor')
  flats, out = {}, {}
  for key, ref in refs.items():
    s = ref.storage
    raw = flats.get(s.key)
    if raw is None:
      raw = flats[s.key] = storage_bytes(s, key)
    out[key] = tensors.materialise(ref, np.frombuffer(raw, s.dtype, count=s.numel))
  return out
