"""Where ftkit keeps local state: ``$FTKIT_HOME``, else ``~/.ftkit``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ftkit_home"]


def ftkit_home(override: str | Path | None = None) -> Path:
    """Return ftkit's state directory (not created here).

    Args:
        override: An explicit directory (e.g. the job file's ``local.home``), taking precedence.

    Returns:
        ``override``, else ``$FTKIT_HOME``, else ``~/.ftkit``, with ``~`` expanded.
    """
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get("FTKIT_HOME")
    return Path(env).expanduser() if env else Path.home() / ".ftkit"
