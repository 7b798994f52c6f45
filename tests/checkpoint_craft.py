"""Hostile checkpoints, written byte by byte as an attacker would (no torch needed).

`Pickle` emits protocol-2 opcodes; `tensor_ops` the rebuild of one tensor as torch.save writes it
(any offset, size, stride, storage numel, even negative or absurd ones); `zip_checkpoint`,
`legacy_checkpoint` and `safetensors_file` wrap them as files. `ATTACKS` makes one small file per
attack class of issue 26 (tests/reader_hostile_test.py reads each; the convert CLI is run on them
for the closing note's evidence).
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile

ITEMSIZE = {'FloatStorage': 4, 'LongStorage': 8, 'HalfStorage': 2, 'BFloat16Storage': 2,
            'ByteStorage': 1, 'BoolStorage': 1, 'IntStorage': 4, 'DoubleStorage': 8}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class Pickle:
  """A protocol-2 pickle, one opcode at a time: `.bytes()` ends it with STOP."""

  def __init__(self, proto: bool = True):
    self.out = bytearray(b'\x80\x02' if proto else b'')

  def raw(self, b: bytes):
    self.out += b
    return self

  def glob(self, module: str, name: str):
    return self.raw(b'c' + module.encode('utf-8', 'surrogatepass') + b'\n' +
                    name.encode('utf-8', 'surrogatepass') + b'\n')

  def str(self, s: str):
    b = s.encode('utf-8', 'surrogatepass')
    return self.raw(b'X' + struct.pack('<I', len(b)) + b)

  def int(self, n: int):
    if 0 <= n < 256:
      return self.raw(b'K' + bytes([n]))
    if -(1 << 31) <= n < (1 << 31):
      return self.raw(b'J' + struct.pack('<i', n))
    b = n.to_bytes((n.bit_length() + 8) // 8, 'little', signed=True)
    return self.raw(b'\x8a' + bytes([len(b)]) + b)

  def ints(self, values):
    self.raw(b'(')
    for v in values:
      self.int(v)
    return self.raw(b't')

  def mark(self):
    return self.raw(b'(')

  def bytes(self) -> bytes:
    return bytes(self.out) + b'.'


def tensor_ops(p: Pickle, key: str, numel: int, offset: int, size, stride,
               storage: str = 'FloatStorage') -> Pickle:
  """torch._utils._rebuild_tensor_v2((storage, key, 'cpu', numel), offset, size, stride, False,
  OrderedDict()) as torch.save pickles it."""
  p.glob('torch._utils', '_rebuild_tensor_v2').mark()
  p.mark().str('storage').glob('torch', storage).str(key).str('cpu').int(numel).raw(b't')
  p.raw(b'Q')  # BINPERSID
  p.int(offset).ints(size).ints(stride).raw(b'\x89')  # NEWFALSE: requires_grad
  p.glob('collections', 'OrderedDict').raw(b')R')  # backward hooks
  return p.raw(b'tR')


def state_dict(tensors: dict) -> bytes:
  """{name: (storage key, numel, offset, size, stride[, storage class])} as a pickled dict."""
  p = Pickle().raw(b'}(')
  for name, spec in tensors.items():
    p.str(name)
    tensor_ops(p, *spec)
  return p.raw(b'u').bytes()


def zip_checkpoint(path, pkl: bytes, storages: dict, root: str = 'archive',
                   compression=zipfile.ZIP_STORED, extra: dict | None = None):
  with zipfile.ZipFile(path, 'w', compression) as z:
    z.writestr(f'{root}/data.pkl', pkl)
    z.writestr(f'{root}/byteorder', 'little')
    for key, data in storages.items():
      z.writestr(f'{root}/data/{key}', data)
    for name, data in (extra or {}).items():
      z.writestr(name, data)
  return path


def legacy_checkpoint(path, pkl: bytes, storages: list):
  """`storages`: [(key, element count written, raw bytes)] after the object pickle."""
  head = b''.join(pickle.dumps(x, protocol=2) for x in (
      LEGACY_MAGIC, 1001, {'protocol_version': 1001, 'little_endian': True}))
  tail = pickle.dumps([k for k, _, _ in storages], protocol=2)
  body = b''.join(struct.pack('<q', n) + data for _, n, data in storages)
  with open(path, 'wb') as f:
    f.write(head + pkl + tail + body)
  return path


def safetensors_file(path, header, data: bytes = b'', header_len: int | None = None):
  """`header`: a dict (as JSON) or raw bytes; `header_len` overrides the 8-byte length."""
  h = header if isinstance(header, bytes) else json.dumps(header).encode()
  with open(path, 'wb') as f:
    f.write(struct.pack('<Q', len(h) if header_len is None else header_len) + h + data)
  return path


def f32(n: int) -> bytes:
  return struct.pack(f'<{n}f', *range(n))


def patch_zip_size(path, member: str, size: int):
  """Rewrites the uncompressed size of `member` in the zip's central directory (a member that
  claims to inflate to `size` bytes)."""
  data = bytearray(open(path, 'rb').read())
  name = member.encode()
  i = data.rfind(b'PK\x01\x02' + b'\x00' * 0, 0)
  while i >= 0:
    n = struct.unpack_from('<H', data, i + 28)[0]
    if data[i + 46:i + 46 + n] == name:
      struct.pack_into('<I', data, i + 24, size)
      break
    i = data.rfind(b'PK\x01\x02', 0, i)
  open(path, 'wb').write(bytes(data))
  return path


# --- One file per attack class ------------------------------------------------------------------


def _dag_pickle(levels: int) -> bytes:
  """Lists that each hold the previous one twice (memo GETs): 2^levels paths through `levels`
  objects, next to a real tensor."""
  p = Pickle().raw(b'}(').str('w')
  tensor_ops(p, '0', 4, 0, (4,), (1,))
  p.str('dag').raw(b']q\x000')  # the innermost list, memo 0
  for i in range(levels):  # L_{i+1} = [L_i, L_i]
    p.raw(b'](h' + bytes([i]) + b'h' + bytes([i]) + b'eq' + bytes([i + 1]) + b'0')
  return p.raw(b'h' + bytes([levels]) + b'u').bytes()


def _script_dag(levels: int) -> bytes:
  """A TorchScript module tree where module i has two attributes naming module i+1."""
  p = Pickle()
  p.glob('__torch__.m', 'Leaf').raw(b')\x81}').str('weight')
  tensor_ops(p, '0', 4, 0, (4,), (1,))
  p.raw(b's').raw(b'b').raw(b'q\x00')
  for i in range(levels):
    p.glob('__torch__.m', f'Node{i}').raw(b')\x81}(').str('a').raw(b'h' + bytes([i]))
    p.str('b').raw(b'h' + bytes([i])).raw(b'ub').raw(b'q' + bytes([i + 1]))
  return p.bytes()


def _script_chain(depth: int) -> bytes:
  """TorchScript modules nested `depth` deep (attribute `c`), the innermost holding a tensor."""
  put = lambda i: b'r' + struct.pack('<I', i)  # noqa: E731  LONG_BINPUT
  get = lambda i: b'j' + struct.pack('<I', i)  # noqa: E731  LONG_BINGET
  p = Pickle()
  p.glob('__torch__.m', 'Leaf').raw(b')\x81}').str('weight')
  tensor_ops(p, '0', 4, 0, (4,), (1,))
  p.raw(b'sb' + put(0) + b'0')
  for i in range(depth):
    p.glob('__torch__.m', 'Node').raw(b')\x81}').str('c').raw(get(i) + b'sb' + put(i + 1) + b'0')
  return p.raw(get(depth)).bytes()


def _deep_list(depth: int) -> bytes:
  p = Pickle().raw(b'}(').str('w')
  tensor_ops(p, '0', 4, 0, (4,), (1,))
  p.str('deep').raw(b']' * depth + b'a' * (depth - 1))
  return p.raw(b'u').bytes()


def _self_containing() -> bytes:
  return Pickle().raw(b'}q\x00').str('model').raw(b'h\x00s').bytes()


def _marker_build() -> bytes:
  # GLOBAL torch.FloatStorage, then BUILD {'name': 'LongStorage'} on it.
  p = Pickle().raw(b'}(').str('m').glob('torch', 'FloatStorage')
  return p.raw(b'}').str('name').str('LongStorage').raw(b'sb').raw(b'u').bytes()


def _one_tensor_many_keys(n: int, numel: int) -> bytes:
  """One tensor object (memo GET) under `n` keys: a few bytes per key."""
  p = Pickle().raw(b'}(').str('t0')
  tensor_ops(p, '0', numel, 0, (numel,), (1,))
  p.raw(b'q\x00')
  for i in range(1, n):
    p.str(f't{i}').raw(b'h\x00')
  return p.raw(b'u').bytes()


def _tied(n: int, numel: int) -> dict:
  return {f't{i}': ('0', numel, 0, (numel,), (1,)) for i in range(n)}


def write_attacks(folder) -> dict[str, str]:
  """{attack class: path of a small file made for it} in `folder`."""
  os.makedirs(folder, exist_ok=True)
  j = lambda name: os.path.join(folder, name)  # noqa: E731
  out = {}

  def z(name, tensors, storages, **kw):
    out[name] = zip_checkpoint(j(name + '.pth'), state_dict(tensors), storages, **kw)

  z('negative_offset', {'w': ('0', 4, -(1 << 20), (4,), (1,))}, {'0': f32(4)})
  z('negative_stride', {'w': ('0', 4, 3, (4,), (-(1 << 20),))}, {'0': f32(4)})
  z('cancelling_strides', {'w': ('0', 4, 0, (2, 2), (1 << 20, -(1 << 20)))}, {'0': f32(4)})
  z('overlapping_strides', {'w': ('0', 4, 0, (3, 3), (1, 1))}, {'0': f32(4)})
  z('declared_2gb_stride0', {'w': ('0', 1, 0, (1 << 29,), (0,))}, {'0': f32(1)})
  z('declared_2gb_member_small', {'w': ('0', 1 << 29, 0, (1 << 29,), (1,))}, {'0': f32(1)})
  z('shared_storage_2000x', _tied(2000, 1 << 16), {'0': f32(1 << 16)})
  out['one_tensor_2000_keys'] = zip_checkpoint(j('one_tensor_many_keys.pth'),
                                               _one_tensor_many_keys(2000, 1 << 16),
                                               {'0': f32(1 << 16)})
  z('member_smaller_than_declared', {'w': ('0', 1000, 0, (1000,), (1,))}, {'0': f32(4)})
  z('big_integer_size', {'w': ('0', 4, 0, (1 << 70,), (1,))}, {'0': f32(4)})
  out['inflating_member'] = j('inflating_member.pth')
  zip_checkpoint(out['inflating_member'], state_dict({'w': ('0', 4, 0, (4,), (1,))}),
                 {'0': b'\x00' * (1 << 16)}, compression=zipfile.ZIP_DEFLATED)
  patch_zip_size(out['inflating_member'], 'archive/data/0', (1 << 31) - 1)
  out['dag_explosion'] = zip_checkpoint(j('dag_explosion.pth'), _dag_pickle(60), {'0': f32(4)})
  out['script_dag_explosion'] = zip_checkpoint(j('script_dag.pt'), _script_dag(60), {'0': f32(4)})
  out['self_containing_dict'] = zip_checkpoint(j('self_dict.pth'), _self_containing(), {})
  out['legacy_dag_explosion'] = legacy_checkpoint(j('legacy_dag.pth'), _dag_pickle(60),
                                                  [('0', 4, f32(4))])
  out['deep_nesting'] = zip_checkpoint(j('deep.pth'), _deep_list(200_000), {'0': f32(4)})
  out['legacy_deep_nesting'] = legacy_checkpoint(j('legacy_deep.pth'), _deep_list(200_000),
                                                 [('0', 4, f32(4))])
  out['script_deep_nesting'] = zip_checkpoint(j('script_deep.pt'), _script_chain(2000),
                                              {'0': f32(4)})
  out['deep_marks'] = zip_checkpoint(j('deep_marks.pth'), Pickle().raw(b'(' * 100_000).bytes(), {})
  out['memo_index_2_27'] = zip_checkpoint(j('memo.pth'), b'\x80\x02Nr' + struct.pack('<I', 1 << 27)
                                          + b'.', {})
  out['marker_mutation_build'] = zip_checkpoint(j('marker.pth'), _marker_build(), {})
  out['escape_codes_in_global'] = zip_checkpoint(
      j('escape.pth'), Pickle().glob('os\x1b[2J\x1b[31m', 'system\x07\r').raw(b')R').bytes(), {})
  out['legacy_negative_offset'] = legacy_checkpoint(
      j('legacy_negative_offset.pth'), state_dict({'w': ('0', 4, -(1 << 20), (4,), (1,))}),
      [('0', 4, f32(4))])
  out['legacy_storage_past_end'] = legacy_checkpoint(
      j('legacy_past_end.pth'), state_dict({'w': ('0', 1 << 20, 0, (4,), (1,))}),
      [('0', 1 << 20, f32(4))])
  hdr = lambda d, o, s=(2,): {'dtype': d, 'shape': list(s), 'data_offsets': list(o)}  # noqa: E731
  st = lambda name, header, data=b'', **kw: out.__setitem__(  # noqa: E731
      name, safetensors_file(j(name + '.safetensors'), header, data, **kw))
  st('safetensors_overlap', {'a': hdr('F32', (0, 8)), 'b': hdr('F32', (0, 8))}, f32(2))
  st('safetensors_negative_offset', {'a': hdr('F32', (-8, 0))}, f32(2))
  st('safetensors_duplicate_keys', b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
     b'"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}', f32(4))
  st('safetensors_shape_minus_1', {'a': hdr('F32', (0, 8), (-1,))}, f32(2))
  st('safetensors_past_end', {'a': hdr('F32', (0, 1 << 30), (1 << 28,))}, f32(2))
  st('safetensors_bad_json', b'{"a": {"dtype": ', b'')
  st('safetensors_header_not_object', b'[1, 2, 3]', b'')
  st('safetensors_huge_header_length', {}, b'', header_len=1 << 62)
  st('safetensors_missing_fields', {'a': {'dtype': 'F32'}}, b'')
  return out
