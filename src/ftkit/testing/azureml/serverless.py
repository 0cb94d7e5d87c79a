"""Models as a service: serverless endpoints, marketplace subscriptions, a serverless fine-tune's output model.

What the ``jobs/finetuning/standalone/model-as-a-service`` samples of azureml-examples call:
``marketplace_subscriptions.begin_create_or_update``, ``create_finetuning_job`` (a ``FineTuning`` job whose
``registered_model`` output becomes a workspace model when it completes), ``serverless_endpoints``
``begin_create_or_update`` / ``get`` / ``get_keys`` / ``begin_delete`` (long-running operations, as in ARM), and a
``requests.post`` to ``{scoring_uri}/v1/chat/completions`` (or ``/v1/completions``) with the key: answered
through the transport for the endpoint's ``*.models.ai.azure.com`` host, and on the loopback server while
:meth:`FakeAzureML.serve` runs (the endpoint's ``scoring_uri`` then points there).

Strictly private; use :class:`ftkit.testing.FakeAzureML`.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from .._http import RecordedRequest
from .base import ErrorBody, FakeBase, Operation, Reply
from .tasks import chat_text

__all__ = ["ServerlessRoutes"]

SERVERLESS_HOST_SUFFIX = ".models.ai.azure.com"
# Registries whose models have a publisher other than the name after `azureml-` (Azure ML's own registry).
_SYSTEM_PUBLISHERS = {"azureml": "microsoft"}


class ServerlessRoutes(FakeBase):
    """Strictly private: serverless endpoints, marketplace subscriptions, fine-tuning outputs."""

    _serverless_keys: dict[str, dict[str, str]]
    _responders: dict[tuple[str, str], Any]
    _responder_for: Callable[[str, str], Any]

    # ---------------------------------------------------------------- marketplace subscriptions

    def _put_marketplace_subscription(self, key: str, body: dict[str, Any]) -> Reply:
        props = body.setdefault("properties", {})
        model_id = str(props.get("modelId") or "")
        m = re.fullmatch(r"azureml://registries/([^/]+)/models/([^/]+)", model_id)
        if m is None or not self._children(self._reg_key(m[1], f"models/{m[2]}/versions")):
            # The subscription names a registry model (without a version); the wording is the fake's.
            return 404, ErrorBody("UserError", f"Model {model_id} was not found in the model catalog."), {}
        # Azure's own registry (named like the backend) publishes as microsoft; `azureml-meta` as meta.
        publisher = _SYSTEM_PUBLISHERS.get(m[1], m[1].removeprefix("azureml-"))
        props.update(
            {
                "marketplacePlan": {"publisherId": publisher, "offerId": m[2].lower(), "planId": "standard"},
                "marketplaceSubscriptionStatus": "Subscribed",
                "provisioningState": "Creating",
            }
        )
        return self._serverless_lro("marketplace", key, body)

    # ---------------------------------------------------------------- serverless endpoints

    def serverless_keys(self, name: str) -> dict[str, str]:
        """Return a serverless endpoint's keys (``primaryKey``/``secondaryKey``)."""
        return dict(self._serverless_keys[name.lower()])

    def _put_serverless_endpoint(self, key: str, body: dict[str, Any]) -> Reply:
        name = key.rsplit("/", 1)[-1]
        props = body.setdefault("properties", {})
        model_id = str((props.get("modelSettings") or {}).get("modelId") or "")
        missing = self._model_exists(model_id) if model_id else None
        if missing is not None:
            return missing
        props["authMode"] = "Key"
        props["provisioningState"] = "Creating"
        props["inferenceEndpoint"] = {"uri": self._serverless_uri(name), "headers": {}}
        body.setdefault("location", self.location)
        body.setdefault("sku", {"name": "Consumption"})
        self._serverless_keys.setdefault(
            name.lower(),
            {"primaryKey": _key(name, "primary"), "secondaryKey": _key(name, "secondary")},
        )
        return self._serverless_lro("serverless", key, body)

    def _serverless_lro(self, kind: str, key: str, body: dict[str, Any]) -> Reply:
        stored = self._put(key, body)
        op_id = uuid.uuid4().hex
        self._operations[op_id] = Operation(kind, key.lower(), self.lro_polls, self._take_operation_fault(kind))
        return 201, stored, {"Azure-AsyncOperation": self._operation_url(op_id), "Retry-After": "1"}

    def _serverless_uri(self, name: str) -> str:
        if self.base_url:
            return f"{self.base_url}/serverless/{name}"
        return f"https://{name}.{self.location}{SERVERLESS_HOST_SUFFIX}"

    def _refresh_serverless(self, stored: dict[str, Any]) -> None:
        """Point a serverless endpoint's URI at the loopback server while it runs (and back after)."""
        endpoint = stored["properties"].get("inferenceEndpoint")
        if isinstance(endpoint, dict):
            endpoint["uri"] = self._serverless_uri(str(stored["name"]))

    def _serverless_list_keys(self, name: str) -> Reply:
        keys = self._serverless_keys.get(name)
        if keys is None or self.resources.get(self._ws_key(f"serverlessEndpoints/{name}").lower()) is None:
            return 404, ErrorBody("ResourceNotFound", f"Serverless endpoint {name} was not found."), {}
        return 200, dict(keys), {}

    def _delete_lro(self, key: str) -> Reply:
        """Delete a serverless endpoint or subscription: 202 and an operation to poll, as ARM answers."""
        if key.lower() not in self.resources:
            return 204, None, {}
        del self.resources[key.lower()]
        self._serverless_keys.pop(key.rsplit("/", 1)[-1].lower(), None)
        op_id = uuid.uuid4().hex
        self._operations[op_id] = Operation("delete", key.lower(), 0)
        url = self._operation_url(op_id)
        return 202, None, {"Azure-AsyncOperation": url, "Location": url, "Retry-After": "1"}

    def _serverless_score(self, record: RecordedRequest, request: Any, name: str, route: str) -> Reply:
        stored = self.resources.get(self._ws_key(f"serverlessEndpoints/{name}").lower())
        if stored is None:
            return 404, {"error": {"code": "NotFound", "message": f"no serverless endpoint {name}"}}, {}
        keys = self._serverless_keys.get(name.lower(), {})
        headers = {k.lower(): v for k, v in request.headers.items()}
        sent = headers.get("api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()
        if sent not in keys.values():
            # Azure AI model inference answers a wrong key with 401 (code and wording approximated here).
            return 401, {"error": {"code": "Unauthorized", "message": "Access denied due to invalid key."}}, {}
        body = record.body if isinstance(record.body, dict) else {}
        responder = self._responder_for(name.lower(), "")
        if responder is not None:
            try:
                return 200, responder(body), {}
            except ValueError as exc:
                return 400, {"error": {"code": "BadRequest", "message": str(exc)}}, {}
        route = route.rstrip("/")
        model = str((stored["properties"].get("modelSettings") or {}).get("modelId") or name)
        common = {"created": 1_735_689_600, "model": model.rsplit("/models/", 1)[-1].split("/", 1)[0]}
        usage = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
        if route in ("/v1/chat/completions", "/chat/completions"):
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                return 400, {"error": {"code": "BadRequest", "message": "'messages' is required"}}, {}
            text = chat_text(name, {"input_data": {"input_string": messages}})
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            answer = {"id": _id(text), "object": "chat.completion", **common, "choices": [choice], "usage": usage}
            return 200, answer, {}
        if route in ("/v1/completions", "/completions"):
            prompt = body.get("prompt")
            if not isinstance(prompt, str) or not prompt:
                return 400, {"error": {"code": "BadRequest", "message": "'prompt' is required"}}, {}
            text = f"[{name}] {prompt[-60:]}"
            choice = {"index": 0, "text": text, "finish_reason": "stop"}
            answer = {"id": _id(text), "object": "text_completion", **common, "choices": [choice], "usage": usage}
            return 200, answer, {}
        return 404, {"error": {"code": "NotFound", "message": f"the fake serves no route {route}"}}, {}

    # ---------------------------------------------------------------- serverless fine-tuning

    def _register_outputs(self, job_name: str, props: Mapping[str, Any]) -> None:
        """A completed ``FineTuning`` job registers its ``registered_model`` output as a workspace model.

        The name is the job's ``output_model_name_prefix`` (``outputs.registered_model.assetName``); the
        version is the next free one (``1`` for a new name), which the samples then read as ``.../versions/1``.
        """
        if str(props.get("jobType", "")).lower() != "finetuning":
            return
        for output_name, output in (props.get("outputs") or {}).items():
            if not isinstance(output, dict) or not output.get("assetName") or output.get("assetVersion"):
                continue
            name = str(output["assetName"])
            versions = self._children(self._ws_key(f"models/{name}/versions"))
            numeric = [int(v["name"]) for v in versions if str(v["name"]).isdigit()]
            version = str(max(numeric) + 1) if numeric else "1"
            base = str(((props.get("fineTuningDetails") or {}).get("model") or {}).get("uri") or "")
            self._put(
                self._ws_key(f"models/{name}/versions/{version}"),
                {
                    "properties": {
                        "modelType": "mlflow_model",
                        "modelUri": f"azureml://jobs/{job_name}/outputs/{output_name}",
                        "flavors": {},
                        "tags": {"baseModel": base, "finetuneJob": job_name},
                        "properties": {},
                        "jobName": job_name,
                        "provisioningState": "Succeeded",
                    }
                },
            )
            output["assetVersion"] = version


def _id(text: str) -> str:
    return "cmpl-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def _key(name: str, salt: str) -> str:
    return hashlib.sha256(f"{name}/{salt}/{uuid.uuid4()}".encode()).hexdigest()[:32]
