"""`LocalBackend`: placeholder while the module is written."""

from __future__ import annotations

__all__ = ["LocalBackend"]


class LocalBackend:
    """The local backend (being written)."""

    name = "local"
