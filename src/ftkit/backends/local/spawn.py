"""Starting ftkit's own background Python processes so that they never import from the caller's directory.

``python -m module`` puts the current directory first on ``sys.path``: a ``peft.py`` or ``tokenizers.py`` in the
directory ``ftkit run`` was started from (in /tmp: anybody's) would be imported, and run, by the training worker,
the endpoint server and every torchrun rank. These processes therefore run with ``-P`` and ``PYTHONSAFEPATH=1``
(Python 3.11+; the variable reaches the processes they start in turn, such as torchrun's ranks), which drop that
entry and nothing else: ``PYTHONPATH`` and site-packages still apply, so a user's own installs keep working. The
directory ftkit itself was imported from is put on ``PYTHONPATH``, so the child imports the same ftkit as its
parent, installed or not.
"""

from __future__ import annotations

import os
import site
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["child_env", "python_command"]


def python_command(module: str, *args: str) -> list[str]:
    """The command line running ``module`` in this interpreter, without the current directory on ``sys.path``.

    Args:
        module: The module to run (``python -m``).
        *args: Its arguments.

    Returns:
        ``[sys.executable, "-P", "-m", module, *args]``.
    """
    return [sys.executable, "-P", "-m", module, *args]


def _ftkit_root() -> str:
    """Strictly private: the directory the ``ftkit`` package was imported from (``src/`` or site-packages)."""
    return str(Path(__file__).resolve().parents[3])  # .../ftkit/backends/local/spawn.py


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a background process: ``base`` (default ``os.environ``), safe-path on, ftkit importable.

    Args:
        base: The environment to start from.

    Returns:
        A copy with ``PYTHONSAFEPATH=1`` and, unless it is a site directory already, ftkit's own directory first on
        ``PYTHONPATH``.
    """
    env = dict(os.environ if base is None else base)
    env["PYTHONSAFEPATH"] = "1"
    root = _ftkit_root()
    sites = {str(Path(p).resolve()) for p in [*site.getsitepackages(), site.getusersitepackages()]}
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in sites and root not in paths:
        paths.insert(0, root)
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return env
