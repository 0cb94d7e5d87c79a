"""`FakeAzureML`: the Azure ML services a notebook talks to, in memory, for the real azure-ai-ml client.

The fake is an azure-core transport plus a token credential. Pass both to ``MLClient`` (or to
:class:`~ftkit.backends.azureml.AzureMLBackend` via :meth:`FakeAzureML.backend_settings`) and the real SDK
code runs offline: request building, serialisation, long-running-operation polling, error handling, and
azure-ai-ml's own blob uploads of local inputs (see :mod:`.storage`). :meth:`FakeAzureML.serve` adds a
loopback HTTP server for clients that take a URL instead of a transport (mlflow). See docs/testing.md.
"""

from __future__ import annotations

import contextlib
import copy
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from .._http import RecordedRequest
from .base import ErrorBody, Fault, RegistryModel, Reply, is_collection, merge
from .compute import DEFAULT_VM_SIZES, ComputeRoutes
from .endpoints import EndpointRoutes
from .mlflow import MlflowRoutes
from .models import ModelRoutes
from .runhistory import RunHistoryRoutes
from .serverless import SERVERLESS_HOST_SUFFIX, ServerlessRoutes
from .storage import StorageRoutes, install_storage_hook
from .workspace import WorkspaceRoutes

__all__ = ["FakeAzureML"]

ASSET_COLLECTIONS = frozenset({"models", "data", "codes", "environments", "components"})


