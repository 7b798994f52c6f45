"""vaflax/cli.py: the one override parser (checked against ml_collections' own), the config-file
loader, and every entry point's bad flag as one `error: ...` line with exit code 2."""

import importlib
import os
import subprocess
import sys

import ml_collections
import pytest
from absl import flags as absl_flags
from ml_collections import config_flags

from vaflax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  return ml_collections.ConfigDict({
      'b': True, 'i': 3, 'f': 1.0, 's': 'x', 't': (1, 2), 'l': [1, 2], 'n': None,
      'g': {'x': 1, 'batch_size': 8}})


# (override, the value it gives): hand cases of each type, as ml_collections parses them.
CASES = [
    ('b=true', True), ('b=TRUE', True), ('b=t', True), ('b=1', True), ('b', True),
    ('b=false', False), ('b=F', False), ('b=0', False),
    ('i=7', 7), ('i=-7', -7), ('i=0x10', 16), ('i=0o17', 15), ('i=007', 7), ('i=1_000', 1000),
    ('i= 7', 7),
    ('f=2', 2.0), ('f=1e-3', 0.001), ('f=-2.5', -2.5), ('f=1_0.5', 10.5),
    ('s=hello', 'hello'), ('s=1', '1'), ('s=', ''), ('s=a=b', 'a=b'), ('s="q"', '"q"'),
    ('t=(3, 4)', (3, 4)), ('t=[3,4]', (3, 4)), ('t=3', (3,)), ('t=a', ('a',)), ('t=()', ()),
    ("t=('a','b')", ('a', 'b')), ('t=/x/y', ('/x/y',)), ('t=a,b', ('a,b',)),
    ('g.x=5', 5), ("g={'x': 2}", {'x': 2}),
]
BAD = ['b=yes', 'b=no', 'b=2', 'i=1.5', 'i=1e3', 'i=abc', 'i=0b11', 'f=abc', 't=a b', 'g=3',
       'i']


def _get(config, key):
  for part in key.split('.'):
    config = config[part]
  return config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config


def _ml_collections(item, monkeypatch):
  """The override through ml_collections' config_flags itself, on a private FlagValues (it reads
  the overrides from sys.argv)."""
  argv = ['prog', f'--config.{item}']
  monkeypatch.setattr(sys, 'argv', argv)
  fv = absl_flags.FlagValues()
  config_flags.DEFINE_config_dict('config', _config(), flag_values=fv, lock_config=True)
  fv(argv)
  return _get(fv.config, item.partition('=')[0])


@pytest.mark.parametrize('item, want', CASES)
def test_override_values_as_ml_collections_parses_them(item, want, monkeypatch):
  c = _config()
  cli.apply_overrides(c, [item])
  got = _get(c, item.partition('=')[0])
  assert got == want and type(got) is type(want), (got, want)
  ref = _ml_collections(item, monkeypatch)
  assert ref == want and type(ref) is type(want), ref


@pytest.mark.parametrize('item', BAD)
def test_values_ml_collections_refuses_are_refused_naming_the_key(item, monkeypatch):
  key = item.partition('=')[0]
  with pytest.raises(cli.ConfigError, match=f'^--config.{key}'):
    cli.apply_overrides(_config(), [item])
  with pytest.raises((absl_flags.Error, ValueError)):
    _ml_collections(item, monkeypatch)


def test_lists_and_none_which_ml_collections_cannot_override():
  """A run's config.json has lists (JSON has no tuples) and nulls: they take a tuple literal
  (kept a list) and any Python literal (else the text)."""
  c = _config()
  cli.apply_overrides(c, ['l=(3, 4)', 'n=3'])
  assert c.l == [3, 4] and c.n == 3
  c = _config()
  cli.apply_overrides(c, ['n=abc'])
  assert c.n == 'abc'


def test_overrides_apply_in_order_and_follow_field_references():
  c = _config()
  c.h = c.get_ref('i')
  cli.apply_overrides(c, ['i=4', 'f=0.25', 'i=5'])
  assert (c.i, c.h, c.f) == (5, 5, 0.25) and isinstance(c.f, float)


def test_a_missing_key_names_it_its_close_matches_and_the_fields():
  with pytest.raises(cli.ConfigError) as e:
    cli.apply_overrides(_config(), ['g.batchsize=8'])
  assert str(e.value) == ("--config.g.batchsize: config.g has no field 'batchsize' (did you mean "
                          "'batch_size'?). Its fields: batch_size, x")
  with pytest.raises(cli.ConfigError, match="the config has no field 'zz'"):
    cli.apply_overrides(_config(), ['zz=1'])
  with pytest.raises(cli.ConfigError, match=r"config.i has no field 'j'.*it is a value"):
    cli.apply_overrides(_config(), ['i.j=1'])
  with pytest.raises(cli.ConfigError, match=r"--config.i=abc: config.i has type int \(the "
                     r"config's value: 3\)"):
    cli.apply_overrides(_config(), ['i=abc'])


