"""Reads PyTorch checkpoints without torch and without running code from them.

`read_checkpoint(path) -> {key: np.ndarray}` understands
- the zip archive that torch.save writes since 1.6 (`<root>/data.pkl` + one `<root>/data/<key>`
  file per storage),
- the legacy torch.save stream (a magic number, protocol and system-info pickles, the object
  pickle, the list of storage keys, then each storage as an int64 element count + raw bytes),
- `.safetensors` (an 8-byte header length, a JSON header, raw little-endian data), parsed here:
  the format is 20 lines and a dependency for it would not be worth its weight,
- TorchScript archives (torch.jit.save; face-alignment 1.3+ ships its models so): the same zip
  layout, whose data.pkl holds the module tree as objects of `__torch__.*` classes. Those become
  inert `_ScriptObject`s (a name and the attribute dict the pickle gives them; no class, no code
  of the file is ever resolved), flattened to state_dict keys (`conv1.weight`, `bn1.running_mean`).

Unpickling goes through `_Unpickler`, whose `find_class` returns only the tensor-rebuild
functions below (our own NumPy versions, never torch's), storage type markers and
`collections.OrderedDict`; any other global is refused with an error naming it and the file.
`find_class` runs when the pickle names a global, before it can be called, so a checkpoint whose
pickle would run a command fails before the command runs (tests/convert_test.py checks this).
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np


class UnsafeCheckpointError(pickle.UnpicklingError):
  """The pickle of a checkpoint names a global that is not a tensor, storage or container."""


# torch storage class name -> NumPy dtype (bfloat16 through ml_dtypes, which jax already needs).
STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'HalfStorage': np.float16, 'BFloat16Storage': ml_dtypes.bfloat16,
    'DoubleStorage': np.float64, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}
SAFETENSORS_DTYPES = {
    'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16, 'F64': np.float64,
    'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8,
    'BOOL': np.bool_,
}
# Keys under which training scripts nest the weights ({'model': sd} in MAE, 'state_dict' in many).
NESTED_KEYS = ('model', 'state_dict', 'model_state_dict', 'module')


class _Storage:
  """A storage read from the file: a flat array of its dtype (shared by the tensors using it)."""

  def __init__(self, data: np.ndarray):
    self.data = data


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  """torch._utils._rebuild_tensor(_v2) in NumPy: a strided view into the storage, copied."""
  data = storage.data
  size, stride = tuple(size), tuple(stride)
  if not size:
    return np.array(data[storage_offset])
  extent = storage_offset + 1 + sum((n - 1) * s for n, s in zip(size, stride, strict=True) if n > 0)
  if min(size) > 0 and extent > data.size:
    raise pickle.UnpicklingError(f'tensor of size {size}, stride {stride} at offset '
                                 f'{storage_offset} runs past its storage of {data.size}')
  view = np.lib.stride_tricks.as_strided(
      data[storage_offset:], shape=size, strides=[s * data.itemsize for s in stride],
      writeable=False)
  return np.ascontiguousarray(view)


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *unused):
  return data


class _StorageType:
  def __init__(self, name):
    self.name = name


class _ScriptObject:
  """A TorchScript module (or other `__torch__.*` object) as data: its qualified class name and
  the state its pickle BUILDs it with. Created by NEWOBJ with no arguments; nothing else runs."""

  qualname = ''

  def __setstate__(self, state):
    self.state = state


def _script_class(qualname: str) -> type:
  return type('_ScriptObject', (_ScriptObject,), {'qualname': qualname})


def _identity(obj, *unused):
  return obj


_ALLOWED = {
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
    ('collections', 'OrderedDict'): collections.OrderedDict,
    # TorchScript's typed-container tags: the container itself is the value.
    **{('torch.jit._pickle', name): _identity for name in (
        'restore_type_tag', 'build_intlist', 'build_floatlist', 'build_doublelist',
        'build_boollist', 'build_tensorlist')},
    **{('torch', name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
  """Allowlist unpickler; storages come from `load_storage(key, dtype, numel)`."""

  def __init__(self, file, path, load_storage):
    super().__init__(file)
    self.path, self.load_storage, self.storages = path, load_storage, {}

  def find_class(self, module, name):
    if module.startswith('__torch__.') or module == '__torch__':
      return _script_class(f'{module}.{name}')  # inert: never the class the name would import
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise UnsafeCheckpointError(
          f'{self.path}: the checkpoint\'s pickle names the global {module}.{name}, which is not a '
          'tensor, storage or container; refused (reading a checkpoint never runs code from it). '
          'If you trust the file, re-save just its state_dict with torch: '
          'torch.save(torch.load(f, weights_only=False)["model"], "weights.pth")') from None

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid or pid[0] != 'storage':
      raise pickle.UnpicklingError(f'{self.path}: unknown persistent id {pid!r:.80}')
    storage_type, key, _location, numel = pid[1:5]
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f'{self.path}: storage of unknown type {storage_type!r:.80}')
    key = str(key)
    if key not in self.storages:
      dtype = np.dtype(STORAGE_DTYPES[storage_type.name])
      self.storages[key] = _Storage(self.load_storage(key, dtype, int(numel)))
    return self.storages[key]


def _read_zip(path) -> object:
  with zipfile.ZipFile(path) as z:
    names = z.namelist()
    pkl = [n for n in names if n.endswith('data.pkl') and n.count('/') == 1]
    if not pkl:
      raise ValueError(f'{path}: a zip file without <name>/data.pkl (not a torch.save archive)')
    root = pkl[0][:-len('data.pkl')]
    byteorder = root + 'byteorder'
    if byteorder in names and z.read(byteorder).strip() != b'little':
      raise ValueError(f'{path}: big-endian checkpoint; not supported')

    def load_storage(key, dtype, numel):
      raw = z.read(f'{root}data/{key}')
      return np.frombuffer(raw, dtype, count=numel) if numel else np.zeros(0, dtype)

    return _Unpickler(io.BytesIO(z.read(pkl[0])), path, load_storage).load()


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _read_legacy(path) -> object:
  with open(path, 'rb') as f:
    header = _Unpickler(f, path, None)
    if header.load() != _LEGACY_MAGIC:
      raise ValueError(f'{path}: neither a zip archive, a safetensors file nor a legacy '
                       'torch.save stream')
    header.load()  # protocol version
    sys_info = header.load()
    if isinstance(sys_info, dict) and not sys_info.get('little_endian', True):
      raise ValueError(f'{path}: big-endian checkpoint; not supported')
    pending = {}  # key -> (dtype, numel); filled while the object pickle is read

    def load_storage(key, dtype, numel):
      pending[key] = _Storage(np.zeros(0, dtype))
      return pending[key]

    # Storages follow the object pickle, so the tensors are rebuilt after they are read: the
    # unpickler hands out placeholders and the rebuild is deferred through `_Deferred`.
    obj = _LegacyUnpickler(f, path, load_storage).load()
    keys = _Unpickler(f, path, None).load()
    for key in keys:
      (count,) = struct.unpack('<q', f.read(8))
      placeholder = pending[str(key)]
      dtype = placeholder.data.dtype
      placeholder.data = np.frombuffer(f.read(count * dtype.itemsize), dtype, count=count)
    return _resolve(obj)


class _Deferred:
  def __init__(self, fn, args):
    self.fn, self.args = fn, args


class _LegacyUnpickler(_Unpickler):
  """Legacy streams: storages are placeholders until read, so rebuilds are deferred."""

  def find_class(self, module, name):
    fn = super().find_class(module, name)
    if fn in (_rebuild_tensor, _rebuild_parameter):
      return lambda *args: _Deferred(fn, args)
    return fn

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != 'storage':
      raise pickle.UnpicklingError(f'{self.path}: unknown persistent id {pid!r:.80}')
    storage_type, key = pid[1], str(pid[2])
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f'{self.path}: storage of unknown type {storage_type!r:.80}')
    if len(pid) > 5 and pid[5] is not None:
      raise ValueError(f'{self.path}: storage views (pre-1.0 torch.save) are not supported')
    if key not in self.storages:
      self.storages[key] = self.load_storage(key, np.dtype(STORAGE_DTYPES[storage_type.name]),
                                             int(pid[4]))
    return self.storages[key]


def _resolve(obj):
  if isinstance(obj, _Deferred):
    return obj.fn(*(_resolve(a) for a in obj.args))
  if isinstance(obj, dict):
    out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
    for k, v in obj.items():
      out[k] = _resolve(v)
    return out
  if isinstance(obj, (list, tuple)):
    return type(obj)(_resolve(x) for x in obj)
  return obj


def _read_safetensors(path) -> dict[str, np.ndarray]:
  with open(path, 'rb') as f:
    (n,) = struct.unpack('<Q', f.read(8))
    if n > 100_000_000:
      raise ValueError(f'{path}: safetensors header of {n} bytes; not a safetensors file?')
    header = json.loads(f.read(n))
    data = f.read()
  out = {}
  for key, info in header.items():
    if key == '__metadata__':
      continue
    if info['dtype'] not in SAFETENSORS_DTYPES:
      raise ValueError(f'{path}: {key} has dtype {info["dtype"]}, not supported')
    begin, end = info['data_offsets']
    dtype = np.dtype(SAFETENSORS_DTYPES[info['dtype']])
    arr = np.frombuffer(data[begin:end], dtype)
    out[key] = arr.reshape(info['shape']).copy()
  return out


class Checkpoint(dict):
  """{key: array} as read, and the container it came from (`kind`: zip, legacy, safetensors or
  torchscript), which tells a mapper what the tensors cannot (convert/fan.py: the pooling)."""

  def __init__(self, tensors, kind: str):
    super().__init__(tensors)
    self.kind = kind


def _script_tensors(obj: _ScriptObject, prefix: str = '') -> dict:
  """A TorchScript module tree -> state_dict entries (parameters and buffers by attribute name)."""
  out = {}
  state = getattr(obj, 'state', None)
  if not isinstance(state, dict):
    return out
  for k, v in state.items():
    if isinstance(v, np.ndarray):
      out[f'{prefix}{k}'] = v
    elif isinstance(v, _ScriptObject):
      out.update(_script_tensors(v, f'{prefix}{k}.'))
  return out


def _state_dict(obj, path) -> dict[str, np.ndarray]:
  """The tensors of a loaded checkpoint: descends into a 'model'/'state_dict' entry when the top
  level holds no tensors itself, and drops `module.` prefixes (DataParallel/DDP)."""
  if isinstance(obj, _ScriptObject):
    obj = _script_tensors(obj)
  while isinstance(obj, dict) and not any(isinstance(v, np.ndarray) for v in obj.values()):
    nested = [k for k in NESTED_KEYS if isinstance(obj.get(k), dict)]
    if not nested:
      break
    obj = obj[nested[0]]
  if not isinstance(obj, dict):
    raise ValueError(f'{path}: holds a {type(obj).__name__}, not a dict of tensors')
  out = {}
  for k, v in obj.items():
    if not isinstance(v, np.ndarray):
      continue
    k = str(k)
    while k.startswith('module.'):
      k = k[len('module.'):]
    out[k] = v
  if not out:
    raise ValueError(f'{path}: no tensors found (top-level keys: {list(obj)[:8]})')
  return out


def read_checkpoint(path: str) -> Checkpoint:
  """{'layer1.0.conv1.weight': array, ...} from a .pth/.pt/.bin/.safetensors file or a
  TorchScript archive, in the source's layout and dtype (bfloat16 as ml_dtypes.bfloat16)."""
  path = os.fspath(path)
  with open(path, 'rb') as f:
    head = f.read(8)
  if path.endswith('.safetensors'):
    return Checkpoint(_read_safetensors(path), 'safetensors')
  if head[:4] == b'PK\x03\x04':
    obj = _read_zip(path)
    kind = 'torchscript' if isinstance(obj, _ScriptObject) else 'zip'
    return Checkpoint(_state_dict(obj, path), kind)
  if head[:2] == b'\x80\x02':
    return Checkpoint(_state_dict(_read_legacy(path), path), 'legacy')
  raise ValueError(f'{path}: not a PyTorch checkpoint (zip or legacy pickle) nor .safetensors')