class FakeAzureML(
    WorkspaceRoutes,
    ComputeRoutes,
    ModelRoutes,
    RunHistoryRoutes,
    EndpointRoutes,
    StorageRoutes,
    ServerlessRoutes,
    MlflowRoutes,
):
    """A stateful fake of the Azure ML services a notebook talks to, for the real azure-ai-ml client.

    It serves registry discovery, registry models and components, the workspace and its discovery
    document, computes and VM sizes, data and model versions, the default blob datastore (azure-ai-ml's own
    uploads of local inputs land in :attr:`blobs`), jobs with child steps, logs and run history (so
    ``jobs.stream`` works), online endpoints and deployments with real long-running-operation polling, keys,
    deployment logs, the scoring URI (a deterministic answer in the deployed model's task shape, chat models'
    ``{"output": ...}``; see :meth:`answer_with`), the MLflow REST API (experiments, run search, the runs of jobs
    and their steps with the metrics the fine-tuning components log), code uploads, serverless endpoints and
    marketplace subscriptions, and deletes. References are checked as Azure checks them (a deployment of a
    missing model, a registration from a missing job output, a job on a missing compute, a missing
    component version), with Azure ML's error codes. Every request is recorded in :attr:`requests`; faults
    are injected with :meth:`fail`, :meth:`reset_connection`, :meth:`fail_operation`, :meth:`fail_liveness`,
    :meth:`fail_deployment_quota` and :meth:`fail_job`.

    Args:
        subscription_id: The workspace's subscription.
        resource_group: Its resource group.
        workspace_name: Its name.
        location: Its region.
        models: Registry models to serve (default: ``Phi-3-mini-4k-instruct`` 14 and 15 with the
            notebook's tags).
        component_spec: A component ``spec.yaml`` to serve from the registry (default: one generated from
            ftkit's bundled schema, so the fake works without the spec files).
        components: More component ``spec.yaml`` files to serve from the ``azureml`` registry (e.g. other
            tasks' fine-tuning pipelines); :meth:`add_registry_component` adds more later.
        vm_sizes: The VM sizes the region offers.
        job_statuses: The statuses a job walks through, one per status read; its steps run in order while it
            is ``Running``.
        lro_polls: How many times a long-running operation answers ``InProgress`` before finishing.

    Example:
        >>> fake = FakeAzureML()
        >>> backend = AzureMLBackend(**fake.backend_settings())  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        subscription_id: str = "00000000-0000-0000-0000-000000000000",
        resource_group: str = "rg-ftkit",
        workspace_name: str = "ws-ftkit",
        location: str = "eastus",
        models: Sequence[RegistryModel] | None = None,
        component_spec: str | Path | None = None,
        components: Sequence[str | Path] = (),
        vm_sizes: Sequence[Mapping[str, Any]] = DEFAULT_VM_SIZES,
        job_statuses: Sequence[str] = ("NotStarted", "Running", "Running", "Completed"),
        lro_polls: int = 1,
    ) -> None:
        super().__init__(
            subscription_id=subscription_id,
            resource_group=resource_group,
            workspace_name=workspace_name,
            location=location,
            lro_polls=lro_polls,
        )
        self.vm_sizes = list(vm_sizes)
        self.job_statuses = tuple(job_statuses)
        self.metrics = {}
        self.logs = {}
        self._keys = {}
        self._job_failures = []
        self._runs = {}
        self._auto_metrics = {}
        self._responders = {}
        self._serverless_keys = {}
        self._blobs = {}
        self._blocks = {}
        self._containers = set()
        self._server: Any = None
        # A storage account name of its own: the hook routes this (non-existent) host to this fake only.
        self.storage_account = f"ftkitfake{uuid.uuid4().hex[:12]}"
        install_storage_hook(self, self.storage_account)
        for model in models if models is not None else (RegistryModel(version="14"), RegistryModel()):
            self.add_registry_model(model)
        self._add_component(Path(component_spec) if component_spec is not None else None)
        for spec in components:
            self.add_registry_component(spec)
        self._put(self._ws_key("datastores/workspaceblobstore"), self._datastore_body())

    # ---------------------------------------------------------------- wiring

    def backend_settings(self) -> dict[str, Any]:
        """Keyword settings that point :class:`~ftkit.backends.azureml.AzureMLBackend` at this fake."""
        return {
            "subscription_id": self.subscription_id,
            "resource_group": self.resource_group,
            "workspace_name": self.workspace_name,
            "credential": self.credential,
            "transport": self.transport,
            "uploader": self.upload,
        }

    def ml_client(self, *, registry_name: str | None = None) -> Any:
        """Return a real ``MLClient`` wired to the fake (workspace, or registry when ``registry_name``)."""
        from azure.ai.ml import MLClient

        if registry_name is not None:
            return MLClient(
                self.credential, registry_name=registry_name, transport=self.transport, enable_telemetry=False
            )
        return MLClient(
            self.credential,
            self.subscription_id,
            self.resource_group,
            self.workspace_name,
            transport=self.transport,
            enable_telemetry=False,
        )

    def upload(self, path: Path, destination: str) -> str:
        """Stand in for the datastore upload: keep the file's bytes and return its ``azureml://`` URI.

        Args:
            path: The local file.
            destination: The path inside the default datastore.

        Returns:
            ``azureml://datastores/workspaceblobstore/paths/{destination}``.
        """
        from .storage import Blob

        with self._lock:
            self._blobs[destination] = Blob(Path(path).read_bytes())
        return f"azureml://datastores/workspaceblobstore/paths/{destination}"

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        """Serve the fake over HTTP on 127.0.0.1 while the block runs, for clients without a transport.

        While serving, the workspace's discovery URL and ``mlflow_tracking_uri`` point at the server, so the
        notebook's ``mlflow.set_tracking_uri(workspace.mlflow_tracking_uri)`` and ``MlflowClient`` reach the
        fake with plain mlflow; every route (ARM included) answers there too.

        Yields:
            The server's base URL (``http://127.0.0.1:<port>``).
        """
        from .server import LoopbackServer

        server = LoopbackServer(self)
        server.start()
        self.base_url = server.url
        try:
            yield server.url
        finally:
            self.base_url = None
            server.stop()

    # ---------------------------------------------------------------- faults

    def fail(
        self,
        method: str | None,
        path: str,
        *,
        status: int = 503,
        code: str | None = None,
        message: str | None = None,
        retry_after: float | None = None,
        details: Sequence[Mapping[str, str]] = (),
        times: int = 1,
        when: Callable[[RecordedRequest], bool] | None = None,
    ) -> Fault:
        """Answer the next ``times`` matching requests with an error.

        Args:
            method: HTTP method to match (``None``: any).
            path: Regular expression searched in the URL path, e.g. ``/computes/gpu$`` or ``/score``.
            status: The HTTP status.
            code: The error code in the body (default: derived from the status).
            message: The error message.
            retry_after: Seconds for a ``Retry-After`` header.
            details: ``error.details`` entries.
            times: How many requests fail.
            when: An extra predicate on the recorded request.

        Returns:
            The fault (its ``hits`` counts the failures served).
        """
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        fault = Fault(
            method,
            path,
            times=times,
            status=status,
            code=code,
            message=message,
            headers=headers,
            details=details,
            when=when,
        )
        self.faults.append(fault)
        return fault

    def reset_connection(
        self, method: str | None, path: str, *, times: int = 1, during: Literal["request", "response"] = "request"
    ) -> Fault:
        """Drop the connection for the next ``times`` matching requests (``ServiceRequestError``/``ResponseError``)."""
        fault = Fault(method, path, times=times, reset=during)
        self.faults.append(fault)
        return fault

    # ---------------------------------------------------------------- inspection

    def calls(self, method: str | None = None, path: str | None = None) -> list[RecordedRequest]:
        """Return the recorded requests, optionally filtered by method and a path regular expression."""
        return [
            r
            for r in self.requests
            if (method is None or r.method == method.upper())
            and (path is None or re.search(path, r.path, re.IGNORECASE))
        ]

    # ---------------------------------------------------------------- dispatch

    def _route(self, record: RecordedRequest, request: Any) -> Reply:
        path = record.path
        method = record.method
        host = urlsplit(record.url).netloc.lower()
        if host.endswith(".inference.ml.azure.com"):
            return self._score(record, request, host.split(".", 1)[0])
        if host.endswith(".blob.core.windows.net"):
            return self._storage(record, request)
        if host.endswith(SERVERLESS_HOST_SUFFIX):
            return self._serverless_score(record, request, host.split(".", 1)[0], path)
        m = re.fullmatch(r"/serverless/([^/]+)(/.*)?", path)
        if m:
            return self._serverless_score(record, request, m[1].lower(), m[2] or "/")
        if "/mlflow/v1.0/" in path:
            return self._mlflow(record)
        if path.startswith("/history/v1.0/"):
            return self._run_history(record)
        m = re.fullmatch(r"/fake-logs/([^/]+)/.+", path)
        if m:
            return self._log_file(m[1])
        if path.rstrip("/") == "/discovery":
            return 200, self._workspace_discovery(), {}
        m = re.search(r"/registrymanagement/v1\.0/registries/([^/]+)/discovery$", path, re.I)
        if m:
            return 200, self._registry_discovery(m[1]), {}
        m = re.search(r"/mfeOperationsStatus/([^/]+)$", path, re.I)
        if m:
            return self._operation_status(m[1])
        idx = path.lower().find("/subscriptions/")
        if idx < 0:
            return 404, ErrorBody("NoRoute", f"the fake serves no route for {method} {path}"), {}
        key = path[idx:].rstrip("/")
        if re.search(r"/locations/[^/]+/vmSizes$", key, re.I):
            return 200, {"value": [self._vm_size(s) for s in self.vm_sizes]}, {}
        if "/registries/" in key.lower():
            return self._registry(method, key, record)
        ws = self._ws_prefix().lower()
        if not key.lower().startswith(ws):
            return 404, ErrorBody("ResourceNotFound", f"no such workspace: {key}"), {}
        rest = key[len(ws) :].lstrip("/")
        if not rest:
            return 200, self._workspace(), {}
        return self._workspace_resource(method, key, rest, record)

    def _workspace_resource(self, method: str, key: str, rest: str, record: RecordedRequest) -> Reply:
        lowered = rest.lower()
        m = re.fullmatch(r"onlineendpoints/([^/]+)/(listkeys|regeneratekeys)", lowered)
        if m and method == "POST":
            return self._endpoint_keys(m[1], m[2], record)
        m = re.fullmatch(r"onlineendpoints/([^/]+)/deployments/([^/]+)/getlogs", lowered)
        if m and method == "POST":
            return self._deployment_logs(m[1], m[2], record)
        m = re.fullmatch(r"jobs/([^/]+)/cancel", lowered)
        if m and method == "POST":
            return self._cancel_job(key.rsplit("/", 1)[0])
        m = re.fullmatch(r"serverlessendpoints/([^/]+)/listkeys", lowered)
        if m and method == "POST":
            return self._serverless_list_keys(m[1])
        if method == "DELETE" and re.fullmatch(r"(serverlessendpoints|marketplacesubscriptions)/[^/]+", lowered):
            return self._delete_lro(key)
        m = re.fullmatch(r"codes/([^/]+)/versions/([^/]+)/startpendingupload", lowered)
        if m and method == "POST":
            return self._start_pending_upload(key.rsplit("/", 1)[0])
        m = re.fullmatch(r"computes/[^/]+/(start|stop|restart)", lowered)
        if m and method == "POST":
            return self._compute_action(key.rsplit("/", 1)[0], m[1])
        if method == "POST" and re.fullmatch(r"datastores/[^/]+/listsecrets", lowered):
            return 200, {"secretsType": "None"}, {}
        if method == "PUT":
            return self._put_resource(key, lowered, record)
        if method == "PATCH":
            stored = self.resources.get(key.lower())
            if stored is None:
                return 404, ErrorBody("ResourceNotFound", f"{rest} not found"), {}
            patch = copy.deepcopy(record.body or {})
            if re.fullmatch(r"onlineendpoints/[^/]+", lowered):
                refusal = self._traffic_refusal(key, patch.get("properties") or {})
                if refusal is not None:
                    return refusal
            merge(stored, patch)
            return 200, stored, {}
        if method == "DELETE":
            return self._delete(key, lowered)
        if method == "GET":
            return self._get_resource(key, rest, lowered, record)
        return 405, ErrorBody("MethodNotAllowed", f"{method} {rest}"), {}

    def _get_resource(self, key: str, rest: str, lowered: str, record: RecordedRequest) -> Reply:
        stored = self.resources.get(key.lower())
        if stored is not None:
            if lowered.startswith("jobs/"):
                self._read_job(stored)
            if lowered.startswith("serverlessendpoints/"):
                self._refresh_serverless(stored)
            return 200, stored, {}
        m = re.fullmatch(r"jobs/([^/]+)", lowered)
        if m and self._find_run(m[1]) is not None:
            # A pipeline's child job: the MFE answers it without properties, and azure-ai-ml then reads it from
            # the run history ("Child jobs are no longer available through MFE", azure-ai-ml's jobs.get).
            name = key.rsplit("/", 1)[-1]
            return 200, {"id": key, "name": name, "type": "Microsoft.MachineLearningServices/workspaces/jobs"}, {}
        children = self._children(key)
        if lowered == "datastores" and record.query.get("isDefault", "").lower() == "true":
            children = [c for c in children if c["properties"].get("isDefault")]
        if "hash" in record.query and lowered.endswith("/versions"):
            # codes/{name}/versions?hash=: azure-ai-ml looks for an upload of the same content to reuse.
            children = [
                c
                for c in children
                if (c["properties"].get("properties") or {}).get("hash_sha256") == record.query["hash"]
            ]
        if children or is_collection(lowered):
            if "$top" in record.query and record.query.get("$orderBy", "").lower().endswith("desc"):
                children = list(reversed(children))[: int(record.query["$top"])]
            return 200, {"value": children}, {}
        if lowered in ASSET_COLLECTIONS:
            return 200, {"value": self._asset_containers(key)}, {}
        versions = self._children(f"{key}/versions")
        if versions:
            return 200, self._container(key, versions), {}
        return 404, ErrorBody("ResourceNotFound", f"{rest} was not found in workspace {self.workspace_name}"), {}

    def _asset_containers(self, key: str) -> list[dict[str, Any]]:
        """An asset collection (``models``, ``data``...): one container per name that has versions."""
        prefix = key.lower() + "/"
        names = {
            k[len(prefix) :].split("/", 1)[0] for k in self.resources if k.startswith(prefix) and "/versions/" in k
        }
        out = []
        for name in sorted(names):
            versions = self._children(f"{key}/{name}/versions")
            if versions:
                out.append(self._container(f"{key}/{versions[0]['id'].rsplit('/', 3)[-3]}", versions))
        return out

    def _container(self, key: str, versions: list[dict[str, Any]]) -> dict[str, Any]:
        # azure-ai-ml reads latestVersion for get(label="latest") and lists containers for list().
        latest = versions[-1]
        numeric = [int(v["name"]) for v in versions if str(v["name"]).isdigit()]
        return {
            "id": key,
            "name": key.rsplit("/", 1)[-1],
            "type": "Microsoft.MachineLearningServices/workspaces/" + key.rsplit("/", 2)[-2],
            "properties": {
                "latestVersion": latest["name"],
                "nextVersion": str(max(numeric) + 1) if numeric else "1",
                "isArchived": False,
                "tags": {},
                "properties": {},
            },
            "systemData": versions[0]["systemData"],
        }

    def _put_resource(self, key: str, lowered: str, record: RecordedRequest) -> Reply:
        body = copy.deepcopy(dict(record.body or {}))  # the record keeps what was sent
        if re.fullmatch(r"onlineendpoints/[^/]+", lowered):
            return self._put_endpoint(key, body)
        if re.fullmatch(r"onlineendpoints/[^/]+/deployments/[^/]+", lowered):
            return self._put_deployment(key, body)
        if re.fullmatch(r"computes/[^/]+", lowered):
            return self._put_compute(key, body)
        if re.fullmatch(r"jobs/[^/]+", lowered):
            return self._put_job(key, body)
        if re.fullmatch(r"serverlessendpoints/[^/]+", lowered):
            return self._put_serverless_endpoint(key, body)
        if re.fullmatch(r"marketplacesubscriptions/[^/]+", lowered):
            return self._put_marketplace_subscription(key, body)
        return self._put_version(key, lowered, body)