def test_split_overrides_keeps_the_order_and_the_other_flags():
  assert cli.split_overrides(['--workdir=w', '--config.a.b=1', '--x', '--config.c']) == (
      ['a.b=1', 'c'], ['--workdir=w', '--x'])


def test_parse_arg_parses_like_an_override():
  a = cli.parse_arg('runlocal,variant=50,name=B/16,rate=0.5,freeze=0', runlocal=False,
                    variant=18, name='', rate=1.0, freeze=True)
  assert a.to_dict() == {'runlocal': True, 'variant': 50, 'name': 'B/16', 'rate': 0.5,
                         'freeze': False}
  with pytest.raises(cli.ConfigError, match=r"unknown config argument 'foo'; known: a, b"):
    cli.parse_arg('foo=1', a=1, b=2)
  with pytest.raises(cli.ConfigError, match='config argument runlocal=yes: expected a bool'):
    cli.parse_arg('runlocal=yes', runlocal=False)  # before: silently False


def test_load_config_applies_overrides_then_locks(tmp_path):
  (tmp_path / 'c.py').write_text(
      'import ml_collections\n'
      'def get_config(arg=None):\n'
      '  return ml_collections.ConfigDict({"arg": arg, "batch_size": 32, "lr": 0.1})\n')
  c = cli.load_config(f'{tmp_path}/c.py:small', ['batch_size=8', 'lr=1'])
  assert (c.arg, c.batch_size, c.lr) == ('small', 8, 1.0)
  assert cli.load_config(f'{tmp_path}/c.py').arg is None  # no ':': get_config()
  with pytest.raises(AttributeError):
    c.new_field = 1  # locked, as ml_collections' lock_config=True
  with pytest.raises(cli.ConfigError, match=r'/nope.py: no such file; .* has c.py'):
    cli.load_config(f'{tmp_path}/nope.py')


def test_printable_escapes_control_characters_and_undecodable_bytes():
  assert cli.printable('a\nb\x1b[31mc\x9b') == 'a\\nb\\x1b[31mc\\x9b'
  assert cli.printable(os.fsdecode(b'x\xff.mp4')) == 'x\\xff.mp4'
  assert cli.printable('été') == 'été'


# Each entry point with its required flags: the bad flag is what fails.
ENTRY_POINTS = {
    'vaflax.main': ['--config=c.py', '--workdir=w'],
    'vaflax.evaluate': ['--workdir=w'],
    'vaflax.predict.cli': ['--output=o'],
    'vaflax.abaw': [],
    'vaflax.benchmark': ['--config=c.py'],
    'vaflax.convert.__main__': ['--format=emonet', '--input=x.pth', '--workdir=w'],
    'vaflax.export.__main__': ['--workdir=w', '--format=onnx', '--output=o'],
    'vaflax.calibrate': ['--workdir=w'],
}


@pytest.mark.parametrize('module', ENTRY_POINTS)
def test_every_entry_point_gives_a_bad_flag_one_line_and_exit_2(module, capsys):
  main = importlib.import_module(module).main  # all in one process: no flag registry to clash
  assert main([*ENTRY_POINTS[module], '--no_such_flag=1']) == 2
  assert main(ENTRY_POINTS[module][1:]) == 2 if ENTRY_POINTS[module] else True
  err = capsys.readouterr().err.splitlines()
  prog = 'python -m ' + module.removesuffix('.__main__').removesuffix('.cli')
  assert err[0] == (f'error: unrecognized arguments: --no_such_flag=1 ({prog} --help lists the '
                    'flags)'), err
  if ENTRY_POINTS[module]:  # a required flag left out
    assert len(err) == 2 and err[1].startswith('error: the following arguments are required: ')
  else:
    assert len(err) == 1


def test_a_bad_override_in_a_process_is_one_line_and_exit_2():
  """The real `python -m` path: the config file loaded once, the key named, no traceback."""
  r = subprocess.run(
      [sys.executable, '-m', 'vaflax.main', '--config=configs/resnet_va.py:runlocal',
       '--workdir=/nonexistent/w', '--config.optimizer.learning_rate=1', '--config.batch_size=9'],
      cwd=REPO, env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True, text=True,
      timeout=120)
  assert r.returncode == 2 and r.stdout == '', r.stderr[-2000:]
  assert r.stderr.splitlines() == [
      "error: --config.optimizer.learning_rate: config.optimizer has no field 'learning_rate'. "
      'Its fields: b1, b2, grad_clip_norm, layer_decay, lr, momentum, name, weight_decay'], r.stderr
