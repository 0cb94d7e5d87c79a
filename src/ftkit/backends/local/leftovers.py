"""What a killed ftkit process leaves behind on this machine, for ``ftkit cleanup`` to find and remove.

``kill -9`` of ``ftkit run`` gives nobody a chance to clean up: its training worker (a process of its own
session, so that Ctrl-C does not reach it) trains on with no one to collect the result, and a registration cut
short leaves its staging copy of the model. ``ftkit cleanup`` stops such orphaned workers (through the usual
cancel: a checkpoint, then ``Canceled``, so ``ftkit run`` of the job resumes it) and removes stale staging copies.

A worker is an orphan when the process that started it (recorded in ``job.json`` with its start time, so a
recycled pid is not taken for it) is gone. Staging copies live under ``{home}/tmp`` and carry their process's pid
in their name; one whose process is gone is stale. Copies that older versions put in the system's temporary
directory (``ftkit-mlflow-*``, no pid) are removed when they belong to this user and are more than an hour old.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import psutil

from . import jobs

__all__ = ["STAGING_PREFIX", "is_orphan", "remove", "staging_root", "stale_staging_dirs"]

STAGING_PREFIX = "ftkit-mlflow-"
_OWNED = re.compile(rf"{STAGING_PREFIX}(\d+)-")
_LEGACY_AGE_S = 3600.0


def staging_root(home: Path) -> Path:
    """Where registrations stage their model copies (``{home}/tmp``, created): on ftkit's disk, found by cleanup."""
    root = home / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _alive(pid: int, started: float | None = None) -> bool:
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(proc.create_time() - started) < 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # not ours to judge: never taken for gone


def is_orphan(record: jobs.JobRecord) -> bool:
    """Whether ``record``'s worker is alive while the process that started it is gone."""
    if record.status not in ("Queued", "Running") or record.pid is None or record.owner_pid is None:
        return False
    return jobs.worker_alive(record.pid, record.name) and not _alive(record.owner_pid, record.owner_started)


def stale_staging_dirs(home: Path) -> list[Path]:
    """Staging copies whose process is gone: under ``{home}/tmp``, and this user's old ones in the system's tmp."""
    found: list[Path] = []
    root = home / "tmp"
    for path in sorted(root.glob(f"{STAGING_PREFIX}*")) if root.is_dir() else []:
        owner = _OWNED.match(path.name)
        if owner is None or not _alive(int(owner.group(1))):
            found.append(path)
    now = time.time()
    for path in sorted(Path(tempfile.gettempdir()).glob(f"{STAGING_PREFIX}*")):
        with contextlib.suppress(OSError):
            info = path.lstat()
            if path.is_dir() and info.st_uid == os.getuid() and now - info.st_mtime > _LEGACY_AGE_S:
                found.append(path)
    return found


def remove(path: Path) -> None:
    """Remove a staging copy (gone meanwhile is fine)."""
    shutil.rmtree(path, ignore_errors=True)
