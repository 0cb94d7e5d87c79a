"""Naming, reading and describing fine-tuning jobs on Azure ML, including what runs inside them.

Waiting is :func:`ftkit.waiting.wait_for_job` on top of :func:`get_job`: ftkit does not use ``jobs.stream``,
which sleeps with the real ``time.sleep`` for minutes, talks to the run-history service and has no timeout.
What ``jobs.stream`` shows is read here instead, from the same run-history service: a pipeline job's child
runs (its steps), the running step's last log line (the handle's ``progress``), and a failed step's error
(the handle's ``error``, naming the step), so a failure says where it happened without opening Studio.
"""

from __future__ import annotations

import re
import uuid
import weakref
from collections.abc import MutableMapping
from typing import Any

import attrs

from ... import retry
from ..base import FAILED_JOB_STATES, JobHandle
from .connection import AzureMLConnection
from .errors import map_azure_errors

__all__ = ["get_job", "handle_from_job", "job_name_for", "read_inside"]

STEP_LOG = re.compile(r"user_logs/std_log[\D]*[0]*(?:_ps)?\.txt$")  # azure-ai-ml's streamable-log pattern
_HISTORY: MutableMapping[AzureMLConnection, str] = weakref.WeakKeyDictionary()


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


def get_job(ml_client: Any, name: str, *, connection: AzureMLConnection | None = None) -> JobHandle:
    """Read a job's current state (retried on transient errors).

    Args:
        ml_client: The workspace client.
        name: The job's name.
        connection: When given, a running job's ``progress`` (running step and its last log line) and a
            failed job's ``error`` (the failed step and its message) are read from the run history too.

    Returns:
        The job's handle.
    """

    def read() -> JobHandle:
        with map_azure_errors("get_job", resource=f"job {name}"):
            return handle_from_job(ml_client.jobs.get(name))

    handle = retry.call(read)
    if connection is None or handle.status not in FAILED_JOB_STATES | {"Running"}:
        return handle
    progress, error = read_inside(connection, name, failed_job=handle.status != "Running")
    if handle.status == "Running":
        return attrs.evolve(handle, progress=progress)
    return attrs.evolve(handle, error=error or handle.error)


def read_inside(connection: AzureMLConnection, name: str, *, failed_job: bool = False) -> tuple[str | None, str | None]:
    """Read what runs inside a job: ``(progress, error)``, each ``None`` when the run history has nothing.

    ``progress`` is ``step <name>: <last log line>`` for the running step; ``error`` is
    ``step <name> failed: <message>`` for the first failed step (or the job's own error). This is
    best-effort reporting on top of the job's status, which stays authoritative: when the run history cannot
    be read (a transient error, a missing route), both are ``None`` and waiting goes on.

    Args:
        connection: The workspace connection.
        name: The job (its run id is its name).
        failed_job: The job has ended in failure (its own run's error is read when it has no steps).

    Returns:
        The progress line and the error message.
    """
    from ...exceptions import BackendError

    try:
        base = _history_base(connection)
        steps = _steps(connection, base, name, depth=0)
        failed = next((s for s in steps if s.get("status") == "Failed"), None)
        if failed is not None:
            message = _error_message(failed) or _last_log_line(connection, base, str(failed["runId"]))
            return None, f"step {_step_name(failed)} failed: {message or 'no error message'}"
        if not steps:
            # A job without steps (a command job): its own run holds the error. Its details are not read while
            # it runs, since a read of a job's own run is a status read (it would double the polling).
            if not failed_job:
                return None, None
            details = _get(connection, f"{base}/runs/{name}/details")
            return None, _error_message(details) or _last_log_line(connection, base, name, details=details)
        running = next((s for s in steps if s.get("status") == "Running"), None)
        if running is None:
            return None, None
        line = _last_log_line(connection, base, str(running["runId"]))
        return f"step {_step_name(running)}" + (f": {line}" if line else ""), None
    except BackendError:
        return None, None


def _history_base(connection: AzureMLConnection) -> str:
    """The workspace's run-history URL: its discovery document's ``history``, read once per connection."""
    cached = _HISTORY.get(connection)
    if cached is not None:
        return cached
    ws = connection.workspace
    with map_azure_errors("get_workspace", resource=f"workspace {ws.workspace_name}"):
        workspace = connection.ml_client.workspaces.get(ws.workspace_name)
    discovery = _get(connection, str(workspace.discovery_url))
    scope = (
        f"/subscriptions/{ws.subscription_id}/resourceGroups/{ws.resource_group}"
        f"/providers/Microsoft.MachineLearningServices/workspaces/{ws.workspace_name}"
    )
    base = str(discovery["history"]).rstrip("/") + "/history/v1.0" + scope
    _HISTORY[connection] = base
    return base


def _steps(connection: AzureMLConnection, base: str, run_id: str, *, depth: int) -> list[dict[str, Any]]:
    """The job's step runs; a running or failed nested pipeline (the registry component) is opened once."""
    children = list(_get(connection, f"{base}/runs/{run_id}/children").get("value") or [])
    out: list[dict[str, Any]] = []
    for child in children:
        nested = str(child.get("runType", "")).lower() == "azureml.pipelinerun"
        if nested and depth == 0 and child.get("status") in ("Running", "Failed"):
            out += _steps(connection, base, str(child["runId"]), depth=1) or [child]
        else:
            out.append(child)
    return out


def _step_name(run: dict[str, Any]) -> str:
    props = run.get("properties") or {}
    return str(props.get("azureml.nodeid") or run.get("displayName") or run.get("name") or run.get("runId"))


def _error_message(run: dict[str, Any]) -> str | None:
    error = (run.get("error") or {}).get("error") or run.get("error") or {}
    message = error.get("message") if isinstance(error, dict) else None
    return str(message) if message else None


def _last_log_line(
    connection: AzureMLConnection, base: str, run_id: str, *, details: dict[str, Any] | None = None
) -> str | None:
    if details is None:
        details = _get(connection, f"{base}/runs/{run_id}/details")
    logs = {str(k): str(v) for k, v in (details.get("logFiles") or {}).items()}
    names = sorted(k for k in logs if STEP_LOG.search(k)) or sorted(logs)
    if not names:
        return None
    # Log URLs carry their own SAS token (as azure-ai-ml's download_text_from_url assumes): no bearer header.
    text = _get(connection, logs[names[0]], text=True, auth=False)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1][:200] if lines else None


def _get(connection: AzureMLConnection, url: str, *, text: bool = False, auth: bool = True) -> Any:
    from azure.core.rest import HttpRequest

    from ...exceptions import BackendError, TransientBackendError
    from .errors import TRANSIENT_STATUS

    def send() -> Any:
        headers = {"Authorization": f"Bearer {connection.arm_token()}"} if auth else {}
        request = HttpRequest("GET", url, headers=headers)
        with map_azure_errors("read_job_progress"):
            response = connection.pipeline_client().send_request(request)
        if response.status_code in TRANSIENT_STATUS:
            raise TransientBackendError(
                f"run history answered {response.status_code}",
                operation="read_job_progress",
                status_code=response.status_code,
            )
        if response.status_code >= 400:
            raise BackendError(
                f"run history answered {response.status_code}",
                operation="read_job_progress",
                status_code=response.status_code,
            )
        return response.text() if text else response.json()

    return retry.call(send)
