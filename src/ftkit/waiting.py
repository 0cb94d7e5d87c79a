"""Waiting for a fine-tuning job: ftkit's own loop on the job's status, for every backend.

azure-ai-ml's ``jobs.stream`` sleeps with ``time.sleep`` for up to minutes between polls, talks to the
run-history service and has no timeout; users end up writing their own ``jobs.get`` loop. This is that loop:
a deadline, terminal states, a status callback, and an injectable clock and sleep for tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from .exceptions import JobFailedError, JobStorageError, JobTimeoutError

__all__ = ["JobStatus", "JobStatusSource", "wait_for_job"]


class JobStatus(Protocol):
    """What the loop reads of a job's state (a :class:`~ftkit.backends.base.JobHandle` is one).

    A protocol, so that this module imports nothing from the backends (which sit below it).
    """

    @property
    def name(self) -> str:
        """The job's name."""
        ...

    @property
    def status(self) -> str:
        """Its status (``Running``, ``Completed``...)."""
        ...

    @property
    def progress(self) -> str | None:
        """What it is doing now, where known."""
        ...

    @property
    def studio_url(self) -> str | None:
        """Where to watch it, if anywhere."""
        ...

    @property
    def error(self) -> str | None:
        """Its failure message."""
        ...

    @property
    def is_terminal(self) -> bool:
        """Whether it has finished."""
        ...

    @property
    def is_failed(self) -> bool:
        """Whether it ended Failed, Canceled or NotResponding."""
        ...


H = TypeVar("H", bound=JobStatus)
H_co = TypeVar("H_co", bound=JobStatus, covariant=True)


class JobStatusSource(Protocol[H_co]):
    """Anything that reads a job's state by name (every :class:`~ftkit.backends.base.Backend`)."""

    def get_job(self, name: str) -> H_co:
        """Return the job's current state."""
        ...


def wait_for_job(
    backend: JobStatusSource[H],
    name: str,
    *,
    timeout_s: float = 24 * 3600.0,
    poll_s: float = 30.0,
    on_status: Callable[[H], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> H:
    """Poll ``backend.get_job(name)`` until the job finishes.

    Re-attaching to a running job is the same call with its name.

    Args:
        backend: Where the job runs.
        name: The job's name.
        timeout_s: How long to wait before giving up (the job keeps running).
        poll_s: Seconds between polls.
        on_status: Called with the handle whenever its status or progress changes (and once at the start).
        clock: Monotonic clock (injectable for tests).
        sleep: Sleep function (injectable for tests).

    Returns:
        The handle of the completed job.

    Raises:
        JobFailedError: The job ended Failed, Canceled or NotResponding.
        JobStorageError: It failed on its file system (a full disk): a ``JobFailedError`` and a ``StorageError``.
        JobTimeoutError: The deadline passed first.
    """
    start = clock()
    last: tuple[str, str | None] | None = None
    while True:
        handle = backend.get_job(name)
        if (handle.status, handle.progress) != last:
            last = (handle.status, handle.progress)
            if on_status is not None:
                on_status(handle)
        if handle.is_failed:
            raise _failed(handle)
        if handle.is_terminal:
            return handle
        waited = clock() - start
        if waited >= timeout_s:
            raise JobTimeoutError(handle.name, handle.status, waited, handle.studio_url)
        sleep(min(poll_s, max(0.0, timeout_s - waited)))


def _failed(handle: JobStatus) -> JobFailedError:
    """Strictly private: the error of a failed job; its storage failure (a handle's ``storage``) as one."""
    storage = getattr(handle, "storage", None)  # not part of JobStatus: a backend's handle may not know it
    if storage is not None:
        return JobStorageError(handle.name, handle.status, storage.stage, storage.error(), handle.studio_url)
    return JobFailedError(handle.name, handle.status, handle.studio_url, handle.error)
