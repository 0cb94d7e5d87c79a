"""`FakeAzureML`: the Azure ML REST surface ftkit uses, in memory, for the real azure-ai-ml client.

The fake is an azure-core transport plus a token credential. Pass both to ``MLClient`` (or to
:class:`~ftkit.backends.azureml.AzureMLBackend` via :meth:`FakeAzureML.backend_settings`) and the real SDK
code runs offline: request building, serialisation, long-running-operation polling, error handling.
See docs/testing.md.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import attrs

from ._http import SECRET_HEADERS, FakeCredential, RecordedRequest, make_response, request_json

__all__ = ["DEFAULT_VM_SIZES", "FakeAzureML", "FakeCredential", "Fault", "RecordedRequest", "RegistryModel"]

ARM = "https://management.azure.com"
MLFLOW_HOST_SUFFIX = ".api.azureml.ms"
REGISTRY_FRONTEND = "https://cert-{location}.experiments.azureml.net/"
PROVIDER = "providers/Microsoft.MachineLearningServices"

DEFAULT_VM_SIZES: tuple[Mapping[str, Any], ...] = (
    {"name": "Standard_DS3_v2", "family": "standardDSv2Family", "vCPUs": 4, "gpus": 0, "memoryGB": 14.0},
    {"name": "Standard_E8s_v3", "family": "standardESv3Family", "vCPUs": 8, "gpus": 0, "memoryGB": 64.0},
    {"name": "Standard_NC6s_v3", "family": "standardNCSv3Family", "vCPUs": 6, "gpus": 1, "memoryGB": 112.0},
    {"name": "Standard_NC12s_v3", "family": "standardNCSv3Family", "vCPUs": 12, "gpus": 2, "memoryGB": 224.0},
    {"name": "Standard_NC24rs_v3", "family": "standardNCSv3Family", "vCPUs": 24, "gpus": 4, "memoryGB": 448.0},
    {"name": "Standard_ND40rs_v2", "family": "standardNDSv2Family", "vCPUs": 40, "gpus": 8, "memoryGB": 672.0},
    {"name": "Standard_NC24ads_A100_v4", "family": "standardNCADSA100v4Family", "vCPUs": 24, "gpus": 1},
)

PHI3_TAGS: Mapping[str, str] = {
    "finetune_compute_allow_list": "['Standard_NC24rs_v3', 'Standard_NC12s_v3', 'Standard_ND40rs_v2', "
    "'Standard_NC24ads_A100_v4', 'Standard_ND96asr_v4']",
    "inference_compute_allow_list": "['Standard_NC6s_v3', 'Standard_NC12s_v3', 'Standard_NC24s_v3', "
    "'Standard_NC24ads_A100_v4', 'Standard_ND96asr_v4']",
    "model_specific_defaults": "{'apply_deepspeed': 'true', 'apply_lora': 'true'}",
    "task": "chat-completion",
}


@attrs.frozen(kw_only=True)
class RegistryModel:
    """A model version the fake registry serves.

    Attributes:
        name: The model's name.
        version: Its version.
        tags: Its tags (allow-lists, ``model_specific_defaults``...).
        registry: The registry holding it.
    """

    name: str = "Phi-3-mini-4k-instruct"
    version: str = "15"
    tags: Mapping[str, str] = attrs.field(factory=lambda: dict(PHI3_TAGS))
    registry: str = "azureml"


@attrs.define
class Fault:
    """A failure the fake injects into matching requests.

    Attributes:
        method: The HTTP method to match (``None``: any).
        path: A regular expression searched in the URL's path (case-insensitive).
        times: How many matching requests fail; then the fault is spent.
        status: The HTTP status to answer with (ignored for connection resets).
        code: The service's error code in the body.
        message: The error message in the body.
        headers: Extra response headers (``Retry-After``...).
        details: Extra ``error.details`` entries.
        reset: ``request`` (the connection failed before an answer) or ``response`` (it dropped while
            reading one), instead of answering.
        when: An extra predicate on the request (e.g. on its body).
        hits: How many requests it has failed so far.
    """

    method: str | None
    path: str
    times: int = 1
    status: int = 503
    code: str | None = None
    message: str | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict)
    details: Sequence[Mapping[str, str]] = ()
    reset: Literal["request", "response"] | None = None
    when: Callable[[RecordedRequest], bool] | None = None
    hits: int = 0

    def matches(self, record: RecordedRequest) -> bool:
        """Whether this fault applies to ``record`` (and is not spent)."""
        if self.hits >= self.times:
            return False
        if self.method is not None and self.method.upper() != record.method:
            return False
        if re.search(self.path, record.path, re.IGNORECASE) is None:
            return False
        return self.when is None or self.when(record)


@attrs.define
class _Operation:
    """Strictly private: one long-running operation in flight."""

    kind: str
    key: str
    polls_left: int
    error: Mapping[str, Any] | None = None
    on_success: Callable[[], None] | None = None


class _Transport:
    """Strictly private: the azure-core transport that hands requests to the fake."""

    def __init__(self, fake: FakeAzureML) -> None:
        self._fake = fake

    def send(self, request: Any, **kwargs: Any) -> Any:
        del kwargs
        return self._fake._handle(request)

    def sleep(self, duration: float) -> None:
        # Retry backoff and LRO polling sleep through the transport: make both instant.
        del duration

    def open(self) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> _Transport:
        return self

    def __exit__(self, *args: object) -> None:
        return None


def _transport_class() -> type:
    # HttpTransport is an ABC in azure-core; subclass it lazily so importing ftkit.testing stays cheap.
    from azure.core.pipeline.transport import HttpTransport

    return type("FakeAzureMLTransport", (_Transport, HttpTransport), {})


class FakeAzureML:
    """A stateful fake of the Azure ML services ftkit talks to, for the real azure-ai-ml client.

    It serves registry discovery, registry models and components, the workspace, computes and VM sizes,
    data and model versions, jobs (``NotStarted`` -> ``Running`` -> ``Completed`` or ``Failed``, one step
    per status read), online endpoints and deployments with real long-running-operation polling, keys,
    deployment logs, the scoring URI (a deterministic ``{"output": ...}`` reply), the MLflow REST API for
    job metrics, and deletes. Every request is recorded in :attr:`requests`; faults are injected with
    :meth:`fail`, :meth:`reset_connection`, :meth:`fail_operation`, :meth:`fail_liveness`,
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
        vm_sizes: The VM sizes the region offers.
        job_statuses: The statuses a job walks through, one per status read.
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
        vm_sizes: Sequence[Mapping[str, Any]] = DEFAULT_VM_SIZES,
        job_statuses: Sequence[str] = ("NotStarted", "Running", "Running", "Completed"),
        lro_polls: int = 1,
    ) -> None:
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.workspace_name = workspace_name
        self.location = location
        self.vm_sizes = list(vm_sizes)
        self.job_statuses = tuple(job_statuses)
        self.lro_polls = lro_polls
        self.credential = FakeCredential()
        self.transport = _transport_class()(self)
        self.requests: list[RecordedRequest] = []
        self.faults: list[Fault] = []
        self.resources: dict[str, dict[str, Any]] = {}
        self.blobs: dict[str, bytes] = {}
        self.metrics: dict[str, dict[str, list[tuple[int, float, int]]]] = {}
        self.logs: dict[tuple[str, str], str] = {}
        self._keys: dict[str, dict[str, str]] = {}
        self._operations: dict[str, _Operation] = {}
        self._operation_faults: list[tuple[str, Mapping[str, Any]]] = []
        self._job_failures: list[str] = []
        self._job_progress: dict[str, int] = {}
        self._counter = itertools.count(1)
        self._lock = threading.RLock()
        self._component_spec = Path(component_spec) if component_spec is not None else None
        for model in models if models is not None else (RegistryModel(version="14"), RegistryModel()):
            self.add_registry_model(model)
        self._add_component()
        self._put(
            self._ws_key("datastores/workspaceblobstore"),
            {
                "name": "workspaceblobstore",
                "properties": {
                    "datastoreType": "AzureBlob",
                    "accountName": "fakestorage",
                    "containerName": "azureml-blobstore",
                    "endpoint": "core.windows.net",
                    "protocol": "https",
                    "isDefault": True,
                    "credentials": {"credentialsType": "None"},
                },
            },
        )

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
        uri = f"azureml://datastores/workspaceblobstore/paths/{destination}"
        with self._lock:
            self.blobs[uri] = Path(path).read_bytes()
        return uri

    # ---------------------------------------------------------------- seeding

    def add_registry_model(self, model: RegistryModel) -> None:
        """Serve ``model`` from its registry."""
        key = self._reg_key(model.registry, f"models/{model.name}/versions/{model.version}")
        asset_id = f"azureml://registries/{model.registry}/models/{model.name}/versions/{model.version}"
        self._put(
            key,
            {
                "id": asset_id,
                "name": model.version,
                "properties": {
                    "description": f"{model.name} (fake)",
                    "tags": dict(model.tags),
                    "properties": {},
                    "flavors": {"transformers": {"data": {}}},
                    "modelType": "mlflow_model",
                    "modelUri": f"{asset_id}/files",
                    "isAnonymous": False,
                    "isArchived": False,
                },
            },
        )

    def add_compute(
        self, name: str, size: str, *, state: str = "Succeeded", tier: str = "Dedicated", max_instances: int = 2
    ) -> None:
        """Create a compute cluster in the workspace, as if it existed already."""
        self._put(self._ws_key(f"computes/{name}"), self._compute_body(name, size, tier, max_instances, state))

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

    def fail_operation(
        self,
        kind: Literal["endpoint", "deployment", "compute"],
        *,
        code: str = "OutOfQuota",
        message: str | None = None,
    ) -> None:
        """Make the next long-running create of ``kind`` end ``Failed`` while polling."""
        text = message or {
            "OutOfQuota": "Not enough quota available for Standard_NC6s_v3 in SubscriptionId "
            f"{self.subscription_id}. Current usage/limit: 0/0. Additional needed: 6 #error-outofquota",
        }.get(code, f"{kind} operation failed ({code})")
        self._operation_faults.append((kind, {"code": code, "message": text}))

    def fail_liveness(self) -> None:
        """Make the next deployment's container crash: polling ends ``ResourceNotReady``, and its logs say why."""
        self.fail_operation(
            "deployment",
            code="ResourceNotReady",
            message="User container has crashed or terminated: Liveness probe failed: HTTP probe failed with "
            "statuscode: 502. Please see troubleshooting guide, available here: "
            "https://aka.ms/oe-tsg#error-resourcenotready",
        )
        self._crash_logs = True

    def fail_deployment_quota(self, *, at: Literal["put", "polling"] = "put") -> None:
        """Make the next deployment fail for quota: synchronously at its PUT (400), or while polling."""
        if at == "polling":
            self.fail_operation("deployment", code="OutOfQuota")
            return
        self.fail(
            "PUT",
            r"/onlineEndpoints/[^/]+/deployments/[^/]+$",
            status=400,
            code="BadRequest",
            message="Not enough quota available for Standard_NC6s_v3 in SubscriptionId "
            f"{self.subscription_id}. Current usage/limit: 0/0. Additional needed: 6 "
            "Please see troubleshooting guide, available here: https://aka.ms/oe-tsg#error-outofquota",
            details=({"code": "InferencingClientCreateDeploymentFailed", "message": "Not enough quota"},),
        )

    def fail_job(self, message: str = "Execution failed in step finetune: CUDA out of memory") -> None:
        """Make the next job end ``Failed`` (after running) with ``message``."""
        self._job_failures.append(message)

    _crash_logs = False

    # ---------------------------------------------------------------- inspection

    def calls(self, method: str | None = None, path: str | None = None) -> list[RecordedRequest]:
        """Return the recorded requests, optionally filtered by method and a path regular expression."""
        return [
            r
            for r in self.requests
            if (method is None or r.method == method.upper())
            and (path is None or re.search(path, r.path, re.IGNORECASE))
        ]

    def endpoint(self, name: str) -> dict[str, Any] | None:
        """Return the stored endpoint resource, or ``None`` when it does not exist."""
        return self.resources.get(self._ws_key(f"onlineEndpoints/{name}").lower())

    def job(self, name: str) -> dict[str, Any] | None:
        """Return the stored job resource, or ``None``."""
        return self.resources.get(self._ws_key(f"jobs/{name}").lower())

    def keys(self, endpoint: str) -> dict[str, str]:
        """Return the endpoint's current keys (``primaryKey``/``secondaryKey``)."""
        return dict(self._keys[endpoint.lower()])

    # ---------------------------------------------------------------- keys and bodies

    def _ws_prefix(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}/{PROVIDER}"
            f"/workspaces/{self.workspace_name}"
        )

    def _ws_key(self, rest: str) -> str:
        return f"{self._ws_prefix()}/{rest}"

    def _reg_key(self, registry: str, rest: str) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/rg-registry/{PROVIDER}/registries/{registry}/{rest}"
        )

    def _now(self) -> str:
        # A strictly increasing fake clock keeps "$orderBy=createdtime desc" deterministic.
        n = next(self._counter)
        return f"2025-01-01T00:{n // 60 % 60:02d}:{n % 60:02d}.{n:06d}Z"

    def _put(self, key: str, body: dict[str, Any]) -> dict[str, Any]:
        body = dict(body)
        body.setdefault("id", key)
        body.setdefault("name", key.rsplit("/", 1)[-1])
        body.setdefault("properties", {})
        previous = self.resources.get(key.lower())
        created = previous["systemData"]["createdAt"] if previous else self._now()
        body["systemData"] = {
            "createdAt": created,
            "createdBy": "tester@example.com",
            "createdByType": "User",
            "lastModifiedAt": self._now(),
        }
        self.resources[key.lower()] = body
        return body

    def _children(self, key: str) -> list[dict[str, Any]]:
        prefix = key.lower().rstrip("/") + "/"
        found = [v for k, v in self.resources.items() if k.startswith(prefix) and "/" not in k[len(prefix) :]]
        return sorted(found, key=lambda b: b["systemData"]["createdAt"])

    def _compute_body(self, name: str, size: str, tier: str, max_instances: int, state: str) -> dict[str, Any]:
        return {
            "name": name,
            "location": self.location,
            "properties": {
                "computeType": "AmlCompute",
                "computeLocation": self.location,
                "provisioningState": state,
                "provisioningErrors": (
                    [{"error": {"code": "QuotaExceeded", "message": "vCPU quota exceeded"}}]
                    if state == "Failed"
                    else None
                ),
                "properties": {
                    "vmSize": size,
                    "vmPriority": tier,
                    "scaleSettings": {"maxNodeCount": max_instances, "minNodeCount": 0},
                },
            },
        }

    def _add_component(self) -> None:
        if self._component_spec is not None:
            from azure.ai.ml import load_component

            component = load_component(source=str(self._component_spec))
        else:
            from ..backends.azureml.pipeline import component_from_schema
            from ..component import ComponentSchema

            component = component_from_schema(ComponentSchema.bundled())
        from ..backends.azureml.pipeline import wire_body

        body = wire_body(component._to_rest_object())
        name, version = component.name, str(component.version)
        body["id"] = f"azureml://registries/azureml/components/{name}/versions/{version}"
        body["name"] = version
        body["properties"]["componentSpec"].pop("id", None)
        self._put(self._reg_key("azureml", f"components/{name}/versions/{version}"), body)
        self.component_name, self.component_version = name, version

    # ---------------------------------------------------------------- dispatch

    def _handle(self, request: Any) -> Any:
        from azure.core.exceptions import ServiceRequestError, ServiceResponseError

        with self._lock:
            url = str(request.url)
            parts = urlsplit(url)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            headers = {
                k: ("<redacted>" if k.lower() in SECRET_HEADERS else v) for k, v in dict(request.headers).items()
            }
            if "authorization" in {k.lower() for k in request.headers}:
                auth = next(v for k, v in request.headers.items() if k.lower() == "authorization")
                headers["Authorization"] = auth.split(" ", 1)[0] + " <redacted>"
            record = RecordedRequest(request.method.upper(), url, parts.path, query, headers, request_json(request), 0)
            for fault in self.faults:
                if fault.matches(record):
                    fault.hits += 1
                    if fault.reset is not None:
                        self.requests.append(record)
                        error = ServiceRequestError if fault.reset == "request" else ServiceResponseError
                        raise error("Connection aborted: ConnectionResetError(104, 'Connection reset by peer') (fake)")
                    response = self._error(request, fault.status, fault.code, fault.message, fault.details)
                    for k, v in fault.headers.items():
                        response.headers[k] = v
                    self.requests.append(attrs.evolve(record, status=fault.status))
                    return response
            status, body, extra = self._route(record, request)
            self.requests.append(attrs.evolve(record, status=status))
            if isinstance(body, _ErrorBody):
                return self._error(request, status, body.code, body.message)
            return make_response(request, status, body, extra)

    def _error(
        self,
        request: Any,
        status: int,
        code: str | None,
        message: str | None,
        details: Sequence[Mapping[str, str]] = (),
    ) -> Any:
        code = code or {
            400: "BadRequest",
            401: "AuthenticationFailed",
            403: "AuthorizationFailed",
            404: "ResourceNotFound",
            409: "Conflict",
            429: "TooManyRequests",
            500: "InternalServerError",
            502: "BadGateway",
            503: "ServiceUnavailable",
            504: "GatewayTimeout",
        }.get(status, "Error")
        body = {"error": {"code": code, "message": message or f"{code} (fake)", "details": list(details)}}
        return make_response(request, status, body)

    def _route(self, record: RecordedRequest, request: Any) -> tuple[int, Any, dict[str, str]]:
        path = record.path
        method = record.method
        host = urlsplit(record.url).netloc.lower()
        if host.endswith(".inference.ml.azure.com"):
            return self._score(record, request, host.split(".", 1)[0])
        if "/mlflow/v1.0/" in path:
            return self._mlflow(record)
        m = re.search(r"/registrymanagement/v1\.0/registries/([^/]+)/discovery$", path, re.I)
        if m:
            return 200, self._discovery(m[1]), {}
        m = re.search(r"/mfeOperationsStatus/([^/]+)$", path, re.I)
        if m:
            return self._operation_status(m[1])
        idx = path.lower().find("/subscriptions/")
        if idx < 0:
            return 404, _ErrorBody("NoRoute", f"the fake serves no route for {method} {path}"), {}
        key = path[idx:].rstrip("/")
        if re.search(r"/locations/[^/]+/vmSizes$", key, re.I):
            return 200, {"value": [self._vm_size(s) for s in self.vm_sizes]}, {}
        if "/registries/" in key.lower():
            return self._registry(method, key, record)
        ws = self._ws_prefix().lower()
        if not key.lower().startswith(ws):
            return 404, _ErrorBody("ResourceNotFound", f"no such workspace: {key}"), {}
        rest = key[len(ws) :].lstrip("/")
        if not rest:
            return 200, self._workspace(), {}
        return self._workspace_resource(method, key, rest, record, request)

    # ---------------------------------------------------------------- handlers

    def _discovery(self, registry: str) -> dict[str, Any]:
        return {
            "registryName": registry,
            "subscriptionId": self.subscription_id,
            "resourceGroup": "rg-registry",
            "primaryRegion": self.location,
            "regions": [self.location],
            "primaryRegionResourceProviderUri": REGISTRY_FRONTEND.format(location=self.location),
        }

    def _vm_size(self, size: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "name": size["name"],
            "family": size.get("family", "standard"),
            "vCPUs": size.get("vCPUs", 4),
            "gpus": size.get("gpus", 0),
            "osVhdSizeMB": 1047552,
            "maxResourceVolumeMB": 344064,
            "memoryGB": size.get("memoryGB", 16.0),
            "lowPriorityCapable": True,
            "premiumIO": True,
            "supportedComputeTypes": ["AmlCompute", "ComputeInstance"],
        }

    def _workspace(self) -> dict[str, Any]:
        base = f"{self.location}{MLFLOW_HOST_SUFFIX}"
        return {
            "id": self._ws_prefix(),
            "name": self.workspace_name,
            "type": "Microsoft.MachineLearningServices/workspaces",
            "location": self.location,
            "kind": "Default",
            "identity": {"type": "SystemAssigned"},
            "sku": {"name": "Basic", "tier": "Basic"},
            "properties": {
                "friendlyName": self.workspace_name,
                "workspaceId": "11111111-2222-3333-4444-555555555555",
                "discoveryUrl": f"https://{base}/discovery",
                "mlFlowTrackingUri": f"azureml://{base}/mlflow/v1.0{self._ws_prefix()}",
                "provisioningState": "Succeeded",
                "publicNetworkAccess": "Enabled",
            },
        }

    def _registry(self, method: str, key: str, record: RecordedRequest) -> tuple[int, Any, dict[str, str]]:
        if method != "GET":
            return 405, _ErrorBody("MethodNotAllowed", "the fake registry is read-only"), {}
        stored = self.resources.get(key.lower())
        if stored is not None:
            return 200, stored, {}
        if key.lower().endswith("/versions"):
            children = list(reversed(self._children(key)))  # createdtime desc
            if "$top" in record.query:
                children = children[: int(record.query["$top"])]
            if children:
                return 200, {"value": children}, {}
            # The real registry answers an unknown asset's version list with an empty page.
            return 200, {"value": []}, {}
        if self._children(f"{key}/versions"):
            latest = self._children(f"{key}/versions")[-1]
            return 200, {"id": key, "name": key.rsplit("/", 1)[-1], "properties": {"latestVersion": latest["name"]}}, {}
        return 404, _ErrorBody("ResourceNotFound", f"{key.rsplit('/', 1)[-1]} not found in the registry"), {}

    def _workspace_resource(
        self, method: str, key: str, rest: str, record: RecordedRequest, request: Any
    ) -> tuple[int, Any, dict[str, str]]:
        del request
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
        if method == "PUT":
            return self._put_resource(key, lowered, record)
        if method == "PATCH":
            stored = self.resources.get(key.lower())
            if stored is None:
                return 404, _ErrorBody("ResourceNotFound", f"{rest} not found"), {}
            _merge(stored, copy.deepcopy(record.body or {}))
            return 200, stored, {}
        if method == "DELETE":
            return self._delete(key, lowered)
        if method == "GET":
            stored = self.resources.get(key.lower())
            if stored is not None:
                if lowered.startswith("jobs/"):
                    self._advance_job(stored)
                return 200, stored, {}
            children = self._children(key)
            if children or _is_collection(lowered):
                if "$top" in record.query and record.query.get("$orderBy", "").lower().endswith("desc"):
                    children = list(reversed(children))[: int(record.query["$top"])]
                return 200, {"value": children}, {}
            versions = self._children(f"{key}/versions")
            if versions:
                return 200, {"id": key, "name": key.rsplit("/", 1)[-1], "properties": {}}, {}
            return 404, _ErrorBody("ResourceNotFound", f"{rest} was not found in workspace {self.workspace_name}"), {}
        return 405, _ErrorBody("MethodNotAllowed", f"{method} {rest}"), {}

    def _put_resource(self, key: str, lowered: str, record: RecordedRequest) -> tuple[int, Any, dict[str, str]]:
        body = copy.deepcopy(dict(record.body or {}))  # the record keeps what was sent
        props = body.setdefault("properties", {})
        if re.fullmatch(r"onlineendpoints/[^/]+", lowered):
            name = key.rsplit("/", 1)[-1]
            existing = self.resources.get(key.lower())
            props["scoringUri"] = f"https://{name}.{self.location}.inference.ml.azure.com/score"
            props["swaggerUri"] = f"https://{name}.{self.location}.inference.ml.azure.com/swagger.json"
            props.setdefault("traffic", {})
            body.setdefault("location", self.location)
            body.setdefault("kind", "Managed")
            body.setdefault("identity", {"type": "SystemAssigned"})
            if existing is not None:
                _merge(existing, body)
                body = existing
            self._keys.setdefault(
                name.lower(), {"primaryKey": self._new_key(name, "primary"), "secondaryKey": self._new_key(name, "s")}
            )
            return self._start_lro("endpoint", key, body)
        if re.fullmatch(r"onlineendpoints/[^/]+/deployments/[^/]+", lowered):
            endpoint_key = key.rsplit("/deployments/", 1)[0]
            if endpoint_key.lower() not in self.resources:
                return 404, _ErrorBody("ResourceNotFound", "the endpoint does not exist"), {}
            props.setdefault("scaleSettings", {"scaleType": "Default"})
            props.setdefault("endpointComputeType", "Managed")
            body.setdefault("location", self.location)
            body.setdefault("sku", {"name": "Default", "capacity": 1})
            return self._start_lro("deployment", key, body)
        if re.fullmatch(r"computes/[^/]+", lowered):
            error = self._take_operation_fault("compute")
            inner = props.get("properties", {})
            state = "Failed" if error else "Succeeded"
            stored = self._put(
                key,
                _merged(
                    self._compute_body(
                        key.rsplit("/", 1)[-1],
                        inner.get("vmSize", "Standard_DS3_v2"),
                        inner.get("vmPriority", "Dedicated"),
                        inner.get("scaleSettings", {}).get("maxNodeCount", 1),
                        state,
                    ),
                    {"tags": body.get("tags")},
                ),
            )
            if error:
                self.resources.pop(key.lower(), None)
                return 400, _ErrorBody(error["code"], error["message"]), {}
            return 200, stored, {}
        if re.fullmatch(r"jobs/[^/]+", lowered):
            return self._put_job(key, body)
        if re.fullmatch(r"models/[^/]+/versions/[^/]+", lowered) and not props.get("flavors"):
            props["flavors"] = {}  # azure-ai-ml's Model._from_rest_object needs a mapping here
        props.setdefault("provisioningState", "Succeeded")
        stored = self._put(key, body)
        return (201 if stored["systemData"]["createdAt"] == stored["systemData"]["lastModifiedAt"] else 200), stored, {}

    def _start_lro(self, kind: str, key: str, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        body["properties"]["provisioningState"] = "Creating" if key.lower() not in self.resources else "Updating"
        stored = self._put(key, body)
        op_id = uuid.uuid4().hex
        operation = _Operation(kind, key.lower(), self.lro_polls, self._take_operation_fault(kind))
        self._operations[op_id] = operation
        return 201, stored, {"Azure-AsyncOperation": self._operation_url(op_id), "Retry-After": "1"}

    def _operation_url(self, op_id: str) -> str:
        return (
            f"{ARM}/subscriptions/{self.subscription_id}/{PROVIDER}/locations/{self.location}"
            f"/mfeOperationsStatus/{op_id}?api-version=2023-04-01-preview"
        )

    def _take_operation_fault(self, kind: str) -> Mapping[str, Any] | None:
        for i, (fault_kind, error) in enumerate(self._operation_faults):
            if fault_kind == kind:
                del self._operation_faults[i]
                return error
        return None

    def _operation_status(self, op_id: str) -> tuple[int, Any, dict[str, str]]:
        operation = self._operations.get(op_id)
        if operation is None:
            return 404, _ErrorBody("ResourceNotFound", "no such operation"), {}
        if operation.polls_left > 0:
            operation.polls_left -= 1
            return 200, {"status": "InProgress"}, {"Retry-After": "1"}
        stored = self.resources.get(operation.key)
        if operation.error is not None:
            if stored is not None:
                stored["properties"]["provisioningState"] = "Failed"
            if operation.kind == "deployment" and operation.error.get("code") == "ResourceNotReady":
                self._crash(operation.key)
            return 200, {"status": "Failed", "error": dict(operation.error)}, {}
        if stored is not None:
            stored["properties"]["provisioningState"] = "Succeeded"
        if operation.on_success is not None:
            operation.on_success()
        return 200, {"status": "Succeeded"}, {}

    def _crash(self, key: str) -> None:
        endpoint, deployment = re.findall(r"onlineendpoints/([^/]+)/deployments/([^/]+)$", key)[0]
        self.logs[(endpoint, deployment)] = (
            "2025-01-01 00:00:01 Loading MLflow model\n"
            "2025-01-01 00:09:58 Traceback (most recent call last):\n"
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
            "2025-01-01 00:10:00 Liveness probe failed: HTTP probe failed with statuscode: 502\n"
        )

    def _delete(self, key: str, lowered: str) -> tuple[int, Any, dict[str, str]]:
        if key.lower() not in self.resources:
            return 204, None, {}
        prefix = key.lower() + "/"
        for k in [k for k in self.resources if k == key.lower() or k.startswith(prefix)]:
            del self.resources[k]
        if re.fullmatch(r"onlineendpoints/[^/]+", lowered):
            self._keys.pop(key.rsplit("/", 1)[-1].lower(), None)
        if lowered.startswith("onlineendpoints/"):
            endpoint_name = lowered.split("/")[1]
            m = re.fullmatch(r"onlineendpoints/[^/]+/deployments/([^/]+)", lowered)
            if m:
                endpoint = self.resources.get(self._ws_key(f"onlineEndpoints/{endpoint_name}").lower())
                if endpoint is not None:
                    traffic = endpoint["properties"].get("traffic") or {}
                    endpoint["properties"]["traffic"] = {k: v for k, v in traffic.items() if k.lower() != m[1]}
            op_id = uuid.uuid4().hex
            self._operations[op_id] = _Operation("delete", key.lower(), 0)
            return 202, None, {"Azure-AsyncOperation": self._operation_url(op_id), "Retry-After": "1"}
        return 200, None, {}

    def _endpoint_keys(self, endpoint: str, action: str, record: RecordedRequest) -> tuple[int, Any, dict[str, str]]:
        keys = self._keys.get(endpoint)
        if keys is None:
            return 404, _ErrorBody("ResourceNotFound", f"endpoint {endpoint} not found"), {}
        if action == "listkeys":
            return 200, dict(keys), {}
        which = str((record.body or {}).get("keyType", "Primary")).lower()
        field = "primaryKey" if which == "primary" else "secondaryKey"
        # The fake always rolls the key (the request's keyValue carries the old one).
        keys[field] = self._new_key(endpoint, which + str(next(self._counter)))
        op_id = uuid.uuid4().hex
        self._operations[op_id] = _Operation("keys", endpoint, 0)
        return 202, None, {"Azure-AsyncOperation": self._operation_url(op_id), "Retry-After": "1"}

    def _new_key(self, endpoint: str, salt: str) -> str:
        return hashlib.sha256(f"{endpoint}/{salt}/{uuid.uuid4()}".encode()).hexdigest()[:32]

    def _deployment_logs(
        self, endpoint: str, deployment: str, record: RecordedRequest
    ) -> tuple[int, Any, dict[str, str]]:
        key = self._ws_key(f"onlineEndpoints/{endpoint}/deployments/{deployment}").lower()
        text = self.logs.get((endpoint, deployment))
        if text is None:
            if key not in self.resources:
                return 404, _ErrorBody("ResourceNotFound", f"deployment {deployment} not found"), {}
            text = "2025-01-01 00:00:01 Loading MLflow model\n2025-01-01 00:02:00 Model loaded; server ready\n"
        tail = int((record.body or {}).get("tail") or 0)
        lines = text.splitlines(keepends=True)
        return 200, {"content": "".join(lines[-tail:] if tail else lines)}, {}

    # ---------------------------------------------------------------- jobs

    def _put_job(self, key: str, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        name = key.rsplit("/", 1)[-1]
        props = body["properties"]
        existing = self.resources.get(key.lower())
        if existing is not None:
            # A job PUT for an existing name is an update of tags/description only; the job keeps its state.
            return 200, existing, {}
        props["status"] = self.job_statuses[0]
        props["services"] = {
            "Studio": {
                "jobServiceType": "Studio",
                "endpoint": f"https://ml.azure.com/runs/{name}?wsid={self._ws_prefix()}",
            },
            "Tracking": {
                "jobServiceType": "Tracking",
                "endpoint": self._workspace()["properties"]["mlFlowTrackingUri"],
            },
        }
        props.setdefault("experimentName", "Default")
        stored = self._put(key, body)
        self._job_progress[name.lower()] = 0
        if self._job_failures:
            stored["_ftkit_failure"] = self._job_failures.pop(0)
        return 201, stored, {}

    def _advance_job(self, stored: dict[str, Any]) -> None:
        name = str(stored["name"]).lower()
        props = stored["properties"]
        if props["status"] in ("Completed", "Failed", "Canceled"):
            return
        step = self._job_progress.get(name, 0) + 1
        self._job_progress[name] = step
        statuses = list(self.job_statuses)
        failure = stored.get("_ftkit_failure")
        if failure is not None:
            statuses = [s for s in statuses if s != "Completed"] + ["Failed"]
        props["status"] = statuses[min(step, len(statuses) - 1)]
        if props["status"] == "Failed" and failure is not None:
            props["error"] = {"code": "UserError", "message": failure}
        if props["status"] == "Completed":
            self.metrics.setdefault(str(stored["name"]), _training_metrics())

    def _cancel_job(self, key: str) -> tuple[int, Any, dict[str, str]]:
        stored = self.resources.get(key.lower())
        if stored is None:
            return 404, _ErrorBody("ResourceNotFound", "job not found"), {}
        if stored["properties"]["status"] not in ("Completed", "Failed", "Canceled"):
            stored["properties"]["status"] = "Canceled"
        op_id = uuid.uuid4().hex
        self._operations[op_id] = _Operation("cancel", key.lower(), 0)
        return 202, None, {"Location": self._operation_url(op_id), "Retry-After": "1"}

    # ---------------------------------------------------------------- scoring and MLflow

    def _score(self, record: RecordedRequest, request: Any, endpoint: str) -> tuple[int, Any, dict[str, str]]:
        stored = self.endpoint(endpoint)
        if stored is None:
            return 404, _ErrorBody("NotFound", f"no endpoint {endpoint}"), {}
        keys = self._keys.get(endpoint, {})
        request_auth = next((v for k, v in request.headers.items() if k.lower() == "authorization"), "")
        if request_auth.removeprefix("Bearer ") not in keys.values():
            return 401, {"message": "Invalid authentication: key mismatch"}, {}
        wanted = next((v for k, v in record.headers.items() if k.lower() == "azureml-model-deployment"), None)
        deployments = {
            d["name"].lower(): d for d in self._children(f"{self._ws_key('onlineEndpoints')}/{endpoint}/deployments")
        }
        if wanted is None:
            traffic = {k: v for k, v in (stored["properties"].get("traffic") or {}).items() if v}
            if not traffic:
                return (
                    424,
                    {
                        "message": "No valid deployments to route to. Please check that the endpoint has at "
                        "least one deployment with positive weight values or use a deployment specific header "
                        "to route."
                    },
                    {},
                )
            wanted = max(traffic, key=lambda k: traffic[k])
        if wanted.lower() not in deployments:
            return 404, {"message": f"Deployment {wanted} not found on endpoint {endpoint}"}, {}
        body = record.body if isinstance(record.body, dict) else {}
        return 200, {"output": _reply(wanted, body)}, {"azureml-model-deployment": wanted}

    def _mlflow(self, record: RecordedRequest) -> tuple[int, Any, dict[str, str]]:
        run_id = record.query.get("run_id") or record.query.get("run_uuid") or ""
        history = self.metrics.get(run_id)
        if history is None:
            return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Run {run_id} not found"}, {}
        if record.path.endswith("/runs/get"):
            latest = [
                {"key": k, "value": pts[-1][1], "timestamp": pts[-1][2], "step": pts[-1][0]}
                for k, pts in history.items()
            ]
            info = {"run_id": run_id, "run_uuid": run_id, "status": "FINISHED", "experiment_id": "1"}
            return 200, {"run": {"info": info, "data": {"metrics": latest}}}, {}
        if record.path.endswith("/metrics/get-history"):
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
        return 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": record.path}, {}


class _ErrorBody:
    """Strictly private: a handler's request for an ARM-style error body."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message


def _is_collection(rest: str) -> bool:
    return rest.rsplit("/", 1)[-1] in {"computes", "jobs", "onlineendpoints", "deployments", "versions", "datastores"}


def _merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    for k, v in patch.items():
        if isinstance(v, Mapping) and isinstance(target.get(k), dict) and k != "traffic":
            _merge(target[k], v)
        elif v is not None:
            target[k] = v


def _merged(a: dict[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    _merge(a, b)
    return a


def _reply(deployment: str, body: Mapping[str, Any]) -> str:
    """Strictly private: the deterministic answer to a scoring request."""
    conversation: Any = body.get("input_data", {}).get("input_string", [])
    while isinstance(conversation, list) and conversation and isinstance(conversation[0], list):
        conversation = conversation[-1]
    last = ""
    if isinstance(conversation, list):
        users = [m.get("content", "") for m in conversation if isinstance(m, dict) and m.get("role") == "user"]
        last = users[-1] if users else ""
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8]
    return f"[{deployment}:{digest}] You asked: {last[:80]}"


def _training_metrics(
    steps: int = 60, logging_steps: int = 10, epochs: int = 3
) -> dict[str, list[tuple[int, float, int]]]:
    """Strictly private: metrics shaped like HF Trainer's logs (loss, grad_norm, learning_rate, eval_loss)."""
    out: dict[str, list[tuple[int, float, int]]] = {"loss": [], "grad_norm": [], "learning_rate": [], "epoch": []}
    t0 = 1_735_689_600_000
    for step in range(logging_steps, steps + 1, logging_steps):
        ts = t0 + step * 1000
        out["loss"].append((step, round(2.0 * math.exp(-step / 40) + 0.6, 4), ts))
        out["grad_norm"].append((step, round(1.5 / math.sqrt(step), 4), ts))
        out["learning_rate"].append((step, 5e-6 * 0.5 * (1 + math.cos(math.pi * step / steps)), ts))
        out["epoch"].append((step, round(epochs * step / steps, 3), ts))
    per_epoch = steps // epochs
    out["eval_loss"] = [
        (per_epoch * e, round(1.9 * math.exp(-per_epoch * e / 45) + 0.7, 4), t0 + per_epoch * e * 1000)
        for e in range(1, epochs + 1)
    ]
    out["train_loss"] = [(steps, 1.05, t0 + steps * 1000)]
    return out
