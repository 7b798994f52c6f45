"""What a torch pickle may mean: the allowlist, inert markers, and tensors checked before they
are cut out of their storage.

`Hooks` gives the pickle machine (convert/pickle_vm.py) its only non-data values:
- the globals of the allowlist become markers (`Fn`, `StorageType`): frozen values that no opcode
  can change (BUILD on them is refused), so nothing one file does reaches the next read;
- `torch._utils._rebuild_tensor(_v2)` becomes a `TensorRef` (storage, offset, size, stride): plain
  numbers, checked by `check_view` and cut out by `materialise` only once the reader knows which
  tensors it returns and has the storage's bytes;
- TorchScript's `__torch__.*` classes become `ScriptClass` names; NEWOBJ on one makes a fresh
  `ScriptObject` and its one BUILD gives it its attribute dict. No class or code of the file is
  ever resolved.
Anything else a pickle asks for (another global, a call of a non-marker, BUILD on an object this
read did not make) is an UnsafeCheckpointError.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import math

import ml_dtypes
import numpy as np

from vaflax.convert.errors import CheckpointError, UnsafeCheckpointError, printable
from vaflax.convert.pickle_vm import hashable

# torch storage class name -> NumPy dtype (bfloat16 through ml_dtypes, which jax already needs).
STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'HalfStorage': np.float16, 'BFloat16Storage': ml_dtypes.bfloat16,
    'DoubleStorage': np.float64, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}
_DTYPES = {name: np.dtype(t) for name, t in STORAGE_DTYPES.items()}
MAX_DIMS = 32  # NumPy 1.x's limit on array rank (2.x allows 64; no checkpoint comes near either)
MAX_COUNT = 1 << 48  # any element count, offset or stride: far above memory, far below overflow


class Fn(enum.Enum):
  """The callables of the allowlist, as names: REDUCE on one is interpreted, never called."""

  REBUILD_TENSOR = 'a tensor'
  REBUILD_PARAMETER = 'a parameter'
  ORDERED_DICT = 'an OrderedDict'
  TYPE_TAG = 'a TorchScript typed container'  # the container itself is the value


@dataclasses.dataclass(frozen=True)
class StorageType:
  name: str


@dataclasses.dataclass(frozen=True)
class ScriptClass:
  qualname: str


class ScriptObject:
  """A TorchScript module (or other `__torch__.*` object) as data: its class name and the state
  its pickle BUILDs it with, once."""

  __slots__ = ('qualname', 'state')

  def __init__(self, qualname: str):
    self.qualname, self.state = qualname, None


class StorageRef:
  """A storage the pickle declares: key, dtype, element count. Like TensorRef, a plain slotted
  value (a frozen dataclass costs ~4x to make, 640 times per ResNet-50) that no opcode can
  reach into: BUILD is refused on it."""

  __slots__ = ('key', 'dtype', 'numel')

  def __init__(self, key: str, dtype: np.dtype, numel: int):
    self.key, self.dtype, self.numel = key, dtype, numel

  @property
  def nbytes(self) -> int:
    return self.numel * self.dtype.itemsize


class TensorRef:
  """torch's _rebuild_tensor arguments, checked to be counts: the view, not yet cut."""

  __slots__ = ('storage', 'offset', 'size', 'stride')

  def __init__(self, storage: StorageRef, offset: int, size: tuple, stride: tuple):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  @property
  def numel(self) -> int:
    return math.prod(self.size)


_ALLOWED = {
    ('torch._utils', '_rebuild_tensor'): Fn.REBUILD_TENSOR,
    ('torch._utils', '_rebuild_tensor_v2'): Fn.REBUILD_TENSOR,
    ('torch._utils', '_rebuild_parameter'): Fn.REBUILD_PARAMETER,
    ('torch._utils', '_rebuild_parameter_with_state'): Fn.REBUILD_PARAMETER,
    ('collections', 'OrderedDict'): Fn.ORDERED_DICT,
    **{('torch.jit._pickle', name): Fn.TYPE_TAG for name in (
        'restore_type_tag', 'build_intlist', 'build_floatlist', 'build_doublelist',
        'build_boollist', 'build_tensorlist')},
    **{('torch', name): StorageType(name) for name in STORAGE_DTYPES},
}


