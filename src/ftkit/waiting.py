"""Waiting for a fine-tuning job: ftkit's own loop on the job's status, for every backend.

azure-ai-ml's ``jobs.stream`` sleeps with ``time.sleep`` for up to minutes between polls, talks to the
run-history service and has no timeout; users end up writing their own ``jobs.get`` loop. This is that loop:
a deadline, terminal states, a status callback, and an injectable clock and sleep for tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .backends.base import Backend, JobHandle
from .exceptions import JobFailedError, JobTimeoutError

__all__ = ["wait_for_job"]

FAILED_STATES = frozenset({"Failed", "Canceled", "NotResponding"})


def wait_for_job(
    backend: Backend,
    name: str,
    *,
    timeout_s: float = 24 * 3600.0,
    poll_s: float = 30.0,
    on_status: Callable[[JobHandle], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> JobHandle:
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
        if handle.status in FAILED_STATES:
            raise JobFailedError(handle.name, handle.status, handle.studio_url, handle.error)
        if handle.is_terminal:
            return handle
        waited = clock() - start
        if waited >= timeout_s:
            raise JobTimeoutError(handle.name, handle.status, waited, handle.studio_url)
        sleep(min(poll_s, max(0.0, timeout_s - waited)))
