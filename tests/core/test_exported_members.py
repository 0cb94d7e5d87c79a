"""The public namespace is complete, sorted, and cheap to import."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import ftkit


def test_all_is_sorted_and_unique() -> None:
    """__all__ lists each public name once, sorted."""
    assert ftkit.__all__ == sorted(set(ftkit.__all__))


def test_all_is_complete() -> None:
    """Every public attribute is in __all__, and every name in __all__ resolves."""
    public = {name for name in dir(ftkit) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(ftkit, name)).__name__ == "module"}
    assert public - modules == set(ftkit.__all__)
    for name in ftkit.__all__:
        assert getattr(ftkit, name) is not None


def test_version_comes_from_metadata() -> None:
    """ftkit.__version__ is the installed distribution's version."""
    from importlib.metadata import version

    assert version("ftkit") == ftkit.__version__


def test_import_is_light() -> None:
    """`import ftkit` loads no heavy library (torch, transformers, mlflow, azure, datasets, pyarrow)."""
    code = textwrap.dedent(
        """
        import sys, ftkit
        heavy = ("torch", "transformers", "mlflow", "azure", "datasets", "pyarrow", "peft", "fastapi")
        print(",".join(sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in heavy})))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
