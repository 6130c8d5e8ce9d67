"""No import cycle inside ``stcore_jax``, computed from the source: the import statements of every
``stcore_jax/**/*.py`` are read with ``ast`` (nothing is imported, so no jax), and the graph between the
package's modules is searched for cycles.

What counts as an import of module ``M`` by module ``m`` (Python's own semantics):
- ``import a.b.c`` imports ``a.b.c`` and, on the way, the packages ``a.b`` and ``a`` (their ``__init__``);
- ``from a.b import n`` imports ``a.b`` and, where ``n`` is a submodule, ``a.b.n``; relative imports are
  resolved against ``m``'s package;
- the packages that contain ``m`` itself are not implicit imports of ``m`` (they are already being imported
  when ``m`` runs); an explicit ``from pkg import name`` of a non-submodule name from one of them is, since
  it reads a name that ``pkg/__init__.py`` must already have defined;
- imports under ``if TYPE_CHECKING:`` never run and are ignored.

Two graphs: (a) module-level imports only (what runs when a module is imported; imports in a class body
count): it must have no cycle at all. (b) every import, the lazy ones inside functions included: a cycle
there works at run time, but it is a layering smell; the ones that exist are listed in ``ALLOWED_LAZY_CYCLES``,
a list that may only shrink (the test fails when a listed cycle disappears, so the list stays exact).
``python tests/test_layering.py`` prints both graphs' cycles, (b)'s in the format of that list; with ``--write``
it also puts that list into this file (after moving modules: review the diff, it should only shrink).
"""

from __future__ import annotations

import ast
import functools
import pathlib
import sys
from collections import deque

PKG = "stcore_jax"
SRC = pathlib.Path(__file__).resolve().parents[1] / PKG

# Cycles of graph (b) that exist today, each through at least one lazy (function-level) import (named in
# its comment); they are enumerated as elementary cycles (no module twice), each written from its
# alphabetically first module. Regenerate with ``python tests/test_layering.py --write`` after a move;
# otherwise only ever remove entries, by removing the cycle.
ALLOWED_LAZY_CYCLES: list[tuple[str, ...]] = [
]


# -- reading the source -----------------------------------------------------------------------------
def module_files(src: pathlib.Path = SRC) -> dict[str, pathlib.Path]:
    """Module name -> file, for every ``.py`` under ``src`` (a package's name maps to its ``__init__.py``)."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = path.relative_to(src.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_statements(tree: ast.Module) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement that can run, with ``lazy`` = it sits inside a function (or lambda)."""
    found = []

    def visit(node, lazy):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child, lazy)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append((node, lazy))
        inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return found


def _ancestors(name: str) -> list[str]:
    """``a.b.c`` -> ``[a, a.b]``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imported_modules(module: str, is_package: bool, tree: ast.Module, modules) -> list[tuple[str, bool]]:
    """The ``stcore_jax`` modules that ``module`` imports, as ``(target, lazy)`` (with repeats)."""
    own = set(_ancestors(module)) | ({module} if is_package else set())  # packages already being imported
    base = module if is_package else module.rpartition(".")[0]  # what a relative import is relative to
    out = []

    def add(target, explicit, lazy):
        for t in _ancestors(target):  # importing a.b.c runs a/__init__ and a/b/__init__ first
            if t not in own and t in modules:
                out.append((t, lazy))
        if target in modules and (explicit or target not in own):
            out.append((target, lazy))

    for node, lazy in import_statements(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, explicit=False, lazy=lazy)
            continue
        if node.level:
            anchor = base.split(".")[: len(base.split(".")) - node.level + 1]
            source = ".".join(anchor + ([node.module] if node.module else []))
        else:
            source = node.module
        names = [a.name for a in node.names]
        submodules = [f"{source}.{n}" for n in names if f"{source}.{n}" in modules]
        # a name that is not a submodule is read from source's __init__: an explicit import of it
        add(source, explicit=len(submodules) < len(names), lazy=lazy)
        for sub in submodules:
            add(sub, explicit=True, lazy=lazy)
    return out


@functools.cache
def _all_imports(src: pathlib.Path) -> dict[str, list[tuple[str, bool]]]:
    """Module -> its ``(target, lazy)`` imports (each file parsed once per session)."""
    files = module_files(src)
    return {name: imported_modules(name, path.name == "__init__.py", ast.parse(path.read_text(), str(path)), files)
            for name, path in files.items()}


def import_graph(lazy: bool, src: pathlib.Path = SRC) -> dict[str, frozenset[str]]:
    """Module -> the ``stcore_jax`` modules it imports: module-level imports only (``lazy=False``) or all."""
    return {name: frozenset(t for t, is_lazy in edges if lazy or not is_lazy) - {name}
            for name, edges in _all_imports(src).items()}


# -- cycles -----------------------------------------------------------------------------------------
def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components (iterative), those with more than one module."""
    index, low, on_stack, stack, comps, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.add(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        comps.append(comp)
    return comps


def _canonical(cycle: list[str]) -> tuple[str, ...]:
    """A cycle written from its alphabetically first module (so each cycle has one spelling)."""
    i = cycle.index(min(cycle))
    return tuple(cycle[i:] + cycle[:i])


def shortest_cycle(graph: dict[str, set[str]], comp: set[str]) -> tuple[str, ...]:
    """One shortest cycle through the first module of a strongly connected component (BFS back to it)."""
    start = min(comp)
    parent, queue = {start: None}, deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph[v] & comp):
            if w == start:
                path = [v]
                while parent[path[-1]] is not None:
                    path.append(parent[path[-1]])
                return _canonical(path[::-1])
            if w not in parent:
                parent[w] = v
                queue.append(w)
    raise AssertionError(f"{sorted(comp)} is not strongly connected")


