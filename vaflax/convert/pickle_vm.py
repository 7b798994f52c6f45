"""A pickle machine that only builds data: the opcodes of protocols 0-5, interpreted here.

Python's own unpickler cannot be bounded from outside: a 14-byte pickle that PUTs memo index 2^27
makes it allocate 2 GB before any hook runs. This machine reads the same opcodes (pickletools
documents them) with every number checked before it is used:
- containers are the plain dict/list/tuple/set the machine makes itself; dict keys and set items
  must be scalars (or flat tuples of scalars), so hashing never recurses;
- the memo is a dict, and an index may not exceed the number of objects memoised so far (what
  both Python's and TorchScript's picklers write);
- lengths are checked against the bytes left, text lines and integers have a length limit, the
  opcode count and the MARK depth are bounded;
- everything that is not data goes to `hooks` (a global, a persistent id, a call, NEWOBJ, BUILD),
  which decide what, if anything, it means (convert/tensors.py). INST, OBJ, the extension
  registry (EXT1/2/4) and out-of-band buffers have no meaning in a checkpoint and are refused.

The machine is a loop over a stack: no recursion, so nesting depth never reaches Python's stack.
Malformed input raises CheckpointError naming the file and the byte offset.
"""

from __future__ import annotations

import gc
import struct

from vaflax.convert.errors import CheckpointError, UnsafeCheckpointError, printable

MAX_OPS = 4_000_000  # opcodes in one pickle; a ResNet-50 state dict takes ~14k, a TorchScript FAN ~16k
MAX_MARKS = 1000  # open MARKs (nesting of protocol-0 containers)
MAX_LINE = 4096  # one text argument (a GLOBAL's names, a protocol-0 number)
MAX_LONG_BYTES = 1024  # LONG4: a 2466-digit integer is plenty for any count or size
SCALARS = (str, int, float, bool, bytes, type(None))


class PastEndError(CheckpointError):
  """The pickle runs past the end of the bytes given (a reader holding only a prefix of the file
  may retry with more)."""


class _Mark:
  """The MARK sentinel on the stack (a fresh object per machine is not needed: it never leaves)."""


_MARK = _Mark()


def hashable(x) -> bool:
  return isinstance(x, SCALARS) or (isinstance(x, tuple) and all(isinstance(y, SCALARS) for y in x))