def _count(x, what: str, path, key):
  if type(x) is not int or not 0 <= x <= MAX_COUNT:
    shown = x if type(x) is int else type(x).__name__
    raise CheckpointError(path, f'{what} is {printable(shown, 40)}; expected a count in '
                          f'[0, 2^48]', key)
  return x


class Hooks:
  """The pickle machine's hooks for one read. `legacy` streams may not hold storage views;
  `storages` maps each storage key the pickle declares to its first StorageRef."""

  def __init__(self, path, legacy: bool = False):
    self.path, self.legacy, self.storages = path, legacy, {}

  def unsafe(self, problem: str):
    raise UnsafeCheckpointError(self.path, problem)

  def find_class(self, module: str, name: str):
    if module == '__torch__' or module.startswith('__torch__.'):
      return ScriptClass(f'{module}.{name}')  # inert: never the class the name would import
    found = _ALLOWED.get((module, name))
    if found is None:
      self.unsafe(f'the pickle names the global {printable(module)}.{printable(name)}, which is '
                  'not a tensor, storage or container; refused (reading a checkpoint never runs '
                  'code from it). If you trust the file, re-save just its state_dict with torch: '
                  'torch.save(torch.load(f, weights_only=False)["model"], "weights.pth")')
    return found

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != 'storage':
      raise CheckpointError(self.path, f'a persistent id of type {type(pid).__name__} that is not '
                            "('storage', type, key, location, numel)")
    storage_type, key, numel = pid[1], pid[2], pid[4]
    if not isinstance(storage_type, StorageType):
      raise CheckpointError(self.path, f'storage of type {type(storage_type).__name__}, not a '
                            'torch storage class')
    if type(key) not in (str, int) or len(str(key)) > 200:
      raise CheckpointError(self.path, 'a storage key that is not a short string or integer')
    key = str(key)
    numel = _count(numel, 'its element count', self.path, f'storage {key}')
    if self.legacy and len(pid) > 5 and pid[5] is not None:
      raise CheckpointError(self.path, 'storage views (pre-1.0 torch.save) are not supported',
                            f'storage {key}')
    dtype = _DTYPES[storage_type.name]
    ref = StorageRef(key, dtype, numel)
    first = self.storages.setdefault(key, ref)
    # One key, one set of bytes, whatever dtype views it (a legacy stream: one dtype).
    if first.nbytes != ref.nbytes or (self.legacy and first.dtype != dtype):
      raise CheckpointError(self.path, f'declared as {first.numel} x {first.dtype} and as '
                            f'{numel} x {dtype}', f'storage {key}')
    return ref

  def reduce(self, fn, args: tuple):
    if fn is Fn.REBUILD_TENSOR:
      return self.tensor(args)
    if fn is Fn.REBUILD_PARAMETER:
      if not args or not isinstance(args[0], TensorRef):
        raise CheckpointError(self.path, 'a parameter whose data is not a tensor')
      return args[0]
    if fn is Fn.ORDERED_DICT:
      return self.ordered_dict(args)
    if fn is Fn.TYPE_TAG:
      if not args:
        raise CheckpointError(self.path, 'a TorchScript type tag without its value')
      return args[0]
    self.unsafe(f'the pickle calls a {type(fn).__name__}, which is not an allowlisted function')

  def ordered_dict(self, args: tuple):
    out = collections.OrderedDict()
    if args == ():
      return out
    if len(args) != 1 or not isinstance(args[0], list | tuple):
      raise CheckpointError(self.path, 'OrderedDict(...) with arguments other than a list of pairs')
    for pair in args[0]:
      if not (isinstance(pair, tuple | list) and len(pair) == 2 and hashable(pair[0])):
        raise CheckpointError(self.path, 'OrderedDict(...) with an item that is not a (key, value)')
      out[pair[0]] = pair[1]
    return out

  def tensor(self, args: tuple) -> TensorRef:
    if len(args) < 4 or not isinstance(args[0], StorageRef):
      raise CheckpointError(self.path, 'a tensor without (storage, offset, size, stride)')
    storage, offset, size, stride = args[:4]
    key = 'storage ' + storage.key
    if not isinstance(size, tuple | list) or not isinstance(stride, tuple | list):
      raise CheckpointError(self.path, 'a tensor whose size or stride is not a tuple', key)
    if len(size) != len(stride) or len(size) > MAX_DIMS:
      raise CheckpointError(self.path, f'a tensor with {len(size)} sizes and {len(stride)} '
                            f'strides (at most {MAX_DIMS})', key)
    if not all(type(v) is int and 0 <= v <= MAX_COUNT for v in (offset, *size, *stride)):
      _count(offset, 'a tensor offset', self.path, key)  # raises for the first bad one
      for n in size:
        _count(n, 'a tensor size', self.path, key)
      for n in stride:
        _count(n, 'a tensor stride', self.path, key)
    return TensorRef(storage, offset, tuple(size), tuple(stride))

  def newobj(self, cls, args, kwargs):
    if isinstance(cls, ScriptClass) and args == () and not kwargs:
      return ScriptObject(cls.qualname)
    self.unsafe(f'NEWOBJ of a {type(cls).__name__} (only TorchScript objects without '
                'arguments are data)')

  def build(self, obj, state):
    # Every OrderedDict here was made by this read (Fn.ORDERED_DICT): never a shared object.
    if isinstance(obj, collections.OrderedDict) and isinstance(state, dict):
      return  # a state_dict's attributes (`_metadata`: module versions), not weights: dropped
    if not isinstance(obj, ScriptObject) or obj.state is not None:
      self.unsafe(f'BUILD on a {type(obj).__name__} (only a TorchScript object this file '
                  'made, once, may be given its state)')
    if not isinstance(state, dict):
      raise CheckpointError(self.path, f'a TorchScript object whose state is a '
                            f'{type(state).__name__}, not a dict', obj.qualname)
    obj.state = state


