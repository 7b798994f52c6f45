"""The static import graph of vaflax: closures and cycles, imports inside functions included.

  python benchmarks/import_graph.py [vaflax.api vaflax.predict.cli ...] [--root=DIR]

Every `import` and `from ... import` in every module of vaflax/ is an edge, wherever it stands
(module level, inside a function, under `if TYPE_CHECKING`): a function-level import runs as soon
as the function does, so it belongs to what importing the module can pull in. Importing
`vaflax.a.b` also runs `vaflax/__init__.py` and `vaflax/a/__init__.py`, so a module depends on its
parent packages. One exception: the function-level imports of the root `vaflax/__init__.py`
(`vaflax.load` imports vaflax.api for the user who calls it) are left out, else every module,
as a child of the root package, would depend on the public API; tests/layers_test.py checks
that no other function-level import stands in a package's __init__. Dynamic imports
(`importlib.import_module(f'...{name}')`) are not seen; vaflax uses them for
`vaflax.models.<config.model_name>` and `vaflax.convert.<format>` (modules of those folders).

Prints, for each module named (default: the entry points of docs/architecture.md), the number of
vaflax modules in its closure and the training-layer modules among them, then every import cycle
(strongly connected component of more than one module). tests/layers_test.py asserts on the same
functions.
"""

from __future__ import annotations

import ast
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'vaflax'

# The training layer (docs/architecture.md): what inference code must never pull in.
TRAINING = ('vaflax.train', 'vaflax.stages', 'vaflax.recipes', 'vaflax.optim', 'vaflax.aot',
            'vaflax.data.balance', 'vaflax.data.pipeline')


def modules(root: str = REPO) -> dict[str, str]:
  """{dotted module name: file path} of every module of the package under `root`."""
  out = {}
  base = os.path.join(root, PACKAGE)
  for folder, dirs, files in os.walk(base):
    dirs[:] = sorted(d for d in dirs if not d.startswith(('.', '__pycache__')))
    rel = os.path.relpath(folder, root).split(os.sep)
    for f in sorted(files):
      if not f.endswith('.py'):
        continue
      parts = rel + ([] if f == '__init__.py' else [f[:-3]])
      out['.'.join(parts)] = os.path.join(folder, f)
  return out


def _resolve(name: str, known: dict) -> str | None:
  """The longest known module that `name` is or lies in (`vaflax.x.attr` -> `vaflax.x`)."""
  while name:
    if name in known:
      return name
    name = name.rpartition('.')[0]
  return None


def _imported(node, module: str, is_package: bool, known: dict) -> list[str]:
  """The modules an Import/ImportFrom node names: `from p import n` names p.n when that is a
  module (p itself is then p.n's parent package), else p."""
  if isinstance(node, ast.Import):
    return [a.name for a in node.names]
  if node.level:  # relative: from the module's package upwards
    pkg = module.split('.') if is_package else module.split('.')[:-1]
    pkg = pkg[:len(pkg) - node.level + 1]
    base = '.'.join(pkg + ([node.module] if node.module else []))
  else:
    base = node.module or ''
  return [f'{base}.{a.name}' if f'{base}.{a.name}' in known else base for a in node.names]


def _module_level(tree):
  """The nodes of `tree` outside function bodies."""
  todo = list(tree.body)
  while todo:
    node = todo.pop()
    yield node
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
      todo.extend(ast.iter_child_nodes(node))


def function_level_imports(path: str) -> list[str]:
  """'line: statement' of every import inside a function of the file at `path`."""
  with open(path, encoding='utf-8') as f:
    tree = ast.parse(f.read(), path)
  top = {id(n) for n in _module_level(tree)}
  return [f'{n.lineno}: {ast.unparse(n)}' for n in ast.walk(tree)
          if isinstance(n, ast.Import | ast.ImportFrom) and id(n) not in top]


def graph(root: str = REPO, *, parents: bool = True) -> dict[str, set[str]]:
  """{module: the vaflax modules it imports}: with its parent packages when `parents`, else
  without them (even when named, as in `from vaflax.blazeface import model`)."""
  known = modules(root)
  edges: dict[str, set[str]] = {}
  for mod, path in known.items():
    with open(path, encoding='utf-8') as f:
      tree = ast.parse(f.read(), path)
    deps = set()
    nodes = ast.walk(tree) if mod != PACKAGE else _module_level(tree)
    for node in nodes:
      if isinstance(node, ast.Import | ast.ImportFrom):
        for name in _imported(node, mod, path.endswith('__init__.py'), known):
          if name == PACKAGE or name.startswith(PACKAGE + '.'):
            target = _resolve(name, known)
            if target is not None:
              deps.add(target)
    ancestors = set()
    parent = mod.rpartition('.')[0]
    while parent:  # importing a.b.c runs a/__init__ and a/b/__init__ first
      ancestors.add(parent)
      parent = parent.rpartition('.')[0]
    deps = deps | ancestors if parents else deps - ancestors
    deps.discard(mod)
    edges[mod] = deps
  return edges


def closure(edges: dict[str, set[str]], start: str) -> set[str]:
  """Every module importing `start` can load, `start` included."""
  seen, todo = set(), [start]
  while todo:
    m = todo.pop()
    if m in seen:
      continue
    seen.add(m)
    todo.extend(edges.get(m, ()))
  return seen


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan), each sorted. Pass the graph
  without parent edges: a package's __init__ that imports its own submodules (re-exports, as
  vaflax/predict/__init__.py does) is the usual shape of a package, not a cycle between modules."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []
  counter = [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in sorted(edges.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
  for v in sorted(edges):
    if v not in index:
      visit(v)
  return out


def training_modules(mods) -> list[str]:
  """The training-layer modules among `mods` (a module or anything under a training package)."""
  return sorted(m for m in mods if any(m == t or m.startswith(t + '.') for t in TRAINING))


def main(argv) -> int:
  root = next((a.split('=', 1)[1] for a in argv if a.startswith('--root=')), REPO)
  names = [a for a in argv if not a.startswith('--')] or [
      'vaflax.api', 'vaflax.predict.cli', 'vaflax.evaluate', 'vaflax.runs', 'vaflax.abaw',
      'vaflax.convert', 'vaflax.main']
  edges = graph(root)
  print(f'{len(edges)} modules under {os.path.join(root, PACKAGE)}')
  for name in names:
    c = closure(edges, name)
    train = training_modules(c)
    print(f'{name}: {len(c)} modules; training layer: {", ".join(train) or "none"}')
  found = cycles(graph(root, parents=False))
  print(f'import cycles: {len(found)}' + ''.join(
      f'\n  {len(c)} modules: {", ".join(c)}' for c in found))
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