class Machine:
  """Runs one pickle from `data` (bytes, or a buffer such as an mmap) at `pos`; `load()` returns
  (object, the offset after STOP). `hooks` has find_class, persistent_load, reduce, newobj,
  build; each returns the value to push (build returns nothing) or raises CheckpointError."""

  def __init__(self, data, path, hooks, pos: int = 0, max_ops: int = MAX_OPS):
    self.data, self.path, self.hooks, self.pos, self.max_ops = data, path, hooks, pos, max_ops
    self.end = len(data)
    self.stack, self.marks, self.memo, self.puts = [], [], {}, 0

  # --- errors and reading -----------------------------------------------------------------------

  def fail(self, problem: str, unsafe: bool = False, past_end: bool = False):
    cls = UnsafeCheckpointError if unsafe else PastEndError if past_end else CheckpointError
    raise cls(self.path, problem, key=f'pickle byte {self.op_pos}')

  def take(self, n: int) -> bytes:
    if n < 0 or n > self.end - self.pos:
      self.fail(f'an argument of {n} bytes runs past the end of the pickle ({self.end} bytes)', past_end=True)
    out = self.data[self.pos:self.pos + n]
    self.pos += n
    return bytes(out)

  def byte(self) -> int:
    p = self.pos
    if p >= self.end:
      self.fail('an argument runs past the end of the pickle', past_end=True)
    self.pos = p + 1
    return self.data[p]

  def unpack(self, st: struct.Struct):
    p = self.pos
    if p + st.size > self.end:
      self.fail(f'an argument of {st.size} bytes runs past the end of the pickle', past_end=True)
    self.pos = p + st.size
    return st.unpack_from(self.data, p)[0]

  def line(self) -> bytes:
    stop = min(self.end, self.pos + MAX_LINE + 1)
    i = self.data.find(b'\n', self.pos, stop)  # bytes and mmap both search in place
    if i < 0:
      self.fail(f'a text argument without a newline within {MAX_LINE} bytes',
                past_end=stop == self.end)
    out = self.take(i - self.pos)
    self.pos += 1
    return out

  def text(self, raw: bytes, codec: str = 'utf-8') -> str:
    try:  # surrogatepass: what Python's pickler writes for lone surrogates (and its reader reads)
      return raw.decode(codec, 'surrogatepass' if codec == 'utf-8' else 'strict')
    except UnicodeDecodeError as e:
      self.fail(f'text that is not {codec}: {e.reason} at byte {e.start}')

  def pop(self):
    if not self.stack or self.stack[-1] is _MARK:
      self.fail('an opcode needs a value but the stack is empty (or at a MARK)')
    return self.stack.pop()

  def top(self):
    if not self.stack or self.stack[-1] is _MARK:
      self.fail('an opcode needs a value but the stack is empty (or at a MARK)')
    return self.stack[-1]

  def pop_mark(self) -> list:
    if not self.marks:
      self.fail('an opcode needs a MARK but none is open')
    start = self.marks.pop()
    items = self.stack[start + 1:]
    del self.stack[start:]
    return items

  def push(self, x):
    self.stack.append(x)

  # --- the loop ---------------------------------------------------------------------------------

  def load(self):
    data, end, ops, stack, memo, mark = self.data, self.end, _OPS, self.stack, self.memo, _MARK
    marks, p = self.marks, self.pos
    for _ in range(self.max_ops):
      if p >= end:
        self.op_pos = p
        self.fail('the pickle ends without a STOP opcode', past_end=True)
      code = data[p]
      # The opcodes torch.save writes most, inline when their arguments are in bounds and valid
      # (3x faster); anything unusual goes to the table's handler, which checks and explains.
      if code == 0x72:  # LONG_BINPUT
        if p + 5 <= end and stack and stack[-1] is not mark:
          i = _U4.unpack_from(data, p + 1)[0]
          if i <= self.puts:
            memo[i] = stack[-1]
            self.puts += 1
            p += 5
            continue
      elif code == 0x68:  # BINGET
        if p + 2 <= end and data[p + 1] in memo:
          stack.append(memo[data[p + 1]])
          p += 2
          continue
      elif code == 0x4b:  # BININT1
        if p + 2 <= end:
          stack.append(data[p + 1])
          p += 2
          continue
      elif code == 0x28:  # MARK
        if len(marks) < MAX_MARKS:
          marks.append(len(stack))
          stack.append(mark)
          p += 1
          continue
      elif code == 0x74:  # TUPLE
        if marks:
          at = marks.pop()
          t = tuple(stack[at + 1:])
          del stack[at:]
          stack.append(t)
          p += 1
          continue
      elif code == 0x71:  # BINPUT
        if p + 2 <= end and stack and stack[-1] is not mark and data[p + 1] <= self.puts:
          memo[data[p + 1]] = stack[-1]
          self.puts += 1
          p += 2
          continue
      elif code == 0x4d:  # BININT2
        if p + 3 <= end:
          stack.append(data[p + 1] | data[p + 2] << 8)
          p += 3
          continue
      elif code == 0x29:  # EMPTY_TUPLE
        stack.append(())
        p += 1
        continue
      elif code == 0x89:  # NEWFALSE
        stack.append(False)
        p += 1
        continue
      self.op_pos, self.pos = p, p + 1
      if ops[code](self) is _STOP:
        return self.pop(), self.pos
      p = self.pos
    self.op_pos = p
    self.fail(f'more than {self.max_ops} opcodes; refused as a denial of service')

  # Data.
  def op_proto(self):
    v = self.byte()
    if v > 5:
      self.fail(f'pickle protocol {v}; at most 5 exists')

  def op_frame(self):
    n = self.unpack(_U8)
    if n > self.end - self.pos:
      self.fail(f'a frame of {n} bytes runs past the end of the pickle', past_end=True)

  def op_int_text(self):
    raw = self.line()
    if raw in (b'00', b'01'):  # protocol 0's False / True
      return self.push(raw == b'01')
    self.push(self._int(raw))

  def op_long_text(self):
    raw = self.line()
    self.push(self._int(raw[:-1] if raw.endswith(b'L') else raw))

  def _int(self, raw: bytes) -> int:
    if len(raw) > 64:
      self.fail('a text integer longer than 64 digits')
    try:
      return int(raw, 10)
    except ValueError:
      self.fail(f'{printable(raw, 40)} is not an integer')

  def op_float_text(self):
    raw = self.line()
    try:
      self.push(float(raw))
    except ValueError:
      self.fail(f'{printable(raw, 40)} is not a float')

  def op_long1(self):
    self.push(int.from_bytes(self.take(self.byte()), 'little', signed=True))

  def op_long4(self):
    n = self.unpack(_I4)
    if n < 0 or n > MAX_LONG_BYTES:
      self.fail(f'an integer of {n} bytes (at most {MAX_LONG_BYTES})')
    self.push(int.from_bytes(self.take(n), 'little', signed=True))

  def op_unicode_text(self):
    self.push(self.text(self.line(), 'raw-unicode-escape'))

  # Containers.
  def op_mark(self):
    if len(self.marks) >= MAX_MARKS:
      self.fail(f'more than {MAX_MARKS} nested MARKs')
    self.marks.append(len(self.stack))
    self.stack.append(_MARK)

  def op_tuple(self):
    self.push(tuple(self.pop_mark()))

  def _tuple_n(self, n: int):
    items = [self.pop() for _ in range(n)][::-1]
    self.push(tuple(items))

  def op_list(self):
    self.push(self.pop_mark())

  def op_dict(self):
    items = self.pop_mark()
    d = {}
    self._set_items(d, items)
    self.push(d)

  def _set_items(self, d, items):
    if len(items) % 2:
      self.fail('SETITEMS with an odd number of values')
    for k, v in zip(items[::2], items[1::2], strict=True):
      if not hashable(k):
        self.fail(f'a dict key of type {type(k).__name__} (keys must be strings or numbers)')
      d[k] = v

  def _dict(self):
    d = self.top()
    if not isinstance(d, dict):
      self.fail(f'SETITEM(S) on a {type(d).__name__}, not a dict')
    return d

  def op_setitem(self):
    v, k = self.pop(), self.pop()
    self._set_items(self._dict(), [k, v])

  def op_setitems(self):
    items = self.pop_mark()
    self._set_items(self._dict(), items)

  def _list(self):
    lst = self.top()
    if not isinstance(lst, list):
      self.fail(f'APPEND(S) on a {type(lst).__name__}, not a list')
    return lst

  def op_append(self):
    v = self.pop()
    self._list().append(v)

  def op_appends(self):
    items = self.pop_mark()
    self._list().extend(items)

  def _set_members(self, items):
    bad = [x for x in items if not hashable(x)]
    if bad:
      self.fail(f'a set member of type {type(bad[0]).__name__}')
    return items

  def op_additems(self):
    items = self._set_members(self.pop_mark())
    s = self.top()
    if not isinstance(s, set):
      self.fail(f'ADDITEMS on a {type(s).__name__}, not a set')
    s.update(items)

  def op_frozenset(self):
    self.push(frozenset(self._set_members(self.pop_mark())))

  # Stack and memo.
  def op_pop(self):
    if self.stack and self.stack[-1] is _MARK:
      return self.pop_mark()
    self.pop()

  def op_dup(self):
    self.push(self.top())

  def _get(self, i: int):
    if i not in self.memo:
      self.fail(f'memo index {i} was never set')
    self.push(self.memo[i])

  def _put(self, i: int):
    if i < 0 or i > self.puts:
      self.fail(f'memo index {i} after only {self.puts} memoised objects')
    self.memo[i] = self.top()
    self.puts += 1

  def op_get(self):
    self._get(self._int(self.line()))

  def op_put(self):
    self._put(self._int(self.line()))

  def op_memoize(self):
    self._put(len(self.memo))

  # What is not data: the hooks decide.
  def op_global(self):
    module = self.text(self.line())
    name = self.text(self.line())
    self.push(self.hooks.find_class(module, name))

  def op_stack_global(self):
    name, module = self.pop(), self.pop()
    if not isinstance(module, str) or not isinstance(name, str):
      self.fail('STACK_GLOBAL with a module or name that is not a string', unsafe=True)
    self.push(self.hooks.find_class(module, name))

  def op_binpersid(self):
    self.push(self.hooks.persistent_load(self.pop()))

  def op_persid(self):
    self.push(self.hooks.persistent_load(self.text(self.line(), 'ascii')))

  def op_reduce(self):
    args, fn = self.pop(), self.pop()
    if not isinstance(args, tuple):
      self.fail(f'REDUCE with arguments of type {type(args).__name__}, not a tuple')
    self.push(self.hooks.reduce(fn, args))

  def op_newobj(self):
    args, cls = self.pop(), self.pop()
    self.push(self.hooks.newobj(cls, args, {}))

  def op_newobj_ex(self):
    kwargs, args, cls = self.pop(), self.pop(), self.pop()
    self.push(self.hooks.newobj(cls, args, kwargs))

  def op_build(self):
    state = self.pop()
    self.hooks.build(self.top(), state)

  def op_refused(self):
    name = _NAMES[self.data[self.op_pos]]
    self.fail(f'opcode {name}, which calls or looks up code; refused (a checkpoint never needs '
              'it)', unsafe=True)

  def op_unknown(self):
    self.fail(f'unknown opcode 0x{self.data[self.op_pos]:02x}')

  def op_string(self):
    self.fail('opcode STRING (a quoted protocol-0 string, which torch.save never writes); '
              'not supported')

  def op_stop(self):
    return _STOP