def check_view(ref: TensorRef) -> str | None:
  """What is wrong with `ref`'s view of its storage, or None. Fine: every element inside the
  storage, and no two elements on one storage element (so a tensor never holds more elements
  than its storage: stride 0 over a dimension of size > 1, a broadcast, is refused; torch.save
  writes one only for an `expand`ed tensor, which no supported format ships)."""
  if ref.numel == 0:
    return None if ref.offset <= ref.storage.numel else (
        f'an empty tensor at offset {ref.offset} of a storage of {ref.storage.numel}')
  reach = 0  # the furthest element the inner dimensions reach, from the offset
  for s, n in sorted((s, n) for n, s in zip(ref.size, ref.stride, strict=True) if n > 1):
    if s == 0:
      return f'size {ref.size} with stride 0 (a broadcast: elements repeated, refused)'
    if s <= reach:
      return f'size {ref.size}, stride {ref.stride}: elements overlap'
    reach += s * (n - 1)
  if ref.offset + reach + 1 > ref.storage.numel:
    return (f'size {ref.size}, stride {ref.stride} at offset {ref.offset} runs past its storage '
            f'of {ref.storage.numel} elements')
  return None


def materialise(ref: TensorRef, flat: np.ndarray) -> np.ndarray:
  """The tensor `ref` (already passed `check_view`) cut out of `flat`, its storage's elements. A
  tensor that is its whole storage is a view of it; any other one a copy, so a small slice never
  keeps a large storage alive. numpy checks the strided extent against `flat` again."""
  itemsize = flat.dtype.itemsize
  view = np.ndarray(ref.size, flat.dtype, buffer=flat, offset=ref.offset * itemsize,
                    strides=tuple(s * itemsize for s in ref.stride))
  if flat.dtype == np.bool_:
    return as_bool(view)
  return view if ref.numel == flat.size else view.copy()


def as_bool(a: np.ndarray) -> np.ndarray:
  """A bool array whose bytes are 0 or 1 (a file's byte 2 is True, as in torch); an array even
  when `a` is 0-d (`a != 0` would give a NumPy scalar)."""
  out = np.empty(a.shape, np.bool_)
  np.not_equal(a.view(np.uint8), 0, out=out)
  return out
