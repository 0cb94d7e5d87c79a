"""No import cycle anywhere in ``src/ftkit``, imports inside functions included.

The graph is built from the source with :mod:`ast` (nothing is imported): one node per module (a package is its
``__init__``), one edge per ``import`` statement that names an ftkit module, wherever it stands: at the top, inside
a function (a lazy import runs too, later, and a cycle through it still couples the two modules), inside ``try``.

How names resolve:

- ``import ftkit.a.b``: an edge to ``ftkit.a.b``. ``from ftkit.a import b`` / ``from .a import b``: an edge to
  ``ftkit.a.b`` when ``b`` is a submodule, else (a name defined in ``a``) to ``ftkit.a``.
- A package's ``__init__`` re-exporting ``from .sub import X`` is an ordinary edge, package -> ``sub``.
- The implicit import of the parent packages (importing ``ftkit.a.b`` runs ``ftkit/a/__init__`` first) is not an
  edge: it is Python's load order, not a dependency one module chose, and counting it would make every package
  that re-exports its submodules a cycle. What is a cycle is a submodule importing a name back from its own
  package's ``__init__`` (``from . import helper`` where ``helper`` is defined there) while that ``__init__``
  imports the submodule: that is an edge both ways here, and it is reported.
- ``importlib.import_module`` with a computed name (``ftkit.__getattr__``'s lazy public names) is no edge: it
  names no module the parser can see, and it runs only on attribute access, after ``ftkit`` is loaded.

Imports under ``if TYPE_CHECKING:`` count too: they never run, but a module that names another's types in its
signatures depends on it as much as one that calls it, and a cycle through them is still two modules that cannot be
read, moved or tested apart. Break such a cycle with a Protocol, or by moving the function to the caller's side.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "ftkit"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth (in functions, ``try`` and ``if TYPE_CHECKING:`` blocks alike)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _targets(name: str, path: Path, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> set[str]:
    """The ftkit modules one import statement in module ``name`` (file ``path``) loads."""
    found: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name in modules:
                found.add(alias.name)
        return found
    if node.level:
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in modules:
            found.add(sub)  # a submodule: its package is only the load order (see the module docstring)
        elif base in modules:
            found.add(base)  # a name defined in the module (or ``*``)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the ftkit modules it imports (self-imports dropped)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: set[str] = set()
        for node in _imports(tree):
            edges |= _targets(name, path, node, modules)
        edges.discard(name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def test_no_import_cycle() -> None:
    """No two ftkit modules import each other, directly or through others (lazy imports count)."""
    found = cycles(import_graph())
    assert not found, "import cycles (strongly connected components):\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_checker_finds_cycles() -> None:
    """The checker itself: a lazy import back, a chain of three and a re-export through ``__init__`` are cycles."""
    graph = {
        "a": {"b"},
        "b": {"a"},  # e.g. a function-level import back
        "c": {"d"},
        "d": {"e"},
        "e": {"c"},
        "f": {"g"},
        "g": set(),
    }
    assert cycles(graph) == [["a", "b"], ["c", "d", "e"]]


def test_resolution_of_relative_imports() -> None:
    """``from . import x`` is an edge to the submodule x; to the package when x is a name defined there."""
    modules = {"ftkit.p": PACKAGE / "p" / "__init__.py", "ftkit.p.x": PACKAGE / "p" / "x.py"}
    here = PACKAGE / "p" / "y.py"
    first = ast.parse("from . import x\nfrom . import helper\nfrom .x import name\n").body
    assert [_targets("ftkit.p.y", here, n, modules) for n in first if isinstance(n, ast.ImportFrom)] == [
        {"ftkit.p.x"},
        {"ftkit.p"},
        {"ftkit.p.x"},
    ]
    init = PACKAGE / "p" / "__init__.py"
    (stmt,) = ast.parse("from .x import name\n").body
    assert isinstance(stmt, ast.ImportFrom)
    assert _targets("ftkit.p", init, stmt, modules) == {"ftkit.p.x"}


def test_type_checking_blocks_count() -> None:
    """Imports under ``if TYPE_CHECKING:``, in its ``else`` and in functions are all edges."""
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import ftkit.a\nelse:\n    import ftkit.b\n"
        "def f():\n    import ftkit.c\n"
    )
    names = sorted(a.name for n in _imports(tree) if isinstance(n, ast.Import) for a in n.names)
    assert names == ["ftkit.a", "ftkit.b", "ftkit.c"]
