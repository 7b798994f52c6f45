"""Hostile checkpoints in, nothing out of bounds (issue 26): one crafted file per attack class
(tests/checkpoint_craft.py makes them, a few hundred bytes each), each refused with one
CheckpointError naming the file and the key, or read within its declared bounds. The fuzz suite
(tests/reader_fuzz_test.py) draws many more."""

import os
import re

import checkpoint_craft as craft  # tests/checkpoint_craft.py
import ml_dtypes
import numpy as np
import pytest

from vaflax.convert import reader
from vaflax.convert.errors import CheckpointError, UnsafeCheckpointError

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'torch')
Unsafe, Bad = UnsafeCheckpointError, CheckpointError

# attack class -> (error type, what the message says, the key it names (a regex) or None)
REFUSED = {
    'negative_offset': (Bad, r'a tensor offset is -1048576', 'storage 0'),
    'negative_stride': (Bad, r'a tensor stride is -1048576', 'storage 0'),
    'cancelling_strides': (Bad, r'a tensor stride is -1048576', 'storage 0'),
    'overlapping_strides': (Bad, r'size \(3, 3\), stride \(1, 1\): elements overlap', 'w'),
    'big_integer_size': (Bad, r'a tensor size is 1180591620717411303424', 'storage 0'),
    'declared_2gb_stride0': (Bad, r'stride 0 \(a broadcast', 'w'),
    'declared_2gb_member_small': (Bad, r'\(2147483648 bytes\) .* over the budget', 'w'),
    'shared_storage_2000x': (Bad, r'over the budget of \d+ \(4 x the file size \+ 16 MiB\); if you '
                             r'trust the file, set VAFLAX_CHECKPOINT_MAX_BYTES', r't\d+'),
    'one_tensor_2000_keys': (Bad, r'over the budget', r't\d+'),
    'member_smaller_than_declared': (Bad, r'storage 0 holds 16 bytes in the archive; the pickle '
                                     r'declares 1000 x float32 = 4000', 'w'),
    'inflating_member': (Bad, r'holds 2147483647 bytes in the archive', 'w'),
    'self_containing_dict': (Bad, r'a dict that contains itself \(a cycle\)', 'model'),
    'script_deep_nesting': (Bad, r'TorchScript modules nested deeper than 200', r'(c\.)+'),
    'deep_marks': (Bad, r'more than 1000 nested MARKs', r'pickle byte 1002'),
    'memo_index_2_27': (Bad, r'memo index 134217728 after only 0 memoised objects',
                        r'pickle byte 3'),
    'marker_mutation_build': (Unsafe, r'BUILD on a StorageType', None),
    'escape_codes_in_global': (Unsafe, r'names the global os\\x1b\[2J\\x1b\[31m\.system\\x07\\x0d,',
                               None),
    'legacy_negative_offset': (Bad, r'a tensor offset is -1048576', 'storage 0'),
    'legacy_storage_past_end': (Bad, r'its 4194304 bytes run past the end of the file',
                                'storage 0'),
    'safetensors_overlap': (Bad, r'invalid offset', None),
    'safetensors_negative_offset': (Bad, r'integer `-8`, expected usize', None),
    'safetensors_duplicate_keys': (Bad, r'invalid offset for tensor `a`', None),
    'safetensors_shape_minus_1': (Bad, r'integer `-1`, expected usize', None),
    'safetensors_past_end': (Bad, r'file not fully covered', None),
    'safetensors_bad_json': (Bad, r'EOF while parsing', None),
    'safetensors_header_not_object': (Bad, r'invalid type: sequence', None),
    'safetensors_huge_header_length': (Bad, r'header too large', None),
    'safetensors_missing_fields': (Bad, r'missing field `shape`', None),
}
# Classes whose file is well-formed apart from the attack: the tensors come back, each once.
READ = {'dag_explosion': ['w'], 'legacy_dag_explosion': ['w'], 'deep_nesting': ['w'],
        'legacy_deep_nesting': ['w'], 'script_dag_explosion': ['a.' * 60 + 'weight']}


@pytest.fixture(scope='module')
def attacks(tmp_path_factory):
  return craft.write_attacks(tmp_path_factory.mktemp('attacks'))


def test_every_attack_class_is_covered(attacks):
  assert sorted(attacks) == sorted([*REFUSED, *READ])


@pytest.mark.parametrize('name', sorted(REFUSED))
def test_attack_is_refused_naming_the_file_and_key(attacks, name):
  cls, pattern, key = REFUSED[name]
  with pytest.raises(cls, match=pattern) as e:
    reader.read_checkpoint(attacks[name])
  assert type(e.value) is cls
  assert str(e.value).startswith(f'{attacks[name]}: ')
  assert str(e.value).isprintable()  # one line: no newline, escape code or bell
  assert e.value.key == key if key is None else re.fullmatch(key, e.value.key)


