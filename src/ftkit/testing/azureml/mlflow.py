"""The workspace's MLflow tracking REST API: runs (an Azure ML job's MLflow run id is its name), params, metrics.

It answers on any host under ``/mlflow/v1.0/<workspace>/api/2.0/mlflow/``: through the transport (ftkit's own
metrics reader) and through the loopback server (``mlflow.MlflowClient`` with the workspace's tracking URI).

Strictly private; use :class:`ftkit.testing.FakeAzureML` (``fake.metrics[job_name]`` to change a job's metrics).
"""

from __future__ import annotations

from typing import Any

from .._http import RecordedRequest
from .base import FakeBase, Reply

__all__ = ["MlflowRoutes"]


class MlflowRoutes(FakeBase):
    """Strictly private: MLflow runs and metric history for jobs."""

    metrics: dict[str, dict[str, list[tuple[int, float, int]]]]

    def _mlflow(self, record: RecordedRequest) -> Reply:
        path = record.path.rstrip("/")
        body = record.body if isinstance(record.body, dict) else {}
        run_id = record.query.get("run_id") or record.query.get("run_uuid") or str(body.get("run_id") or "")
        if path.endswith(("/experiments/get-by-name", "/experiments/get")):
            name = record.query.get("experiment_name") or "Default"
            return 200, {"experiment": {"experiment_id": "1", "name": name, "lifecycle_stage": "active"}}, {}
        history = self.metrics.get(run_id)
        job = self.job(run_id)
        if history is None and job is None:
            return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Run '{run_id}' not found"}, {}
        history = history or {}
        if path.endswith("/runs/get"):
            return 200, {"run": self._mlflow_run(run_id, job, history)}, {}
        if path.endswith("/metrics/get-history"):
            points = history.get(record.query.get("metric_key", ""), [])
            start = int(record.query.get("page_token") or 0)
            size = int(record.query.get("max_results") or 25000)
            page = points[start : start + size]
            out: dict[str, Any] = {
                "metrics": [
                    {"key": record.query["metric_key"], "value": v, "timestamp": ts, "step": s} for s, v, ts in page
                ]
            }
            if start + size < len(points):
                out["next_page_token"] = str(start + size)
            return 200, out, {}
        return 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"the fake serves no MLflow route {path}"}, {}

    def _mlflow_run(
        self, run_id: str, job: dict[str, Any] | None, history: dict[str, list[tuple[int, float, int]]]
    ) -> dict[str, Any]:
        latest = [
            {"key": k, "value": pts[-1][1], "timestamp": pts[-1][2], "step": pts[-1][0]} for k, pts in history.items()
        ]
        props = (job or {}).get("properties", {})
        status = {"Completed": "FINISHED", "Failed": "FAILED", "Canceled": "KILLED"}.get(
            str(props.get("status", "Completed")), "RUNNING"
        )
        params = [
            {"key": str(k), "value": str(v.get("value"))}
            for node in (props.get("jobs") or {}).values()
            for k, v in (node.get("inputs") or {}).items()
            if isinstance(v, dict) and v.get("job_input_type", v.get("jobInputType")) == "literal"
        ]
        info = {
            "run_id": run_id,
            "run_uuid": run_id,
            "run_name": str(props.get("displayName") or run_id),
            "experiment_id": "1",
            "user_id": "tester@example.com",
            "status": status,
            "start_time": 1_735_689_600_000,
            "end_time": 1_735_690_800_000 if status != "RUNNING" else None,
            "artifact_uri": f"azureml://{self.location}.api.azureml.ms/artifacts/ExperimentRun/dcid.{run_id}",
            "lifecycle_stage": "active",
        }
        if info["end_time"] is None:
            del info["end_time"]
        tags = [{"key": "mlflow.runName", "value": info["run_name"]}]
        return {"info": info, "data": {"metrics": latest, "params": params, "tags": tags}}
