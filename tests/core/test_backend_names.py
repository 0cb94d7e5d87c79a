"""Backends are asked, not named: no code outside ``ftkit.backends`` compares a backend's name.

Behaviour that differs by backend is a question for the backend (:class:`~ftkit.backends.base.Backend`) or, before
one exists, for its :class:`~ftkit.backends.traits.BackendTraits`. The check reads the syntax tree, so a comment or
a docstring naming a backend is no finding, and ``backend in ("local", "azureml")`` is one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ftkit

NAMES = frozenset({"local", "azureml"})
SRC = Path(ftkit.__file__).parent


def _names_a_backend(node: ast.expr) -> bool:
    """Whether ``node`` is a backend's name as a string constant, or a tuple, list or set holding one."""
    if isinstance(node, ast.Constant):
        return node.value in NAMES
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(_names_a_backend(item) for item in node.elts)
    return False


def _pattern_names_a_backend(pattern: ast.pattern) -> bool:
    if isinstance(pattern, ast.MatchValue):
        return _names_a_backend(pattern.value)
    if isinstance(pattern, ast.MatchOr):
        return any(_pattern_names_a_backend(p) for p in pattern.patterns)
    if isinstance(pattern, ast.MatchAs) and pattern.pattern is not None:
        return _pattern_names_a_backend(pattern.pattern)
    return False


def backend_name_comparisons(tree: ast.AST) -> list[int]:
    """Return the lines of comparisons (``==``, ``!=``, ``in``, ``not in``) and match cases on a backend's name."""
    found: list[int] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            ops = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)
            if any(isinstance(op, ops) for op in node.ops) and any(
                _names_a_backend(side) for side in (node.left, *node.comparators)
            ):
                found.append(node.lineno)
        elif isinstance(node, ast.match_case) and _pattern_names_a_backend(node.pattern):
            found.append(node.pattern.lineno)
    return found


def test_the_check_finds_each_form() -> None:
    """Each way of comparing a name is found; naming one in a string, a comment or a default is not."""
    code = '''
backend = "local"  # a default names it: fine
"""docstring: if backend == "azureml" ..."""
if backend == "local": pass
if "azureml" != backend: pass
if job.backend in ("local", "azureml"): pass
if name not in {"azureml"}: pass
match backend:
    case "local" | "other": pass
    case _: pass
if backend == other_name: pass
'''
    assert backend_name_comparisons(ast.parse(code)) == [4, 5, 6, 7, 9]


def test_no_backend_name_comparison_outside_backends() -> None:
    """Outside ``ftkit/backends/`` nothing branches on ``"local"`` or ``"azureml"`` (argparse ``choices=`` is no comparison)."""
    findings: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC)
        if relative.parts[0] == "backends":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        findings.extend(f"src/ftkit/{relative.as_posix()}:{line}" for line in sorted(backend_name_comparisons(tree)))
    assert not findings, (
        "backend names compared outside ftkit/backends/ (ask the backend or its traits):\n" + "\n".join(findings)
    )
