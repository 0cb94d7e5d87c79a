"""The ``ftkit`` command line: thin commands over the public objects.

Each command lives in its own module with a ``register(subparsers)`` function; :func:`main` wires them.
Errors from ftkit print as a short message (every problem, one per line) and exit 1, never a traceback.
"""

from __future__ import annotations

from .main import main

__all__ = ["main"]