def elementary_cycles(graph: dict[str, set[str]], limit: int = 1000) -> set[tuple[str, ...]]:
    """Every elementary cycle (no module twice), each found from its alphabetically first module
    (so once); stops with an error past ``limit`` (a tangle to cut at its strongly connected components)."""
    found = set()
    for comp in strongly_connected(graph):
        for start in sorted(comp):
            allowed = {v for v in comp if v >= start}  # cycles through smaller modules were found already
            path, stack = [start], [iter(sorted(graph[start] & allowed))]
            while stack:
                w = next(stack[-1], None)
                if w is None:
                    stack.pop()
                    path.pop()
                elif w == start:
                    found.add(tuple(path))
                    if len(found) > limit:
                        raise AssertionError(f"more than {limit} import cycles in {sorted(comp)}")
                elif w not in path:
                    path.append(w)
                    stack.append(iter(sorted(graph[w] & allowed)))
    return found


def _show(cycle: tuple[str, ...]) -> str:
    return " -> ".join(cycle + cycle[:1])


# -- tests ------------------------------------------------------------------------------------------
def test_the_source_is_found():
    files = module_files()
    assert PKG in files and len(files) > 50, sorted(files)
    assert sum(map(len, import_graph(lazy=False).values())) > 100  # the graph is read, not empty


def test_the_rules_on_a_toy_package(tmp_path):
    files = {
        "__init__.py": "from toy.b import B\n",
        "a.py": "from . import c\n\ndef f():\n    from toy.sub import x\n",  # relative; lazy
        "b.py": "import toy.sub.x\nB = 1\n",  # also runs toy/sub/__init__.py
        "c.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from toy import a\n",  # never runs
        "sub/__init__.py": "",
        "sub/x.py": "from toy import B\n",  # B is not a submodule: read from toy/__init__.py
    }
    for name, text in files.items():
        (tmp_path / "toy" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "toy" / name).write_text(text)
    strict = {"toy": {"toy.b"}, "toy.a": {"toy.c"}, "toy.b": {"toy.sub", "toy.sub.x"}, "toy.c": set(), "toy.sub": set(),
              "toy.sub.x": {"toy"}}
    assert import_graph(lazy=False, src=tmp_path / "toy") == strict
    assert import_graph(lazy=True, src=tmp_path / "toy") == {**strict, "toy.a": {"toy.c", "toy.sub", "toy.sub.x"}}
    assert [shortest_cycle(strict, c) for c in strongly_connected(strict)] == [("toy", "toy.b", "toy.sub.x")]
    strict["toy.sub"] = {"toy.b"}  # a second cycle through toy.b, sharing it with the first
    assert elementary_cycles(strict) == {("toy", "toy.b", "toy.sub.x"), ("toy.b", "toy.sub")}


def test_no_module_level_import_cycle():
    graph = import_graph(lazy=False)
    cycles = [shortest_cycle(graph, comp) for comp in strongly_connected(graph)]
    assert not cycles, "module-level import cycles in stcore_jax (one per tangle):\n" + "\n".join(map(_show, cycles))


def test_lazy_import_cycles_only_shrink():
    cycles = elementary_cycles(import_graph(lazy=True))
    allowed = set(ALLOWED_LAZY_CYCLES)
    assert len(allowed) == len(ALLOWED_LAZY_CYCLES), "ALLOWED_LAZY_CYCLES lists a cycle twice"
    new, gone = cycles - allowed, allowed - cycles
    shown = [_show(c) for c in sorted(new, key=len)[:20]] + ([f"... and {len(new) - 20} more"] if len(new) > 20 else [])
    assert not new, ("new import cycles through function-level imports (move the shared code down a layer "
                     "instead):\n" + "\n".join(shown))
    assert not gone, ("these cycles are gone: remove them from ALLOWED_LAZY_CYCLES in tests/test_layering.py:\n"
                      + "\n".join(map(repr, sorted(gone))))


HEADER = "ALLOWED_LAZY_CYCLES: list[tuple[str, ...]] = [\n"


def allow_list_source() -> str:
    """``ALLOWED_LAZY_CYCLES`` as it should read today (each entry after comments naming its lazy imports)."""
    strict, full = import_graph(lazy=False), import_graph(lazy=True)
    lines = [HEADER]
    for c in sorted(elementary_cycles(full)):
        lines += [f"    # lazy: {u} -> {v}\n" for u, v in zip(c, c[1:] + c[:1]) if v not in strict[u]]
        one_line = "    (" + ", ".join(f'"{m}"' for m in c) + ("," if len(c) == 1 else "") + "),\n"
        tall = "    (\n" + "".join(f'        "{m}",\n' for m in c) + "    ),\n"
        lines.append(one_line if len(one_line) <= 121 else tall)  # 120 characters and the newline
    return "".join(lines) + "]\n"


def main(argv: list[str]) -> None:
    """Print both graphs' cycles, (b)'s as the allow-list; with ``--write``, put that list into this file."""
    strict = import_graph(lazy=False)
    print(f"# (a) module-level import cycles: {len(strongly_connected(strict))} tangle(s)")
    for comp in strongly_connected(strict):
        print(f"#   {len(comp)} modules, e.g. {_show(shortest_cycle(strict, comp))}")
    print(f"# (b) all imports, lazy included: {len(elementary_cycles(import_graph(lazy=True)))} elementary cycle(s)")
    source = allow_list_source()
    if "--write" in argv:
        me = pathlib.Path(__file__)
        text = me.read_text()
        start = text.index(HEADER)
        end = text.index("\n]\n", start) + 3
        me.write_text(text[:start] + source + text[end:])
        print(f"# written into {me}:")
    print(source, end="")


if __name__ == "__main__":
    main(sys.argv[1:])