@pytest.mark.parametrize('name', sorted(READ))
def test_shared_and_deep_structure_is_walked_once(attacks, name):
  """2^60 paths through a DAG, a list 200k deep, a TorchScript diamond chain 60 deep: the
  tensor next to them comes back, each module once (under its first name)."""
  got = reader.read_checkpoint(attacks[name])
  assert list(got) == READ[name]
  np.testing.assert_array_equal(next(iter(got.values())), np.arange(4, dtype=np.float32))


def test_a_build_on_a_marker_does_not_reach_the_next_read(attacks):
  with pytest.raises(UnsafeCheckpointError):
    reader.read_checkpoint(attacks['marker_mutation_build'])
  got = reader.read_checkpoint(os.path.join(FIXTURES, 'reader_zip.pth'))
  assert got['f32'].dtype == np.float32 and got['i64'].dtype == np.int64


def test_control_characters_in_a_key_are_escaped(tmp_path):
  path = craft.zip_checkpoint(tmp_path / 'k.pth', craft.state_dict(
      {'\x1b]0;owned\x07w\n': ('0', 4, 0, (3, 3), (1, 1))}), {'0': craft.f32(4)})
  with pytest.raises(CheckpointError, match=r'\\x1b\]0;owned\\x07w\\x0a: size') as e:
    reader.read_checkpoint(path)
  assert '\x1b' not in str(e.value) and '\n' not in str(e.value)


def test_the_budget_can_be_raised_for_a_trusted_file(attacks, monkeypatch):
  path = attacks['shared_storage_2000x']
  got = reader.read_checkpoint(path, max_bytes=1 << 30)
  assert len(got) == 2000 and all(v.shape == (1 << 16,) for v in got.values())
  monkeypatch.setenv(reader.MAX_BYTES_ENV, str(1 << 30))
  np.testing.assert_array_equal(reader.read_checkpoint(path)['t1999'],
                                np.arange(1 << 16, dtype=np.float32))
  monkeypatch.setenv(reader.MAX_BYTES_ENV, '1000')
  with pytest.raises(CheckpointError, match=r'over the budget of 1000 \(VAFLAX_CHECKPOINT_MAX'):
    reader.read_checkpoint(path)
  with pytest.raises(CheckpointError, match=r'over the budget of 999 \(max_bytes\)'):
    reader.read_checkpoint(path, max_bytes=999)


# Views a torch.save file may hold: (storage numel, offset, size, stride). Size-1 dimensions may
# have any stride, stride 0 included (HF's expanded position_ids buffers).
VIEWS = [(24, 0, (2, 3, 4), (12, 4, 1)), (24, 0, (4, 3, 2), (1, 4, 12)), (24, 5, (3, 2), (6, 1)),
         (24, 23, (), ()), (24, 24, (0, 3), (3, 1)), (24, 2, (1, 5), (0, 1)),
         (24, 0, (2, 2, 2), (1, 8, 3)), (24, 3, (7,), (3,))]


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
def test_valid_views_match_indexing_by_hand(tmp_path, fmt):
  tensors = {f'v{i}': ('0', n, off, size, stride) for i, (n, off, size, stride) in enumerate(VIEWS)}
  pkl, storage = craft.state_dict(tensors), craft.f32(24)
  path = (craft.zip_checkpoint(tmp_path / 'v.pth', pkl, {'0': storage}) if fmt == 'zip' else
          craft.legacy_checkpoint(tmp_path / 'v.pth', pkl, [('0', 24, storage)]))
  got = reader.read_checkpoint(path)
  for i, (_, off, size, stride) in enumerate(VIEWS):
    want = np.zeros(size, np.float32)
    for idx in np.ndindex(*size):  # element idx lies at offset + sum(i_k * stride_k)
      want[idx] = off + sum(a * s for a, s in zip(idx, stride, strict=True))
    np.testing.assert_array_equal(got[f'v{i}'], want, err_msg=str(VIEWS[i]))


def test_legacy_pickle_longer_than_the_first_read(tmp_path):
  """The legacy reader reads a pickle in growing pieces (1 MiB first): a 3 MB one is whole."""
  p = craft.Pickle().raw(b'}(').str('note').str('x' * 3_000_000).str('w')
  craft.tensor_ops(p, '0', 4, 0, (4,), (1,))
  path = craft.legacy_checkpoint(tmp_path / 'l.pth', p.raw(b'u').bytes(), [('0', 4, craft.f32(4))])
  np.testing.assert_array_equal(reader.read_checkpoint(path)['w'], np.arange(4))
  data = path.read_bytes()
  path.write_bytes(data[:2_000_000])  # cut inside the long string
  with pytest.raises(CheckpointError, match=r'runs past the end of the pickle'):
    reader.read_checkpoint(path)


