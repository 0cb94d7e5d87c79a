"""Whether a pid recorded on disk is still the process ftkit started there (client side: no torch).

Job workers and endpoint servers outlive the process that started them, so their pids are kept in files
(``job.json``, ``server.json``). After they exit, the kernel may give the same pid to any other process; a
check that only asks "does the pid exist" would then report a dead job as running, or make ``cancel_job`` /
``ftkit endpoint delete`` signal a stranger. On Linux the pid counts only if its command line is ours.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["owned_process_alive"]


def _proc_state(pid: int) -> str | None:
    """Strictly private: the process's state letter from /proc (``Z`` for a zombie), ``None`` if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


def owned_process_alive(pid: object, owns: Callable[[Sequence[bytes]], bool]) -> bool:
    """Whether ``pid`` is a live (not zombie) process whose command line ``owns`` accepts.

    Args:
        pid: The recorded pid (anything else than a positive int is not alive).
        owns: Given the process's arguments (``/proc/PID/cmdline`` split at NUL bytes), says whether it is ours.

    Returns:
        Whether it is alive and ours; without ``/proc`` (not Linux), whether the pid exists.
    """
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if Path("/proc/self").exists():
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return owns(args) and _proc_state(pid) not in (None, "Z", "X")
    try:  # no /proc: the best we can do is ask whether the pid exists
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
