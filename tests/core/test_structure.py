"""Modules and functions of a size a reviewer can hold.

No module under ``src/ftkit`` is over :data:`MAX_MODULE_LINES` lines, and no function (or method) over
:data:`MAX_FUNCTION_LINES` lines unless its docstring says why: a paragraph starting with :data:`LONG_MARKER`
(e.g. ``Long because it is one state machine whose states share ten locals.``). Lines are counted from the
``def`` (decorators included) to the last line of the body, docstring and comments included.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "ftkit"

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 120
LONG_MARKER = "Long because"


def _relative(path: Path) -> str:
    return path.relative_to(SRC).as_posix()


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def long_functions(tree: ast.AST, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """``(qualified name, lines)`` of each function over ``limit`` lines whose docstring gives no reason."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    start = min([d.lineno for d in child.decorator_list] + [child.lineno])
                    lines = (child.end_lineno or child.lineno) - start + 1
                    doc = ast.get_docstring(child) or ""
                    reasoned = any(p.strip().startswith(LONG_MARKER) for p in doc.split("\n\n"))
                    if lines > limit and not reasoned:
                        found.append((name, lines))
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def test_no_module_is_too_long() -> None:
    """Every module of ftkit is at most MAX_MODULE_LINES lines."""
    long = {
        _relative(p): n for p in _sources() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them): {long}"


def test_no_function_is_too_long_without_a_reason() -> None:
    """Every function is at most MAX_FUNCTION_LINES lines, or its docstring has a 'Long because' paragraph."""
    long = {}
    for path in _sources():
        for name, lines in long_functions(ast.parse(path.read_text(encoding="utf-8"))):
            long[f"{_relative(path)}:{name}"] = lines
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines with no '{LONG_MARKER}' paragraph: {long}"


def test_the_function_check_itself() -> None:
    """A long function fails, unless a docstring paragraph starts with the marker; methods are named."""
    body = "\n".join(f"    x{i} = {i}" for i in range(130))
    plain = f"def f():\n    '''Doc.'''\n{body}\n"
    reasoned = f"def f():\n    '''Doc.\n\n    Long because it must be.\n    '''\n{body}\n"
    method = f"class C:\n    def m(self):\n    {body.replace(chr(10), chr(10) + '    ')}\n"
    short = "def g():\n    return 1\n"
    assert [n for n, _ in long_functions(ast.parse(plain))] == ["f"]
    assert long_functions(ast.parse(reasoned)) == []
    assert [n for n, _ in long_functions(ast.parse(method))] == ["C.m"]
    assert long_functions(ast.parse(short)) == []
