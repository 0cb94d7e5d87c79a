"""The run-history service: run details with log files, child runs, log contents (what ``jobs.stream`` reads).

Azure ML serves a job's inside here rather than through ARM: ``jobs.stream`` polls a run's details and prints
its log files, ``jobs.list(parent_job_name=...)`` and ``jobs.get`` of a child job read runs, and ftkit's wait reads
the running step's log. The registry pipeline component is a nested pipeline run holding its steps, as in Studio.

Strictly private; use :class:`ftkit.testing.FakeAzureML`.
"""

from __future__ import annotations

import re
from typing import Any

from .._http import RecordedRequest
from .base import ErrorBody, Reply
from .jobs import PIPELINE_LOG, STEP_LOG, TERMINAL, JobRoutes, JobRun, Step

__all__ = ["RunHistoryRoutes"]


class RunHistoryRoutes(JobRoutes):
    """Strictly private: the run-history routes over the jobs' steps."""

    def _run_history(self, record: RecordedRequest) -> Reply:
        m = re.search(r"/runs/([^/]+)(/details|/children)?$", record.path, re.I)
        if m is None:
            return 404, ErrorBody("NoRoute", f"the fake serves no run-history route {record.path}"), {}
        run_id, what = m[1], (m[2] or "").lower()
        found = self._find_run(run_id)
        if found is None:
            return 404, ErrorBody("UserError", f"Run {run_id} was not found"), {}
        run, step, group = found
        if step is None and group is None and what != "/children":
            self._read_job(self.resources[self._ws_key(f"jobs/{run.name}").lower()])
        if what == "/children":
            if step is not None or not run.pipeline:
                children: list[dict[str, Any]] = []
            elif group is not None:
                children = [self._run_body(run, s) for s in run.steps if s.group == group]
            else:
                groups = list(dict.fromkeys(s.group for s in run.steps if s.group is not None))
                children = [self._group_body(run, g) for g in groups]
                children += [self._run_body(run, s) for s in run.steps if s.group is None]
            return 200, {"value": children, "continuationToken": None}, {}
        body = self._group_body(run, group) if group is not None else self._run_body(run, step)
        if what == "/details":
            log = STEP_LOG if step is not None or not run.pipeline else PIPELINE_LOG
            body["logFiles"] = {log: f"{self._api_host()}/fake-logs/{run_id}/{log}"}
            body["warnings"] = []
        return 200, body, {}

    def _group_body(self, run: JobRun, group: str) -> dict[str, Any]:
        """The nested pipeline run of a pipeline-component node: its status follows its steps'."""
        statuses = [s.status for s in run.steps if s.group == group]
        if all(x == "Completed" for x in statuses):
            status = "Completed"
        elif all(x == "NotStarted" for x in statuses):
            status = "NotStarted"
        else:
            status = next((x for x in ("Failed", "Canceled") if x in statuses), "Running")
        body: dict[str, Any] = {
            "runId": f"{run.name}-{group}",
            "parentRunId": run.name,
            "rootRunId": run.name,
            "displayName": group,
            "name": group,
            "runType": "azureml.PipelineRun",
            "status": status,
            "properties": {"azureml.nodeid": group, "StepType": "SubGraphCloudStep"},
            "tags": {},
            "experimentName": run.experiment,
            "startTimeUtc": "2025-01-01T00:00:00.000Z",
        }
        failed = next((s for s in run.steps if s.group == group and s.error), None)
        if failed is not None:
            body["error"] = {"error": {"code": "UserError", "message": f"Failed nodes: /{failed.name}"}}
        return body

    def _run_body(self, run: JobRun, step: Step | None) -> dict[str, Any]:
        stored = self.resources[self._ws_key(f"jobs/{run.name}").lower()]
        if step is None:
            status = str(stored["properties"]["status"])
            error = stored["properties"].get("error")
            body: dict[str, Any] = {
                "runId": run.name,
                "rootRunId": run.name,
                "displayName": stored["properties"].get("displayName") or run.name,
                "runType": "azureml.PipelineRun" if run.pipeline else "azureml.scriptrun",
                "status": status,
                "target": "" if run.pipeline else (run.steps[0].compute if run.steps else ""),
            }
        else:
            status = step.status
            error = {"code": "UserError", "message": step.error} if step.error else None
            body = {
                "runId": step.run_id,
                "parentRunId": f"{run.name}-{step.group}" if step.group else run.name,
                "rootRunId": run.name,
                "displayName": step.name,
                "name": step.name,
                "runType": "azureml.StepRun",
                "status": status,
                "target": step.compute,
                "properties": {"azureml.nodeid": step.name, "StepType": "CommandStep"},
                "tags": {},
            }
        body["experimentName"] = run.experiment
        body["startTimeUtc"] = "2025-01-01T00:00:00.000Z"
        if status in TERMINAL:
            body["endTimeUtc"] = "2025-01-01T00:20:00.000Z"
        if error:
            body["error"] = {"error": dict(error)}
        return body

    def _log_file(self, run_id: str) -> Reply:
        found = self._find_run(run_id)
        if found is None:
            return 404, ErrorBody("BlobNotFound", f"no logs for {run_id}"), {}
        run, step, _ = found
        if step is None and not run.pipeline and run.steps:
            step = run.steps[0]  # a command job's log is its one step's
        lines = run.log if step is None else step.log
        return 200, "".join(line + "\n" for line in lines).encode("utf-8"), {"Content-Type": "text/plain"}
