"""predict, --cropped and abaw against crafted input (issue 26, docs/reliability.md "Hostile
input"): oversized and bomb images, colliding and undecodable names, names that forge log lines or
spreadsheet formulas, failures inside one input, bad launcher values, stale temporary files and
foreign files in OUT. Every input is made here; no model is needed (a stub stands in where the
inputs never reach one)."""

import csv
import json
import os
import struct
import types
import zlib

import av
import numpy as np
import pytest
from PIL import Image

from vaflax import abaw, fileio, media, predict
from vaflax.predict import cli, collection, cropped, outputs, summary


def png(width: int, height: int, data: bool = True) -> bytes:
  """A grayscale PNG of zeros, compressed row by row (a 12000 x 12000 one is 140 KB and never
  held whole); `data=False`: the header only (enough for the size checks made before decoding)."""
  def chunk(kind, body):
    return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))

  out = b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0))
  if data:
    z, row, parts = zlib.compressobj(9), b'\0' * (width + 1), []
    for _ in range(height):
      parts.append(z.compress(row))
    out += chunk(b'IDAT', b''.join(parts) + z.flush())
  return out + chunk(b'IEND', b'')


# A stand-in for predict.Predictor where no face reaches the model: what the run records of it.
STUB = types.SimpleNamespace(window=0, batch_size=8, uses_audio=False, sample_rate=16000,
                             workdir='stub', step=0, config=types.SimpleNamespace(model_name='stub'),
                             flip=False, crop_margin=0.2, crop_size=112, pp_spec='',
                             calibration=None)
QUIET = predict.Options(progress=False, plots=False)