_STOP = object()


def _const(value):
  return lambda m: m.push(value)


_U1, _U2, _I4, _U4, _U8, _F8 = (struct.Struct(f) for f in ('<B', '<H', '<i', '<I', '<Q', '>d'))


def _unpacked(st):
  return lambda m: m.stack.append(m.unpack(st))


def _text(st):  # a length of format `st`, then UTF-8 (Python 2 str too: torch.load decodes so)
  return lambda m: m.stack.append(m.text(m.take(m.unpack(st))))


def _blob(st, kind=bytes):
  return lambda m: m.stack.append(kind(m.take(m.unpack(st))))


def _memo(st, fn):
  return lambda m: fn(m, m.unpack(st))


# Opcode byte -> handler, with pickletools' names (for messages).
_TABLE = {
    b'(': ('MARK', Machine.op_mark), b'.': ('STOP', Machine.op_stop),
    b'0': ('POP', Machine.op_pop), b'1': ('POP_MARK', lambda m: m.pop_mark() and None),
    b'2': ('DUP', Machine.op_dup), b'F': ('FLOAT', Machine.op_float_text),
    b'I': ('INT', Machine.op_int_text), b'J': ('BININT', _unpacked(_I4)),
    b'K': ('BININT1', (lambda m: m.stack.append(m.byte()))), b'L': ('LONG', Machine.op_long_text),
    b'M': ('BININT2', _unpacked(_U2)), b'N': ('NONE', _const(None)),
    b'P': ('PERSID', Machine.op_persid), b'Q': ('BINPERSID', Machine.op_binpersid),
    b'R': ('REDUCE', Machine.op_reduce), b'S': ('STRING', Machine.op_string),
    b'T': ('BINSTRING', _text(_I4)), b'U': ('SHORT_BINSTRING', _text(_U1)),
    b'V': ('UNICODE', Machine.op_unicode_text), b'X': ('BINUNICODE', _text(_U4)),
    b'a': ('APPEND', Machine.op_append), b'b': ('BUILD', Machine.op_build),
    b'c': ('GLOBAL', Machine.op_global), b'd': ('DICT', Machine.op_dict),
    b'}': ('EMPTY_DICT', lambda m: m.push({})), b'e': ('APPENDS', Machine.op_appends),
    b'g': ('GET', Machine.op_get), b'h': ('BINGET', (lambda m: m._get(m.byte()))),
    b'i': ('INST', Machine.op_refused), b'j': ('LONG_BINGET', _memo(_U4, Machine._get)),
    b'l': ('LIST', Machine.op_list), b']': ('EMPTY_LIST', lambda m: m.push([])),
    b'o': ('OBJ', Machine.op_refused), b'p': ('PUT', Machine.op_put),
    b'q': ('BINPUT', (lambda m: m._put(m.byte()))), b'r': ('LONG_BINPUT', _memo(_U4, Machine._put)),
    b's': ('SETITEM', Machine.op_setitem), b't': ('TUPLE', Machine.op_tuple),
    b')': ('EMPTY_TUPLE', _const(())), b'u': ('SETITEMS', Machine.op_setitems),
    b'G': ('BINFLOAT', _unpacked(_F8)),
    # Protocol 2.
    b'\x80': ('PROTO', Machine.op_proto), b'\x81': ('NEWOBJ', Machine.op_newobj),
    b'\x82': ('EXT1', Machine.op_refused), b'\x83': ('EXT2', Machine.op_refused),
    b'\x84': ('EXT4', Machine.op_refused), b'\x85': ('TUPLE1', lambda m: m._tuple_n(1)),
    b'\x86': ('TUPLE2', lambda m: m._tuple_n(2)), b'\x87': ('TUPLE3', lambda m: m._tuple_n(3)),
    b'\x88': ('NEWTRUE', _const(True)), b'\x89': ('NEWFALSE', _const(False)),
    b'\x8a': ('LONG1', Machine.op_long1), b'\x8b': ('LONG4', Machine.op_long4),
    # Protocol 3.
    b'B': ('BINBYTES', _blob(_U4)), b'C': ('SHORT_BINBYTES', _blob(_U1)),
    # Protocol 4.
    b'\x8c': ('SHORT_BINUNICODE', _text(_U1)),
    b'\x8d': ('BINUNICODE8', _text(_U8)), b'\x8e': ('BINBYTES8', _blob(_U8)),
    b'\x8f': ('EMPTY_SET', lambda m: m.push(set())), b'\x90': ('ADDITEMS', Machine.op_additems),
    b'\x91': ('FROZENSET', Machine.op_frozenset), b'\x92': ('NEWOBJ_EX', Machine.op_newobj_ex),
    b'\x93': ('STACK_GLOBAL', Machine.op_stack_global), b'\x94': ('MEMOIZE', Machine.op_memoize),
    b'\x95': ('FRAME', Machine.op_frame),
    # Protocol 5.
    b'\x96': ('BYTEARRAY8', _blob(_U8, bytearray)), b'\x97': ('NEXT_BUFFER', Machine.op_refused),
    b'\x98': ('READONLY_BUFFER', Machine.op_refused),
}
_OPS = [Machine.op_unknown] * 256
for _code, (_, _fn) in _TABLE.items():
  _OPS[_code[0]] = _fn
_NAMES = {code[0]: name for code, (name, _) in _TABLE.items()}
OPCODES = tuple(_TABLE)  # every opcode byte this machine knows (the fuzz suite draws from them)


def load(data, path, hooks, pos: int = 0, max_ops: int = MAX_OPS):
  """(object, offset after STOP) of the pickle at `data[pos:]`; see the module docstring."""
  # The machine makes many small containers, each of which would count toward a cyclic-GC pass
  # over every object of the process (jax's included): paused while it runs, as CPython's own
  # unpickler allocates without such passes mattering. Refcounting still frees everything.
  paused = gc.isenabled()
  gc.disable()
  try:
    return Machine(data, path, hooks, pos, max_ops).load()
  finally:
    if paused:
      gc.enable()