def test_a_rank_numpy_cannot_hold_is_refused(tmp_path):
  path = craft.zip_checkpoint(tmp_path / 'r.pth', craft.state_dict(
      {'w': ('0', 1, 0, (1,) * 40, (1,) * 40)}), {'0': craft.f32(1)})
  with pytest.raises(CheckpointError, match=r'storage 0: a tensor with 40 sizes and 40 strides'):
    reader.read_checkpoint(path)


def test_bool_bytes_other_than_0_and_1_read_as_true(tmp_path):
  path = craft.zip_checkpoint(tmp_path / 'b.pth', craft.state_dict(
      {'b': ('0', 4, 0, (4,), (1,), 'BoolStorage'), 's': ('0', 4, 2, (), (), 'BoolStorage')}),
      {'0': b'\x00\x01\x02\xff'})
  got = reader.read_checkpoint(path)
  assert got['b'].dtype == np.bool_ and got['b'].tolist() == [False, True, True, True]
  assert got['b'].view(np.uint8).tolist() == [0, 1, 1, 1]
  # A 0-d bool is an array too (found by the long fuzz run: `a != 0` gave a NumPy scalar).
  assert isinstance(got['s'], np.ndarray) and got['s'].shape == () and got['s'].item() is True
  path = craft.safetensors_file(tmp_path / 'b.safetensors', {
      'x': {'dtype': 'BOOL', 'shape': [], 'data_offsets': [0, 1]}}, b'\x07')
  x = reader.read_checkpoint(path)['x']
  assert isinstance(x, np.ndarray) and x.shape == () and x.view(np.uint8).item() == 1


def test_legacy_stream_whose_count_differs_from_the_pickle(tmp_path):
  path = craft.legacy_checkpoint(tmp_path / 'c.pth', craft.state_dict(
      {'w': ('0', 4, 0, (4,), (1,))}), [('0', 3, craft.f32(4))])
  with pytest.raises(CheckpointError, match=r'storage 0: 3 elements in the stream; the pickle '
                     r'declares 4'):
    reader.read_checkpoint(path)


def test_safetensors_bfloat16_through_the_package(tmp_path):
  """The safetensors package's NumPy API gives BF16 as ml_dtypes.bfloat16 (the reader imports
  ml_dtypes, which registers the name); the values are the file's."""
  values = np.array([1.0, -2.5, 3.140625, 65280.0], ml_dtypes.bfloat16)
  path = craft.safetensors_file(tmp_path / 'b.safetensors', {
      'x': {'dtype': 'BF16', 'shape': [2, 2], 'data_offsets': [0, 8]}}, values.tobytes())
  got = reader.read_checkpoint(path)['x']
  assert got.dtype == ml_dtypes.bfloat16 and got.shape == (2, 2)
  np.testing.assert_array_equal(got.astype(np.float32).ravel(), [1.0, -2.5, 3.140625, 65280.0])


def test_safetensors_dtype_outside_the_supported_set(tmp_path):
  path = craft.safetensors_file(tmp_path / 'f8.safetensors', {
      'x': {'dtype': 'F8_E4M3', 'shape': [2], 'data_offsets': [0, 2]}}, b'\x00\x01')
  with pytest.raises(CheckpointError, match=r'x: dtype F8_E4M3 is not supported'):
    reader.read_checkpoint(path)


# --- What held, and must keep holding -----------------------------------------------------------


def _os_system(marker) -> bytes:
  return craft.Pickle().glob('os', 'system').str(f'touch {marker}').raw(b'\x85R').bytes()


SPELLINGS = {  # ways to reach a callable, each with `touch MARKER` as its argument where it can
    'GLOBAL': lambda m: _os_system(m),
    'STACK_GLOBAL': lambda m: craft.Pickle().str('os').str('system').raw(b'\x93').str(
        f'touch {m}').raw(b'\x85R').bytes(),
    'INST': lambda m: craft.Pickle().raw(b'(').str(f'touch {m}').raw(b'ios\nsystem\n').bytes(),
    'OBJ': lambda m: craft.Pickle().raw(b'(').glob('os', 'system').str(f'touch {m}').raw(
        b'o').bytes(),
    'EXT1': lambda m: craft.Pickle().raw(b'\x82\x01').str(f'touch {m}').raw(b'\x85R').bytes(),
    'dotted name': lambda m: craft.Pickle().glob('torch._utils', '_rebuild_tensor.__globals__')
    .bytes(),
    'NUL byte': lambda m: craft.Pickle().glob('torch\x00', 'FloatStorage').bytes(),
    'REDUCE on a storage marker': lambda m: craft.Pickle().glob('torch', 'FloatStorage').str(
        f'touch {m}').raw(b'\x85R').bytes(),
    'NEWOBJ on an allowlisted function': lambda m: craft.Pickle().glob(
        'collections', 'OrderedDict').raw(b')\x81').bytes(),
    'BUILD on a TorchScript object twice': lambda m: craft.Pickle().glob('__torch__.m', 'M').raw(
        b')\x81}b}b').bytes(),
}


