"""Naming, reading and describing fine-tuning jobs on Azure ML.

Waiting is :func:`ftkit.waiting.wait_for_job` on top of :func:`get_job`: ftkit does not use ``jobs.stream``,
which sleeps with the real ``time.sleep`` for minutes, talks to the run-history service and has no timeout.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from ... import retry
from ..base import FAILED_JOB_STATES, JobHandle
from .errors import map_azure_errors

__all__ = ["get_job", "handle_from_job", "job_name_for"]


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
    if status in FAILED_JOB_STATES:
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