def _table(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def test_pixel_limit_and_bombs_are_errors_before_decoding(tmp_path):
  (tmp_path / 'thin.png').write_bytes(png(3, 4000))
  assert len((tmp_path / 'thin.png').read_bytes()) < 100
  assert media.read_image(tmp_path / 'thin.png').shape == (4000, 3, 3)
  big = tmp_path / 'big.png'
  big.write_bytes(png(12000, 12000, data=False))  # refused from its header: nothing decoded
  with pytest.raises(predict.InputError) as e:
    media.read_image(big)
  assert str(e.value) == (f'{big}: cannot read as an image (12000 x 12000 = 144,000,000 pixels '
                          'is over the pixel limit of 50,000,000; raise it with --max_pixels)')
  # Over PIL's own guard (2 x 89.5 MP) with the limit raised: its DecompressionBombError is
  # the same one-line InputError (it crashed --cropped and abaw before).
  (tmp_path / 'bomb.png').write_bytes(png(20000, 20000, data=False))
  with pytest.raises(predict.InputError, match=r'bomb.png: cannot read as an image '
                     r'\(DecompressionBombError: Image size \(400000000 pixels\)'):
    media.read_image(tmp_path / 'bomb.png', max_pixels=10**9)
  # Video frames: the frame size is checked when the video is opened.
  frames = np.zeros((3, 64, 48, 3), np.uint8)
  from vaflax.data import video_io  # noqa: PLC0415

  video_io.write_mp4(tmp_path / 'v.mp4', frames, 25)
  with pytest.raises(predict.InputError, match=r'v.mp4: cannot open as a video \(48 x 64 = '
                     '3,072 pixels is over the pixel limit of 3,000;'):
    predict.open_input(tmp_path / 'v.mp4', max_pixels=3000)
  assert sum(1 for _ in predict.open_input(tmp_path / 'v.mp4', max_pixels=3072)) == 3


def test_output_names_are_unique_and_never_the_runs_own():
  stems = collection._stems  # noqa: SLF001
  assert stems(['x.png', 'x_png.jpg']) == ['x', 'x_png']
  got = stems(['x.jpg', 'x.png', 'x_png.jpg'])
  assert got[2] == 'x_png' and got[0].startswith('x_jpg_') and got[1].startswith('x_png_')
  assert len(set(got)) == 3 and len(got[1]) == len('x_png_') + 8
  assert stems(['a..b.jpg', 'a__b.jpg']) == ['a..b', 'a__b']
  a, b = stems(['../b.jpg', '__/b.jpg'])  # list entries outside the list's folder
  assert a != b and a.startswith('__/b_jpg_') and b.startswith('__/b_jpg_')
  got = stems(['summary.jpg', 'summary-1of2.png', 'cropped.png', 'A.png', 'a.png', 'b.png'])
  assert [g.split('_')[0] for g in got[:5]] == ['summary', 'summary-1of2', 'cropped', 'A', 'a']
  assert all(len(g.split('_')[-1]) == 8 for g in got[:5]) and got[5] == 'b'
  got = stems(['a.png', 'a.csv/b.png', 'summary.csv/c.png', 'sub/c.png'])
  assert got[0].startswith('a_png_') and got[1] == 'a.csv/b' and got[3] == 'sub/c'
  assert got[2].startswith('summary.csv_') and got[2].endswith('/c')
  # The same names whatever the order or the shard: a hash of the name, not of the listing.
  assert stems(['x_png.jpg', 'x.png', 'x.jpg']) == [got_ for got_ in
                                                    [stems(['x.jpg', 'x.png', 'x_png.jpg'])[i]
                                                     for i in (2, 1, 0)]]


def test_hostile_names_each_get_their_row_and_reruns_complete(tmp_path, capsys):
  src, out = tmp_path / 'in', tmp_path / 'out'
  src.mkdir()
  names = ['x.png', 'x_png.jpg', 'x.jpg', 'a..b.jpg', 'a__b.jpg', 'summary.jpg', '=cmd.png',
           '-2+3.png', '@sum.png', 'new\nline.png', '$x$.png']
  for n in names:
    (src / n).write_bytes(b'not an image')
  raw = os.fsencode(str(src)) + b'/bad\xff\xfe.png'  # a name that is not UTF-8
  with open(raw, 'wb') as f:
    f.write(b'not an image')
  # OUT holds what a killed run left: a temporary file of a dead process on this host, one of a
  # live process (this one), one of another host, a file that is not ours, and a JSON that is
  # not a summary where an input's summary goes.
  out.mkdir()
  host = fileio.HOST
  dead = out / f'x.part{2**22 + 12345}h{host}.csv'
  live = out / f'live.part{os.getpid()}h{host}.csv'
  other = out / 'x.part77hffffff.csv'
  mine = out / 'notes.part.txt'
  for p in (dead, live, other, mine):
    p.write_text('left behind')
  (out / 'a__b.json').write_text('[1, 2, 3]')
  (out / 'a..b.json').write_text('{"path": "a..b.jpg", "status": "ok", "duration_s": "x"}')
  (out / '$x$.json').write_text('"a string"')

  log = []
  res = collection.run(STUB, str(src), str(out), QUIET, log=log.append)
  rows = {r['path']: r for r in res.rows}
  shown = sorted(outputs.text(n) for n in [*names, os.fsdecode(raw).rsplit('/', 1)[1]])
  assert sorted(outputs.text(p) for p in rows) == shown and len(rows) == 12
  assert {r['status'] for r in rows.values()} == {'error'}
  assert rows['new\nline.png']['error'].startswith(f'{src}/new\nline.png: cannot read')
  # 12 inputs, 12 JSON summaries, each naming its own input.
  jsons = sorted(out.rglob('*.json'))
  assert len(jsons) == 12
  # (the JSON keeps a name's real bytes as surrogate escapes; the table shows them as \xNN)
  paths = sorted(json.loads(p.read_text())['path'] for p in jsons)
  assert 'bad\udcff\udcfe.png' in paths and sorted(map(outputs.text, paths)) == sorted(rows)
  assert not dead.exists() and live.exists() and other.exists() and mine.exists()
  assert any('removed 1 temporary files of dead runs' in m for m in log)
  assert any('a__b.json is not a completion record (JSON list, not an object)' in m for m in log)
  assert any('a..b.json is not a completion record (TypeError: ' in m for m in log)  # duration
  assert any('$x$.json is not a completion record (JSON str, not an object)' in m for m in log)

  # The table: every input once, text cells neutralised, names that are not UTF-8 shown with
  # \xNN; read back, the names come back.
  table = _table(out / 'summary.csv')
  cells = sorted(r['path'] for r in table)
  assert "'=cmd.png" in cells and "'-2+3.png" in cells and "'@sum.png" in cells
  assert 'bad\\xff\\xfe.png' in cells and 'summary.jpg' in cells
  assert all(r['error'].startswith(str(src)) for r in table)  # paths are absolute: no formula
  assert sorted(r['path'] for r in summary.read_table(str(out))) == shown
  (tmp_path / 'merge').mkdir()
  (tmp_path / 'merge' / 'summary-1of1.csv').write_text('path,status\nx.png\n')
  with pytest.raises(ValueError, match='summary-1of1.csv:2: not a row of a summary table'):
    summary.read_table(str(tmp_path / 'merge'))

  # The console: one line per message whatever the names hold.
  collection.log_stderr(f"{'new\nline.png'}: error (\x1b[31mred)")
  err = capsys.readouterr().err
  assert err == 'new\\nline.png: error (\\x1b[31mred)\n'

  # A rerun finds every input complete; a shard of 2 (from SLURM's variables) takes its half.
  again = collection.run(STUB, str(src), str(out), QUIET)
  assert again.skipped == 12 and len(again.rows) == 12
  shard = collection.parse_shard('auto', {'SLURM_PROCID': '1', 'SLURM_NTASKS': '2'})
  half = collection.run(STUB, str(src), str(out), QUIET, shard=shard)
  assert half.skipped == len(half.rows) == sum(collection.in_shard(i.rel, shard)
                                               for i in collection.list_inputs(src)[1])

  # A list file whose entries leave its folder ('../b.jpg') next to a '__' folder.
  lst = tmp_path / 'lists'
  (lst / '__').mkdir(parents=True)
  (tmp_path / 'b.jpg').write_bytes(b'not an image')
  (lst / '__' / 'b.jpg').write_bytes(b'not an image')
  (lst / 'inputs.txt').write_text('../b.jpg\n__/b.jpg\nnul\0.png\n')  # a NUL: no such file
  res = collection.run(STUB, str(lst / 'inputs.txt'), str(tmp_path / 'out2'), QUIET)
  assert sorted(r['path'] for r in res.rows) == ['../b.jpg', '__/b.jpg', 'nul\0.png']
  assert res.rows[2]['error'].endswith('its JSON could not be written (ValueError: embedded null '
                                       'byte)')
  assert [r['path'] for r in _table(tmp_path / 'out2' / 'summary.csv')][2] == 'nul\\x00.png'
  assert len(list((tmp_path / 'out2' / '__').glob('*.json'))) == 2
  assert collection.run(STUB, str(lst / 'inputs.txt'), str(tmp_path / 'out2'), QUIET).skipped == 2


def _thin_video(path):
  """A 1-pixel-wide clip (PNG frames in a .mov): it decodes, but an H.264 overlay of it cannot
  be encoded (an even width is needed)."""
  with av.open(str(path), 'w') as f:
    vs = f.add_stream('png', rate=25)
    vs.width, vs.height, vs.pix_fmt = 1, 64, 'rgb24'
    for i in range(4):
      for p in vs.encode(av.VideoFrame.from_ndarray(np.full((64, 1, 3), 40 * i, np.uint8),
                                                     format='rgb24')):
        f.mux(p)
    for p in vs.encode():
      f.mux(p)


@pytest.mark.slow  # BlazeFace compiles for two frame sizes (~30 s on 2 cores)
def test_a_failure_inside_one_input_is_its_error_row(tmp_path):
  src = tmp_path / 'in'
  src.mkdir()
  _thin_video(src / 'thin.mov')
  (src / 'big.png').write_bytes(png(12000, 12000, data=False))
  (src / 'ok.png').write_bytes(png(64, 48))
  opts = predict.Options(progress=False, plots=False, overlay=True)
  res = collection.run(STUB, str(src), str(tmp_path / 'out'), opts)
  rows = {r['path']: r for r in res.rows}
  # The overlay of a 1-pixel-wide clip fails in OpenCV/FFmpeg (it killed the run before).
  assert rows['thin.mov']['status'] == 'error'
  assert rows['thin.mov']['error'].startswith(f'{src}/thin.mov: writing outputs: ')
  assert 'over the pixel limit' in rows['big.png']['error']
  assert rows['ok.png']['status'] == 'no_face' and rows['ok.png']['frames'] == 1  # blank
  assert [r['path'] for r in _table(tmp_path / 'out' / 'summary.csv')] == [
      'big.png', 'ok.png', 'thin.mov']


def test_plot_titles_are_plain_text(tmp_path):
  rows = [outputs.Row(k, k / 25, 0, 10, 10, 40, 40, 0.9) for k in range(3)]
  va = np.array([[0.1, 0.2], [0.2, 0.1], [-0.3, 0.4]])
  files = outputs.write_plots(str(tmp_path), '$\\frac{a}{$b.png', rows, va, is_video=True)
  for p in files.values():
    with Image.open(p) as im:
      assert im.size[0] > 100


class _StubRun:
  """vaflax.api.Run's `predict` for --cropped / abaw: valence = mean pixel / 255, arousal = -it;
  an image 7 pixels wide is one the model cannot take."""

  def predict(self, images):
    if any(im.shape[1] == 7 for im in images):
      raise ValueError('cannot resize')
    v = np.array([im.mean() / 255 for im in images])
    return {'valence': v, 'arousal': -v}


def test_cropped_and_abaw_count_unreadable_crops(tmp_path):
  d = tmp_path / 'crops'
  d.mkdir()
  Image.fromarray(np.full((8, 8, 3), 51, np.uint8)).save(d / '=a.png')
  Image.fromarray(np.full((8, 7, 3), 51, np.uint8)).save(d / 'seven.png')
  (d / 'big.png').write_bytes(png(12000, 12000, data=False))
  (d / 'half.png').write_bytes(png(64, 64)[:60])
  files = sorted(str(p) for p in d.iterdir())
  (tmp_path / 'out').mkdir()
  dead = tmp_path / 'out' / f'cropped.part{2**22 + 7}h{fileio.HOST}.csv'  # a killed run's
  dead.write_text('half a table')
  path, ok, bad = cropped.predict_crops(_StubRun(), files, str(tmp_path / 'out'), str(d))
  assert not dead.exists() and os.listdir(tmp_path / 'out') == ['cropped.csv']
  assert (ok, bad) == (1, 3)
  table = {r['path']: r for r in _table(path)}
  assert table["'=a.png"]['status'] == 'ok' and float(table["'=a.png"]['valence']) == 0.2
  assert 'over the pixel limit' in table['big.png']['error']
  assert 'cannot read as an image' in table['half.png']['error']
  assert 'the model cannot take this image (8, 7, 3)' in table['seven.png']['error']

  # abaw: the sample read with the csv module (a quoted location with a comma), unreadable
  # crops counted with the missing ones and filled, locations that would leave --frames refused.
  frames = tmp_path / 'cropped_aligned'
  (frames / 'v,1').mkdir(parents=True)
  (frames / '=v').mkdir()
  Image.fromarray(np.full((8, 8, 3), 102, np.uint8)).save(frames / 'v,1' / '00001.jpg')
  (frames / 'v,1' / '00002.jpg').write_bytes(png(12000, 12000, data=False))
  Image.fromarray(np.full((8, 8, 3), 51, np.uint8)).save(frames / '=v' / '00001.jpg')
  sample = tmp_path / 'sample.txt'
  sample.write_text('image_location,valence,arousal\n"v,1/00001.jpg",0,0\n"v,1/00002.jpg",0,0\n'
                    'v,1/00003.jpg\n=v/00001.jpg,0,0\n')
  # (line 4 is unquoted: its first cell is 'v', not a <video>/<frame> path)
  with pytest.raises(ValueError, match=r"sample.txt:4: 'v' is not <video>/<frame>.jpg"):
    abaw.read_sample(sample)
  sample.write_text('image_location,valence,arousal\n"v,1/00001.jpg",0,0\n"v,1/00002.jpg",0,0\n'
                    '"v,1/00003.jpg",0,0\n=v/00001.jpg,0,0\n')
  header, locs = abaw.read_sample(sample)
  assert locs == ['v,1/00001.jpg', 'v,1/00002.jpg', 'v,1/00003.jpg', '=v/00001.jpg']
  va, counts = abaw.predict(_StubRun(), locs, str(frames))
  assert counts == {'no_crop': 1, 'unreadable': 1}
  np.testing.assert_allclose(va[:, 0], [0.4, np.nan, np.nan, 0.2])
  filled, _ = abaw.fill(va, locs)
  sub = abaw.write(tmp_path / 'sub.txt', header, locs, filled)
  lines = open(sub).read().splitlines()
  assert lines[1] == '"v,1/00001.jpg",0.400000,-0.400000' and lines[4].startswith("'=v/00001.jpg,")
  assert list(abaw.read_predictions(sub)) == locs  # read back: the same locations
  sample.write_bytes(b'image_location,valence,arousal\nv\xff/00001.jpg,0,0\n')
  with pytest.raises(ValueError, match="sample.txt: not a UTF-8 CSV file"):
    abaw.read_sample(sample)
  for bad in ('../secret/00001.jpg', '/etc/00001.jpg', 'v/../../x.jpg', 'v//1.jpg'):
    sample.write_text(f'image_location,valence,arousal\n{bad},0,0\n')
    with pytest.raises(ValueError, match='is not <video>/<frame>.jpg inside the frames folder'):
      abaw.read_sample(sample)


@pytest.mark.parametrize('env, want', [
    ({}, (1, 1)),
    ({'SLURM_PROCID': '0', 'SLURM_NTASKS': '4'}, (1, 4)),
    ({'TPU_WORKER_ID': '1', 'TPU_WORKER_HOSTNAMES': 'a,b,c'}, (2, 3)),
    ({'SLURM_PROCID': '0', 'SLURM_NTASKS': '0'}, 'SLURM_PROCID=\'0\' and SLURM_NTASKS=\'0\''),
    ({'SLURM_PROCID': '5', 'SLURM_NTASKS': '2'}, 'make no shard'),
    ({'SLURM_PROCID': '-1', 'SLURM_NTASKS': '2'}, 'make no shard'),
    ({'JAX_PROCESS_ID': '1', 'JAX_NUM_PROCESSES': 'two'}, 'JAX_NUM_PROCESSES=\'two\''),
    ({'SLURM_PROCID': '0'}, 'SLURM_NTASKS=\'\''),
    ({'SLURM_PROCID': '\u0661', 'SLURM_NTASKS': '2'}, 'make no shard'),  # Arabic-Indic digit 1
])
def test_shard_auto_checks_the_launchers_values(env, want):
  if isinstance(want, tuple):
    assert collection.parse_shard('auto', env) == want
  else:
    with pytest.raises(ValueError, match=want):
      collection.parse_shard('auto', env)


@pytest.mark.parametrize('flag, message', [
    ('--batch_size=0', '--batch_size must be >= 1, got 0'),
    ('--batch_size=100000', '--batch_size must be <= 4096, got 100000'),
    ('--workers=0', '--workers must be >= 1, got 0'),
    ('--max_pixels=0', '--max_pixels must be >= 1, got 0'),
    ('--crop_margin=nan', '--crop_margin must be >= 0.0, got nan'),
    ('--frame_stride=-1', '--frame_stride must be >= 1, got -1'),
    ('--checkpoint_step=-2', '--checkpoint_step must be >= 0, got -2'),
])
def test_numeric_flags_are_checked_before_the_model_loads(tmp_path, capsys, flag, message):
  # The workdir does not exist: the flag's error comes first, before anything is loaded.
  rc = cli.main([f'--workdir={tmp_path / "none"}', f'--input={tmp_path}', '--output=o', flag])
  err = capsys.readouterr().err
  assert rc == 2 and err == f'error: {message}\n'


def test_shard_env_error_is_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv('SLURM_PROCID', '0')
  monkeypatch.setenv('SLURM_NTASKS', '0')
  rc = cli.main([f'--workdir={tmp_path / "none"}', f'--input={tmp_path}', '--output=o'])
  err = capsys.readouterr().err
  assert rc == 2 and err.startswith('error: --shard=auto: SLURM_PROCID') and err.count('\n') == 1
  assert abaw.main(['--workdir=w', '--frames=f', '--output=o', '--sample=s', '--batch_size=0']) == 2
  assert capsys.readouterr().err == 'error: --batch_size must be >= 1, got 0\n'
