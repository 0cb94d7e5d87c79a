"""The fake's shared state, values and request plumbing; each resource's routes live in their own module.

Strictly private; use :class:`ftkit.testing.FakeAzureML`.
"""

from __future__ import annotations

import itertools
import re
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import attrs

from .._http import SECRET_HEADERS, FakeCredential, RecordedRequest, make_response, request_json

__all__ = ["ARM", "PROVIDER", "ErrorBody", "FakeBase", "Fault", "RegistryModel", "Reply"]

ARM = "https://management.azure.com"
PROVIDER = "providers/Microsoft.MachineLearningServices"
MLFLOW_HOST_SUFFIX = ".api.azureml.ms"

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
        tags: Its tags (allow-lists, ``model_specific_defaults``, ``task``...).
        properties: Its properties (``finetune-recommended-sku``, ``evaluation-recommended-sku``...).
        registry: The registry holding it.
    """

    name: str = "Phi-3-mini-4k-instruct"
    version: str = "15"
    tags: Mapping[str, str] = attrs.field(factory=lambda: dict(PHI3_TAGS))
    properties: Mapping[str, str] = attrs.field(factory=dict)
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
class Operation:
    """Strictly private: one long-running operation in flight."""

    kind: str
    key: str
    polls_left: int
    error: Mapping[str, Any] | None = None
    on_success: Callable[[], None] | None = None


class ErrorBody:
    """Strictly private: a handler's request for an ARM-style error body.

    ``details`` become ``error.details``: Azure ML puts the specific code there (``ModelNotFound``...) under a
    generic top-level ``UserError``.
    """

    def __init__(self, code: str, message: str, details: Sequence[Mapping[str, str]] = ()) -> None:
        self.code = code
        self.message = message
        self.details = details


Reply = tuple[int, Any, dict[str, str]]
"""A handler's answer: status, body (JSON-able, ``bytes``, or :class:`ErrorBody`), extra headers."""


class FakeBase:
    """Strictly private: the fake's state and the helpers every resource module shares."""

    def __init__(
        self,
        *,
        subscription_id: str,
        resource_group: str,
        workspace_name: str,
        location: str,
        lro_polls: int,
    ) -> None:
        from .transport import transport_class

        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.workspace_name = workspace_name
        self.location = location
        self.lro_polls = lro_polls
        self.credential = FakeCredential()
        self.transport = transport_class()(self)
        self.requests: list[RecordedRequest] = []
        self.faults: list[Fault] = []
        self.resources: dict[str, dict[str, Any]] = {}
        self._operations: dict[str, Operation] = {}
        self._operation_faults: list[tuple[str, Mapping[str, Any]]] = []
        self._counter = itertools.count(1)
        self._lock = threading.RLock()
        self.base_url: str | None = None  # set while the loopback server runs (see ``serve``)

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

    def _operation_url(self, op_id: str) -> str:
        return (
            f"{ARM}/subscriptions/{self.subscription_id}/{PROVIDER}/locations/{self.location}"
            f"/mfeOperationsStatus/{op_id}?api-version=2023-04-01-preview"
        )

    def _new_op(self, kind: str, key: str) -> str:
        """Start an operation that succeeds at its first poll; return its id."""
        op_id = uuid.uuid4().hex
        self._operations[op_id] = Operation(kind, key.lower(), 0)
        return op_id

    def _take_operation_fault(self, kind: str) -> Mapping[str, Any] | None:
        for i, (fault_kind, error) in enumerate(self._operation_faults):
            if fault_kind == kind:
                del self._operation_faults[i]
                return error
        return None

    def _api_host(self) -> str:
        """The region's data-plane host (discovery, run history, log files, MLflow)."""
        return f"https://{self.location}{MLFLOW_HOST_SUFFIX}"

    # ---------------------------------------------------------------- implemented by the resource modules

    def _route(self, record: RecordedRequest, request: Any) -> Reply:  # pragma: no cover - fake.py
        raise NotImplementedError

    def job(self, name: str) -> dict[str, Any] | None:  # pragma: no cover - models.py
        """Return the stored job resource, or ``None``."""
        raise NotImplementedError

    def _compute_exists(self, name: str) -> bool:  # pragma: no cover - compute.py
        raise NotImplementedError

    def _workspace(self) -> dict[str, Any]:  # pragma: no cover - workspace.py
        raise NotImplementedError

    def _model_exists(self, reference: str) -> Reply | None:  # pragma: no cover - models.py
        raise NotImplementedError

    def _register_outputs(self, job_name: str, props: Mapping[str, Any]) -> None:  # pragma: no cover - serverless.py
        raise NotImplementedError

    # ---------------------------------------------------------------- dispatch

    def _record(self, request: Any) -> RecordedRequest:
        url = str(request.url)
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        headers = {k: ("<redacted>" if k.lower() in SECRET_HEADERS else v) for k, v in dict(request.headers).items()}
        if "authorization" in {k.lower() for k in request.headers}:
            auth = next(v for k, v in request.headers.items() if k.lower() == "authorization")
            headers["Authorization"] = auth.split(" ", 1)[0] + " <redacted>"
        if ".blob.core." in parts.netloc.lower():
            raw = request_bytes(request)
            body: Any = f"<{len(raw)} bytes>" if raw else None
        else:
            body = request_json(request)
        return RecordedRequest(request.method.upper(), url, parts.path, query, headers, body, 0)

    def _handle(self, request: Any) -> Any:
        from azure.core.exceptions import ServiceRequestError, ServiceResponseError

        with self._lock:
            record = self._record(request)
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
            if isinstance(body, ErrorBody):
                return self._error(request, status, body.code, body.message, body.details)
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


def request_bytes(request: Any) -> bytes:
    """Return a request's raw body (blob uploads are bytes, not JSON)."""
    for attr in ("content", "data", "body"):
        raw = getattr(request, attr, None)
        if raw is None:
            continue
        if isinstance(raw, bytes | bytearray):
            return bytes(raw)
        if isinstance(raw, str):
            return raw.encode("utf-8")
        if hasattr(raw, "read"):
            data = raw.read()
            return data if isinstance(data, bytes) else str(data).encode("utf-8")
    return b""


def is_collection(rest: str) -> bool:
    """Whether a workspace path names a collection (answered with an empty page when empty)."""
    return rest.rsplit("/", 1)[-1] in {"computes", "jobs", "onlineendpoints", "deployments", "versions", "datastores"}


def merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    """Merge ``patch`` into ``target`` as an ARM PATCH does (``traffic`` is replaced, not merged)."""
    for k, v in patch.items():
        if isinstance(v, Mapping) and isinstance(target.get(k), dict) and k != "traffic":
            merge(target[k], v)
        elif v is not None:
            target[k] = v


def merged(a: dict[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`merge` ``b`` into ``a`` and return ``a``."""
    merge(a, b)
    return a
