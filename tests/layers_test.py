"""The import rule of docs/architecture.md, on the static import graph of vaflax/ (imports inside
functions counted; benchmarks/import_graph.py computes it): inference code pulls in no training
code, and no two vaflax modules import each other, directly or through others."""

import importlib.util
import os

import pytest

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     'benchmarks', 'import_graph.py')
_spec = importlib.util.spec_from_file_location('import_graph', _PATH)
ig = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ig)

TRAINING = ['vaflax.train', 'vaflax.stages', 'vaflax.recipes', 'vaflax.optim', 'vaflax.aot',
            'vaflax.data.balance']


@pytest.fixture(scope='module')
def edges():
  return ig.graph()


@pytest.mark.parametrize('entry, grain_pipeline_allowed', [
    ('vaflax.api', False), ('vaflax.predict.cli', False), ('vaflax.runs', False),
    ('vaflax.evaluate', True), ('vaflax.abaw', False), ('vaflax.convert', False),
    ('vaflax.export', False), ('vaflax.scoring', True)])
def test_inference_imports_no_training_code(edges, entry, grain_pipeline_allowed):
  if entry not in edges:
    pytest.skip(f'{entry} is not in this tree')
  closure = ig.closure(edges, entry)
  forbidden = TRAINING + ([] if grain_pipeline_allowed else ['vaflax.data.pipeline'])
  assert not sorted(closure & set(forbidden)), f'{entry} pulls in training code'


def test_the_training_entry_point_does_reach_the_loop(edges):
  """The closure is not vacuous: vaflax.main reaches every training module."""
  assert set(TRAINING) | {'vaflax.data.pipeline'} <= ig.closure(edges, 'vaflax.main')


def test_no_import_cycles():
  assert ig.cycles(ig.graph(parents=False)) == []


def test_the_graph_sees_function_level_imports_and_cycles(tmp_path):
  """A hand case: a cycle closed only by an import inside a function is found; a package's
  __init__ re-exporting its submodule is not a cycle; parent packages are in the closure."""
  pkg = tmp_path / 'vaflax'
  (pkg / 'sub').mkdir(parents=True)
  (pkg / '__init__.py').write_text('def load():\n  from vaflax import a\n')
  (pkg / 'a.py').write_text('from vaflax import b\n')
  (pkg / 'b.py').write_text('def f():\n  from vaflax.a import x\n')
  (pkg / 'sub' / '__init__.py').write_text('from vaflax.sub import c\n')
  (pkg / 'sub' / 'c.py').write_text('import numpy\n')
  (pkg / 'd.py').write_text('from vaflax.sub import c\n')
  edges = ig.graph(str(tmp_path))
  assert ig.cycles(ig.graph(str(tmp_path), parents=False)) == [['vaflax.a', 'vaflax.b']]
  assert ig.closure(edges, 'vaflax.d') == {'vaflax.d', 'vaflax', 'vaflax.sub', 'vaflax.sub.c'}
  # The root's vaflax.load is the one function-level import left out (see import_graph.py).
  assert 'vaflax.a' not in ig.closure(edges, 'vaflax.sub.c')


def test_the_one_import_left_out_is_vaflax_load():
  """import_graph leaves out only the function-level imports of the root __init__: that is the
  public vaflax.load -> vaflax.api and nothing else."""
  found = ig.function_level_imports(ig.modules()['vaflax'])
  assert len(found) == 1 and 'from vaflax import api' in found[0], found
