"""Recognising a storage failure by its cause, whichever library reported it.

A full disk does not always arrive as an ``OSError``: torch's checkpoint writer raises ``RuntimeError``
("PytorchStreamWriter failed writing file ...: file write failed"), safetensors an ``SafetensorError``
("... No space left on device (os error 28)"), SQLite through sqlalchemy or MLflow "database or disk is full".
:func:`storage_cause` finds the operating system's error in an exception, its causes and their messages, so that
the caller can raise the documented :class:`~ftkit.exceptions.StorageError` naming the stage and the path that
filled, instead of "the training process exited unexpectedly".

A training job fails in its worker process; :class:`StorageFailure` is how its record (``job.json``, or the
worker's last words) carries the failure to the process waiting for the job, which raises it again as
:class:`~ftkit.exceptions.JobStorageError` (a ``StorageError``).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["StorageFailure", "storage_cause"]

_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})
_MESSAGES: tuple[tuple[re.Pattern[str], int], ...] = (
    (re.compile(r"no space left on device|os error 28|ENOSPC", re.IGNORECASE), errno.ENOSPC),
    (re.compile(r"database or disk is full|SQLITE_FULL", re.IGNORECASE), errno.ENOSPC),
    (re.compile(r"disk quota exceeded|os error 122|EDQUOT", re.IGNORECASE), errno.EDQUOT),
    (re.compile(r"read-only file system|os error 30|EROFS", re.IGNORECASE), errno.EROFS),
    # torch's zip writer reports a failed fwrite without errno; it fails that way only on a full or failing disk.
    (re.compile(r"PytorchStreamWriter failed writing file|file write failed", re.IGNORECASE), errno.ENOSPC),
)


def storage_cause(exc: BaseException, path: str | os.PathLike[str] | None = None) -> OSError | None:
    """The storage error behind ``exc`` (a full disk, a quota, a read-only file system), or ``None``.

    Args:
        exc: Any exception; its ``__cause__`` and ``__context__`` chain is searched too.
        path: The path being written, named when the error itself names none.

    Returns:
        An ``OSError`` with the errno, the system's wording and a path, or ``None`` for other failures.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _STORAGE_ERRNOS:
            name = current.filename if current.filename is not None else path
            return OSError(current.errno, current.strerror or os.strerror(current.errno), name)
        text = str(current)
        for pattern, number in _MESSAGES:
            if pattern.search(text):
                return OSError(number, os.strerror(number), None if path is None else os.fspath(path))
        current = current.__cause__ or current.__context__
    return None


@attrs.frozen
class StorageFailure:
    """A storage failure as a job's record keeps it (plain values: it crosses processes as JSON).

    Attributes:
        stage: The stage that failed (``finetune``).
        errno: The operating system's error number (``errno.ENOSPC``), if known.
        path: The path that could not be written, if known.
        reason: The system's wording (``No space left on device``).
    """

    stage: str
    errno: int | None
    path: str | None
    reason: str

    @classmethod
    def of(cls, stage: str, error: OSError) -> StorageFailure:
        """The failure of ``stage`` that ``error`` (from :func:`storage_cause`) describes."""
        path = None if error.filename is None else os.fspath(error.filename)
        return cls(stage, error.errno, path, error.strerror or str(error))

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> StorageFailure | None:
        """Read one back from its JSON object; ``None`` for anything that is not one (a record of an older ftkit)."""
        if not isinstance(data, Mapping):
            return None
        try:
            number = data.get("errno")
            path = data.get("path")
            return cls(
                str(data["stage"]),
                int(number) if number is not None else None,
                str(path) if path is not None else None,
                str(data["reason"]),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def error(self) -> OSError:
        """The ``OSError`` again (errno, reason, path)."""
        return OSError(self.errno or 0, self.reason, self.path)