@pytest.mark.parametrize('spelling', sorted(SPELLINGS))
def test_the_allowlist_refuses_every_spelling_of_a_callable(tmp_path, spelling):
  marker = tmp_path / 'pwned'
  path = craft.zip_checkpoint(tmp_path / 'evil.pth', SPELLINGS[spelling](marker), {})
  with pytest.raises(UnsafeCheckpointError) as e:
    reader.read_checkpoint(path)
  assert str(e.value).startswith(f'{path}: ') and str(e.value).isprintable()
  assert not marker.exists()


def _script_archive(path, extra):
  p = craft.Pickle().glob('__torch__.m', 'M').raw(b')\x81}').str('weight')
  craft.tensor_ops(p, '0', 4, 0, (4,), (1,))
  return craft.zip_checkpoint(path, p.raw(b'sb').bytes(), {'0': craft.f32(4)}, extra=extra)


def test_torchscript_code_and_constants_are_never_read(tmp_path):
  marker = tmp_path / 'pwned'
  path = _script_archive(tmp_path / 'ts.pt', {
      'archive/constants.pkl': _os_system(marker),
      'archive/code/__torch__/m.py': f'import os\nos.system("touch {marker}")\n'})
  assert b'system' in path.read_bytes()  # stored: the pickle that would run it is in there
  got = reader.read_checkpoint(path)
  assert got.kind == 'torchscript' and list(got) == ['weight'] and not marker.exists()


def test_zip_member_names_never_leave_the_archive(tmp_path):
  """A storage key with `..` only names a member inside the archive; nothing is written."""
  key = '../../../escaped'
  inner = tmp_path / 'a' / 'b'
  inner.mkdir(parents=True)
  path = craft.zip_checkpoint(inner / 'k.pth', craft.state_dict(
      {'w': (key, 4, 0, (4,), (1,))}), {key: craft.f32(4)})
  before = sorted(p for p in tmp_path.rglob('*'))
  np.testing.assert_array_equal(reader.read_checkpoint(path)['w'], np.arange(4))
  assert sorted(p for p in tmp_path.rglob('*')) == before
  path = craft.zip_checkpoint(inner / 'm.pth', craft.state_dict(
      {'w': ('../k.pth', 4, 0, (4,), (1,))}), {})
  with pytest.raises(CheckpointError, match=r'its storage \.\./k\.pth is not in the archive'):
    reader.read_checkpoint(path)


# --- The convert CLI: one line and exit 2 for a bad file, a traceback for a bug ------------------


def test_convert_cli_gives_one_line_and_exit_2_for_every_attack(attacks, tmp_path, capsys):
  from vaflax.convert import __main__ as cli  # noqa: PLC0415

  for name, path in sorted(attacks.items()):
    rc = cli.main(['--format=torchvision_resnet', f'--input={path}', f'--workdir={tmp_path / name}'])
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert rc == 2 and len(lines) == 1 and captured.out == '', (name, captured)
    assert lines[0].startswith('error: ') and path in lines[0], name
    assert lines[0].isprintable(), name
    assert not (tmp_path / name).exists(), name  # nothing written for a refused file


def test_convert_cli_keeps_the_traceback_of_a_bug(attacks, tmp_path, monkeypatch):
  from vaflax import convert  # noqa: PLC0415
  from vaflax.convert import __main__ as cli  # noqa: PLC0415

  def bug(*args):
    raise RuntimeError('a bug in vaflax')
  monkeypatch.setattr(convert, 'convert', bug)
  with pytest.raises(RuntimeError, match='a bug in vaflax'):
    cli.main(['--format=mae', f'--input={attacks["negative_stride"]}', f'--workdir={tmp_path}'])


@pytest.mark.slow
def test_convert_cli_process_on_a_hostile_file_exits_2_without_a_signal(attacks, tmp_path):
  """The file that made `python -m vaflax.convert` die with SIGSEGV (exit 139) before."""
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415

  r = subprocess.run([sys.executable, '-m', 'vaflax.convert', '--format=torchvision_resnet',
                      f'--input={attacks["negative_stride"]}', f'--workdir={tmp_path / "out"}'],
                     capture_output=True, text=True, timeout=300, env={**os.environ,
                                                                       'JAX_PLATFORMS': 'cpu'})
  assert r.returncode == 2 and r.stdout == ''
  assert r.stderr.splitlines() == [
      f'error: {attacks["negative_stride"]}: storage 0: a '
      'tensor stride is -1048576; expected a count in [0, 2^48]']
