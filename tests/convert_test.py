"""PyTorch checkpoints in: the torch-free reader, the mappers and the CLI, against fixtures written
by real PyTorch (tests/fixtures/make_torch_fixtures.py; README.md beside them)."""

import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from vaflax.convert import reader

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'torch')


def fixture(name):
  return os.path.join(FIXTURES, name)


# --- Reader --------------------------------------------------------------------------------------


@pytest.mark.parametrize('name', ['reader_zip.pth', 'reader_legacy.pth', 'reader_nested.pt',
                                  'reader.safetensors'])
def test_reader_round_trips_what_torch_wrote(name):
  expected = dict(np.load(fixture('reader_expected.npz')))
  got = reader.read_checkpoint(fixture(name))
  if name.endswith('.safetensors'):
    expected.pop('param')  # the fixture's safetensors file leaves it out
  assert sorted(got) == sorted(expected)  # 'module.' prefixes and the nesting are gone
  for k, want in expected.items():
    assert got[k].shape == want.shape, k
    np.testing.assert_array_equal(got[k].astype(want.dtype), want, err_msg=k)
  assert got['bf16'].dtype.name == 'bfloat16'
  assert got['f16'].dtype == np.float16 and got['i64'].dtype == np.int64
  assert got['u8'].dtype == np.uint8 and got['bool'].dtype == np.bool_
  assert got['i32'].dtype == np.int32


class _RunsACommand:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f'touch {self.marker}',)


def _malicious_zip(path, payload):
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', pickle.dumps({'w': payload}, protocol=2))
    z.writestr('archive/byteorder', 'little')


def _malicious_legacy(path, payload):
  buf = io.BytesIO()
  for obj in (0x1950A86A20F9469CFC6C, 1001, {'little_endian': True}, {'w': payload}, []):
    pickle.dump(obj, buf, protocol=2)
  with open(path, 'wb') as f:
    f.write(buf.getvalue())


@pytest.mark.parametrize('write', [_malicious_zip, _malicious_legacy])
def test_reader_refuses_a_pickle_that_runs_a_command(tmp_path, write):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.pth'
  write(path, _RunsACommand(marker))
  # The pickle really would run it (a plain unpickler on the same bytes).
  assert b'system' in (zipfile.ZipFile(path).read('archive/data.pkl')
                       if zipfile.is_zipfile(path) else path.read_bytes())
  with pytest.raises(reader.UnsafeCheckpointError, match=r'(posix|os)\.system') as e:
    reader.read_checkpoint(str(path))
  assert str(path) in str(e.value)
  assert not marker.exists()


def test_reader_names_what_it_cannot_read(tmp_path):
  p = tmp_path / 'x.pth'
  p.write_bytes(b'not a checkpoint')
  with pytest.raises(ValueError, match='not a PyTorch checkpoint'):
    reader.read_checkpoint(str(p))
