"""Online endpoints and deployments: long-running operations, keys, logs, scoring, and their faults.

Strictly private; use :class:`ftkit.testing.FakeAzureML`.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from .._http import RecordedRequest
from .base import ErrorBody, FakeBase, Fault, Operation, Reply, merge
from .tasks import Responder, ScoringError, answer_for_task, chat_text, is_chat_request

if TYPE_CHECKING:
    from .jobs import JobRun

__all__ = ["EndpointRoutes"]


class EndpointRoutes(FakeBase):
    """Strictly private: endpoints, deployments, operations, keys, logs and scoring."""

    logs: dict[tuple[str, str], str]
    _keys: dict[str, dict[str, str]]
    _responders: dict[tuple[str, str], Responder | str]
    _runs: dict[str, JobRun]

    # ---------------------------------------------------------------- faults

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

    def fail_deployment_quota(self, *, at: Literal["put", "polling"] = "put") -> None:
        """Make the next deployment fail for quota: synchronously at its PUT (400), or while polling."""
        if at == "polling":
            self.fail_operation("deployment", code="OutOfQuota")
            return
        self.faults.append(
            Fault(
                "PUT",
                r"/onlineEndpoints/[^/]+/deployments/[^/]+$",
                status=400,
                code="BadRequest",
                message="Not enough quota available for Standard_NC6s_v3 in SubscriptionId "
                f"{self.subscription_id}. Current usage/limit: 0/0. Additional needed: 6 "
                "Please see troubleshooting guide, available here: https://aka.ms/oe-tsg#error-outofquota",
                details=({"code": "InferencingClientCreateDeploymentFailed", "message": "Not enough quota"},),
            )
        )

    # ---------------------------------------------------------------- inspection

    def endpoint(self, name: str) -> dict[str, Any] | None:
        """Return the stored endpoint resource, or ``None`` when it does not exist."""
        return self.resources.get(self._ws_key(f"onlineEndpoints/{name}").lower())

    def keys(self, endpoint: str) -> dict[str, str]:
        """Return the endpoint's current keys (``primaryKey``/``secondaryKey``)."""
        return dict(self._keys[endpoint.lower()])

    # ---------------------------------------------------------------- routes

    def _put_endpoint(self, key: str, body: dict[str, Any]) -> Reply:
        props = body.setdefault("properties", {})
        name = key.rsplit("/", 1)[-1]
        existing = self.resources.get(key.lower())
        props["scoringUri"] = f"https://{name}.{self.location}.inference.ml.azure.com/score"
        props["swaggerUri"] = f"https://{name}.{self.location}.inference.ml.azure.com/swagger.json"
        props.setdefault("traffic", {})
        body.setdefault("location", self.location)
        body.setdefault("kind", "Managed")
        body.setdefault("identity", {"type": "SystemAssigned"})
        refusal = self._traffic_refusal(key, props)
        if refusal is not None:
            return refusal
        if existing is not None:
            merge(existing, body)
            body = existing
        self._keys.setdefault(
            name.lower(), {"primaryKey": self._new_key(name, "primary"), "secondaryKey": self._new_key(name, "s")}
        )
        return self._start_lro("endpoint", key, body)

    def _traffic_refusal(self, key: str, props: Mapping[str, Any]) -> Reply | None:
        """Refuse traffic (or mirror traffic) naming deployments the endpoint does not have (PUT and PATCH)."""
        have = {str(d["name"]).lower() for d in self._children(f"{key}/deployments")}
        named = [*(props.get("traffic") or {}), *(props.get("mirrorTraffic") or {})]
        unknown = sorted({n for n in named if n.lower() not in have})
        if not unknown:
            return None
        # Traffic can be set only for deployments the endpoint already has ("You can set the traffic only when
        # the deployments under an endpoint have been created", learn.microsoft.com, "Perform safe rollout of
        # new deployments"); the code and wording of the refusal are the fake's.
        name = key.rsplit("/", 1)[-1]
        message = (
            f"Traffic names deployments that do not exist in endpoint {name}: {', '.join(unknown)}. "
            "Create the deployments first, then set traffic."
        )
        return 400, ErrorBody("BadRequest", message), {}

    def _put_deployment(self, key: str, body: dict[str, Any]) -> Reply:
        props = body.setdefault("properties", {})
        endpoint_key = key.rsplit("/deployments/", 1)[0]
        if endpoint_key.lower() not in self.resources:
            return 404, ErrorBody("ResourceNotFound", "the endpoint does not exist"), {}
        model = props.get("model")
        if isinstance(model, str):
            missing = self._model_exists(model)
            if missing is not None:
                return missing
        props.setdefault("scaleSettings", {"scaleType": "Default"})
        props.setdefault("endpointComputeType", "Managed")
        body.setdefault("location", self.location)
        body.setdefault("sku", {"name": "Default", "capacity": 1})
        return self._start_lro("deployment", key, body)

    def _start_lro(self, kind: str, key: str, body: dict[str, Any]) -> Reply:
        body["properties"]["provisioningState"] = "Creating" if key.lower() not in self.resources else "Updating"
        stored = self._put(key, body)
        op_id = uuid.uuid4().hex
        self._operations[op_id] = Operation(kind, key.lower(), self.lro_polls, self._take_operation_fault(kind))
        return 201, stored, {"Azure-AsyncOperation": self._operation_url(op_id), "Retry-After": "1"}

    def _operation_status(self, op_id: str) -> Reply:
        operation = self._operations.get(op_id)
        if operation is None:
            return 404, ErrorBody("ResourceNotFound", "no such operation"), {}
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

    def _delete(self, key: str, lowered: str) -> Reply:
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
            self._operations[op_id] = Operation("delete", key.lower(), 0)
            return 202, None, {"Azure-AsyncOperation": self._operation_url(op_id), "Retry-After": "1"}
        return 200, None, {}

    def _endpoint_keys(self, endpoint: str, action: str, record: RecordedRequest) -> Reply:
        keys = self._keys.get(endpoint)
        if keys is None:
            return 404, ErrorBody("ResourceNotFound", f"endpoint {endpoint} not found"), {}
        if action == "listkeys":
            return 200, dict(keys), {}
        which = str((record.body or {}).get("keyType", "Primary")).lower()
        field = "primaryKey" if which == "primary" else "secondaryKey"
        # The fake always rolls the key (the request's keyValue carries the old one).
        keys[field] = self._new_key(endpoint, which + str(next(self._counter)))
        op_id = uuid.uuid4().hex
        self._operations[op_id] = Operation("keys", endpoint, 0)
        return 202, None, {"Azure-AsyncOperation": self._operation_url(op_id), "Retry-After": "1"}

    def _new_key(self, endpoint: str, salt: str) -> str:
        return hashlib.sha256(f"{endpoint}/{salt}/{uuid.uuid4()}".encode()).hexdigest()[:32]

    def _deployment_logs(self, endpoint: str, deployment: str, record: RecordedRequest) -> Reply:
        key = self._ws_key(f"onlineEndpoints/{endpoint}/deployments/{deployment}").lower()
        text = self.logs.get((endpoint, deployment))
        if text is None:
            if key not in self.resources:
                return 404, ErrorBody("ResourceNotFound", f"deployment {deployment} not found"), {}
            text = "2025-01-01 00:00:01 Loading MLflow model\n2025-01-01 00:02:00 Model loaded; server ready\n"
        tail = int((record.body or {}).get("tail") or 0)
        lines = text.splitlines(keepends=True)
        return 200, {"content": "".join(lines[-tail:] if tail else lines)}, {}

    def _score(self, record: RecordedRequest, request: Any, endpoint: str) -> Reply:
        stored = self.endpoint(endpoint)
        if stored is None:
            return 404, ErrorBody("NotFound", f"no endpoint {endpoint}"), {}
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
        deployment = deployments[wanted.lower()]
        responder = self._responder_for(endpoint, str(deployment["name"]))
        try:
            if responder is not None:
                answer = responder(body)
            else:
                answer = self._task_answer(str(deployment["name"]), deployment, body)
        except (ScoringError, ValueError) as exc:
            # The inference server answers a request the model cannot read with 400 and the scoring
            # script's message (azureml-inference-server-http wraps it as {"message": ...}, the same shape
            # the 424 above has); the SDK's invoke raises HttpResponseError carrying it.
            return 400, {"message": f"An unexpected error occurred in scoring script. {exc}"}, {}
        return 200, answer, {"azureml-model-deployment": wanted}

    # ---------------------------------------------------------------- task-shaped answers

    def answer_with(
        self,
        responder: Responder | str,
        *,
        endpoint: str | None = None,
        deployment: str | None = None,
    ) -> None:
        """Choose how deployments answer scoring requests.

        By default a deployment answers in its model's task shape: the ``task`` tag of its registry or
        workspace model, or the task of the registry fine-tuning pipeline whose output it was registered
        from (chat models: ``{"output": str}``).

        Args:
            responder: A task name (``text-classification``, ``question-answering``, ``summarization``,
                ``translation``, ``token-classification``, ``fill-mask``, ``text-generation``,
                ``chat-completion``, ``image-classification``, ``image-classification-multilabel``,
                ``image-object-detection``), or a function from the request's JSON body to the JSON answer
                (raise ``ValueError`` to refuse the input: answered 400 with its message).
            endpoint: Only this endpoint's deployments (default: all).
            deployment: Only this deployment (default: all of the endpoint's).
        """
        key = ((endpoint or "*").lower(), (deployment or "*").lower())
        self._responders[key] = responder

    def _responder_for(self, endpoint: str, deployment: str) -> Responder | None:
        for key in ((endpoint, deployment.lower()), (endpoint, "*"), ("*", deployment.lower()), ("*", "*")):
            chosen = self._responders.get(key)
            if chosen is None:
                continue
            if isinstance(chosen, str):
                task = chosen
                return lambda body: self._answer(task, deployment, body)
            return chosen
        return None

    def _task_answer(self, name: str, deployment: Mapping[str, Any], body: Mapping[str, Any]) -> Any:
        model = deployment["properties"].get("model")
        task = self._model_task(model) if isinstance(model, str) else None
        return self._answer(task or "chat-completion", name, body)

    def _answer(self, task: str, deployment: str, body: Mapping[str, Any]) -> Any:
        if task == "chat-completion" or (task == "text-generation" and is_chat_request(body)):
            if "input_data" not in body:
                raise ScoringError("a chat model needs 'input_data' with 'input_string' (the conversation)")
            # Unchanged since the first fake: ftkit's backend and its users' tests read "output".
            return {"output": chat_text(deployment, body)}
        return answer_for_task(task, deployment, body)

    def _model_task(self, reference: str) -> str | None:
        """The task of a deployment's model: its ``task`` tag, or the fine-tuning job it came from."""
        m = re.search(r"/models/([^/]+)/versions/([^/]+)$", reference, re.I) or re.fullmatch(
            r"azureml:([^:/]+):([^:/]+)", reference
        )
        if m is None:
            return None
        if "/registries/" in reference.lower():
            registry = reference.lower().split("/registries/", 1)[1].split("/")[0]
            key = self._reg_key(registry, f"models/{m[1]}/versions/{m[2]}")
        else:
            key = self._ws_key(f"models/{m[1]}/versions/{m[2]}")
        stored = self.resources.get(key.lower())
        if stored is None:
            return None
        props = stored.get("properties") or {}
        task = (props.get("tags") or {}).get("task")
        if task:
            return str(task)
        source = re.match(r"azureml://jobs/([^/]+)/outputs/", str(props.get("modelUri") or ""))
        run = self._runs.get(source[1].lower()) if source else None
        return run.task if run is not None else None
