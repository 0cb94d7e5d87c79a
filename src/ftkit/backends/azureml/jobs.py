"""Submitting the fine-tuning pipeline and waiting for it with ftkit's own loop.

ftkit does not use ``jobs.stream``: it sleeps with the real ``time.sleep`` for minutes, talks to the
run-history service, and offers no timeout. :func:`wait_for_job` polls the job's status instead, with an
injectable clock and sleep, a deadline, a status callback, and typed errors for failed or timed-out jobs. A
job that is still running can be re-attached by name: waiting is just polling its status.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from ... import retry
from ...exceptions import JobFailedError, JobTimeoutError
from ..base import JobHandle
from .errors import map_azure_errors

__all__ = ["handle_from_job", "job_name_for", "wait_for_job"]

FAILED_STATES = frozenset({"Failed", "Canceled", "NotResponding"})


def job_name_for(display_name: str) -> str:
    """Return a fresh, valid job name derived from ``display_name``.

    The name is chosen before submitting so that a retried PUT of the job is idempotent: a transient failure
    after the service accepted the job cannot create a second one.
    """
    slug = re.sub(r"[^a-z0-9_-]+", "-", display_name.lower()).strip("-_")[:40] or "ftkit"
    return f"{slug}-{uuid.uuid4().hex[:10]}"


def handle_from_job(job: Any) -> JobHandle:
    """Turn an azure-ai-ml job entity into a :class:`~ftkit.backends.base.JobHandle`."""
    error = None
    raw = job.status
    status = str(getattr(raw, "value", raw) or "Unknown")  # azure-ai-ml returns a JobStatus enum
    if status in FAILED_STATES:
        rest = getattr(job, "_rest_error", None)
        error = str(rest) if rest else None
    return JobHandle(
        name=str(job.name),
        status=status,
        display_name=getattr(job, "display_name", None),
        experiment_name=getattr(job, "experiment_name", None),
        studio_url=getattr(job, "studio_url", None),
        backend="azureml",
        error=error,
    )


def get_job(ml_client: Any, name: str) -> JobHandle:
    """Read a job's current state (retried on transient errors)."""

    def read() -> JobHandle:
        with map_azure_errors("get_job", resource=f"job {name}"):
            return handle_from_job(ml_client.jobs.get(name))

    return retry.call(read)


def wait_for_job(
    get: Callable[[], JobHandle],
    *,
    timeout_s: float = 24 * 3600.0,
    poll_interval_s: float = 30.0,
    on_status: Callable[[JobHandle], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> JobHandle:
    """Poll a job until it finishes, fails or the deadline passes.

    Args:
        get: Returns the job's current state (each call is one status read, already retried).
        timeout_s: How long to wait in total.
        poll_interval_s: Seconds between status reads.
        on_status: Told each time the status changes (and once at the start).
        clock: Monotonic clock (injectable for tests).
        sleep: Sleep function (injectable for tests).

    Returns:
        The completed job.

    Raises:
        JobFailedError: The job ended ``Failed``, ``Canceled`` or ``NotResponding`` (name, status, Studio URL).
        JobTimeoutError: It was still running at the deadline (it keeps running; re-attach by name).
    """
    start = clock()
    last: str | None = None
    while True:
        handle = get()
        if handle.status != last:
            last = handle.status
            if on_status is not None:
                on_status(handle)
        if handle.status == "Completed":
            return handle
        if handle.is_terminal:
            raise JobFailedError(handle.name, handle.status, handle.studio_url, handle.error)
        waited = clock() - start
        if waited >= timeout_s:
            raise JobTimeoutError(handle.name, handle.status, waited, handle.studio_url)
        sleep(min(poll_interval_s, max(0.0, timeout_s - waited)))
