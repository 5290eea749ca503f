"""The import graph of our packages: no cycles, and data/ stands below pretrain/ and eval/."""

import ast
import pathlib

from tests.helpers import ROOT

PACKAGES = ('pretrain', 'data', 'eval', 'configs')


def our_modules() -> dict[str, pathlib.Path]:
  """Dotted module name -> file, for every module of our packages (a package is its __init__)."""
  modules = {}
  for package in PACKAGES:
    for path in (pathlib.Path(ROOT) / package).rglob('*.py'):
      name = '.'.join(path.relative_to(ROOT).with_suffix('').parts)
      modules[name.removesuffix('.__init__')] = path
  return modules


def import_graph(modules: dict[str, pathlib.Path]) -> dict[str, set[str]]:
  """Module -> the modules of ours it imports (anywhere in the file, lazy imports included)."""

  def owner(name: str) -> str | None:
    while name and name not in modules:
      name = name.rpartition('.')[0]
    return name or None

  graph = {}
  for name, path in modules.items():
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets.update(alias.name for alias in node.names)
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:
          parts = package.split('.')[:len(package.split('.')) - node.level + 1]
          base = '.'.join(parts + ([base] if base else []))
        targets.update(f'{base}.{alias.name}' if f'{base}.{alias.name}' in modules else base
                       for alias in node.names)
    graph[name] = {owner(t) for t in targets} - {None, name}
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan's algorithm)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while not component or component[-1] != v:
        component.append(stack.pop())
        on_stack.discard(component[-1])
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def test_cycle_finder_finds_a_cycle():
  assert cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]
  assert cycles({'a': {'b'}, 'b': set()}) == []


def test_no_import_cycles_among_our_modules():
  graph = import_graph(our_modules())
  assert len(graph) > 50 and graph['pretrain.train']  # the walk sees the tree
  assert cycles(graph) == []


def test_data_imports_nothing_from_pretrain_or_eval():
  graph = import_graph(our_modules())
  upward = sorted((module, target) for module, targets in graph.items() for target in targets
                  if module.split('.')[0] == 'data' and target.split('.')[0] in ('pretrain', 'eval'))
  assert upward == []
