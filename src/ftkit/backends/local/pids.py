"""Whether a pid recorded on disk is still the process ftkit started there (client side: no torch).

Job workers and endpoint servers outlive the process that started them, so their pids are kept in files
(``job.json``, ``server.json``). After they exit, the kernel may give the same pid to any other process; a
check that only asks "does the pid exist" would then report a dead job as running, or make ``cancel_job`` /
``ftkit endpoint delete`` signal a stranger. The pid counts only if the process's command line is ours
(read with psutil, which works the same on Linux, macOS and Windows).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import psutil

__all__ = ["owned_process_alive"]


def owned_process_alive(pid: object, owns: Callable[[Sequence[str]], bool]) -> bool:
    """Whether ``pid`` is a live (not zombie) process whose command line ``owns`` accepts.

    Args:
        pid: The recorded pid (anything else than a positive int is not alive).
        owns: Given the process's arguments, says whether it is ours.

    Returns:
        Whether it is alive and ours. A process whose command line this user may not read is not ours
        (ftkit's processes run as the user that started them).
    """
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return False
        return owns(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False
