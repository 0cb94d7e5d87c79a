"""Reading a job's training metrics through the MLflow REST API that every Azure ML workspace exposes.

The finetune component logs HF Trainer's metrics (``loss``, ``grad_norm``, ``learning_rate``, ``epoch`` every
``logging_steps``; ``eval_loss`` each evaluation; ``train_loss`` at the end) with ``Run.log(..., step=...)``,
and for chat completion also to the pipeline's root run. Azure ML serves them as MLflow run metrics: the
workspace's ``mlFlowTrackingUri`` (``azureml://<region>.api.azureml.ms/mlflow/v1.0/subscriptions/...``) is an
MLflow tracking server reached over HTTPS with an ARM bearer token, and an Azure ML job's MLflow run id is the
job's name.

Rather than importing mlflow and the azureml-mlflow plugin, ftkit makes the two MLflow REST calls itself
(``runs/get`` to list the keys, ``metrics/get-history`` per key, paged) through an azure-core pipeline on the
connection's transport, so the same code runs against a workspace and against ``ftkit.testing.FakeAzureML``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

from ... import retry
from ...exceptions import BackendError, NotFoundError, TransientBackendError
from ..base import MetricPoint, MetricsTable
from .connection import AzureMLConnection
from .errors import TRANSIENT_STATUS, map_azure_errors

__all__ = ["DEFAULT_KEYS", "read_metrics", "tracking_base_url"]

DEFAULT_KEYS = ("loss", "eval_loss", "learning_rate", "grad_norm")


def tracking_base_url(connection: AzureMLConnection) -> str:
    """Return the workspace's MLflow tracking server as an ``https://`` URL."""

    def read() -> str:
        ws = connection.workspace
        with map_azure_errors("get_workspace", resource=f"workspace {ws.workspace_name}"):
            workspace = connection.ml_client.workspaces.get(ws.workspace_name)
        uri = str(workspace.mlflow_tracking_uri or "")
        if not uri:
            raise BackendError(f"workspace {ws.workspace_name} has no MLflow tracking URI", operation="read_metrics")
        return "https://" + uri.split("://", 1)[1] if uri.startswith("azureml://") else uri

    return retry.call(read)


def _get(connection: AzureMLConnection, url: str, operation: str) -> Any:
    from azure.core.rest import HttpRequest

    def send() -> Any:
        request = HttpRequest("GET", url, headers={"Authorization": f"Bearer {connection.arm_token()}"})
        with map_azure_errors(operation):
            response = connection.pipeline_client().send_request(request)
        if response.status_code == 404:
            raise NotFoundError(f"{operation}: {response.text()[:300]}", operation=operation, status_code=404)
        if response.status_code in TRANSIENT_STATUS:
            raise TransientBackendError(
                f"{operation}: the MLflow API answered {response.status_code}",
                operation=operation,
                status_code=response.status_code,
            )
        if response.status_code >= 400:
            raise BackendError(
                f"{operation}: the MLflow API answered {response.status_code}: {response.text()[:300]}",
                operation=operation,
                status_code=response.status_code,
            )
        return response.json()

    return retry.call(send)


def read_metrics(
    connection: AzureMLConnection, run_id: str, *, keys: Iterable[str] | None = None, page_size: int = 1000
) -> MetricsTable:
    """Read a run's metric histories into a :class:`~ftkit.backends.base.MetricsTable`.

    Args:
        connection: The workspace connection.
        run_id: The run: a pipeline job's name for the root run (where chat completion logs its metrics).
        keys: The metrics to read (default: every metric the run has).
        page_size: Points per page of ``metrics/get-history``.

    Returns:
        Every point, ordered by key then step.

    Raises:
        NotFoundError: The run does not exist (or has logged nothing yet).
    """
    base = tracking_base_url(connection).rstrip("/") + "/api/2.0/mlflow"
    run = _get(connection, f"{base}/runs/get?{urlencode({'run_id': run_id})}", "read_metrics")
    present = [m["key"] for m in run.get("run", {}).get("data", {}).get("metrics", [])]
    wanted = list(keys) if keys is not None else sorted(present)
    points: list[MetricPoint] = []
    for key in wanted:
        if key not in present:
            continue
        token: str | None = None
        while True:
            query = {"run_id": run_id, "metric_key": key, "max_results": str(page_size)}
            if token:
                query["page_token"] = token
            page = _get(connection, f"{base}/metrics/get-history?{urlencode(query)}", "read_metrics")
            for m in page.get("metrics", []):
                points.append(
                    MetricPoint(
                        key=key,
                        step=int(m.get("step", 0)),
                        value=float(m["value"]),
                        timestamp_ms=int(m["timestamp"]) if m.get("timestamp") is not None else None,
                    )
                )
            token = page.get("next_page_token")
            if not token:
                break
    points.sort(key=lambda p: (p.key, p.step))
    return MetricsTable(run_id=run_id, points=tuple(points))
