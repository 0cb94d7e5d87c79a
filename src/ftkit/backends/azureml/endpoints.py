"""Managed online endpoints and deployments, and scoring them.

Long-running operations follow one rule (see :mod:`ftkit.retry`): the PUT/DELETE that starts the operation
is retried on transient errors (it is idempotent), polling gets its own deadline
(``poller.result(timeout=...)``), and a terminal failure (quota, probe, anything else) raises at once. When a
deployment fails, its container logs are fetched and attached to the error.

Scoring does not use ``online_endpoints.invoke``: it keeps the ``azureml-model-deployment`` header and the key
in a module-level dict, so they leak into later calls (see the azure-ml SDK notes). ftkit POSTs to the scoring
URI itself, through an azure-core pipeline on the same transport, always naming the deployment.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal, TypeVar

from ... import retry
from ...exceptions import (
    BackendError,
    DeploymentError,
    NotFoundError,
    Problem,
    ScoringError,
    TransientBackendError,
    ValidationError,
)
from ..base import DeploymentInfo, DeploymentSpec, EndpointInfo, EndpointKeys, EndpointSpec
from .connection import AzureMLConnection
from .errors import TRANSIENT_STATUS, map_azure_errors
from .tags import CREATED_BY_TAG

__all__ = ["CREATED_BY_TAG", "EndpointOperations"]

# A 500 from the scoring container is the scoring script failing on this request: sending it again fails
# again (and costs GPU time), so scoring retries only the gateway's and the network's transient answers.
SCORING_TRANSIENT_STATUS = TRANSIENT_STATUS - {500}
T = TypeVar("T")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # azure-ai-ml prints "Check: endpoint exists" and progress dots to stdout during LROs; ftkit reports
    # progress itself, and stdout may be a pipe whose reader expects JSON.
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _state(value: Any) -> str:
    text = str(getattr(value, "value", value) or "Unknown")
    return text[:1].upper() + text[1:]


def endpoint_info(endpoint: Any, deployments: tuple[str, ...] = ()) -> EndpointInfo:
    """Turn an azure-ai-ml ``OnlineEndpoint`` into an :class:`~ftkit.backends.base.EndpointInfo`."""
    return EndpointInfo(
        name=str(endpoint.name),
        scoring_uri=str(endpoint.scoring_uri or ""),
        provisioning_state=_state(endpoint.provisioning_state),
        traffic={str(k): int(v) for k, v in (endpoint.traffic or {}).items()},
        deployments=deployments,
        tags=dict(endpoint.tags or {}),
    )


class EndpointOperations:
    """Endpoint, deployment, key, log and scoring operations on one workspace.

    Args:
        connection: The workspace connection.
        lro_timeout_s: Deadline for one long-running operation's polling.
    """

    def __init__(self, connection: AzureMLConnection, *, lro_timeout_s: float = 3600.0) -> None:
        self._connection = connection
        self.lro_timeout_s = lro_timeout_s
        self._scoring: dict[str, tuple[str, str]] = {}

    @property
    def _ml(self) -> Any:
        return self._connection.ml_client

    def _call(self, operation: str, fn: Callable[[], T], **context: Any) -> T:
        def attempt() -> T:
            with map_azure_errors(operation, **context), _quiet():
                return fn()

        return retry.call(attempt)

    def _lro(self, operation: str, begin: Callable[[], Any], **context: Any) -> Any:
        """Retry the request that starts an LRO; poll it once, with a deadline, never retried."""
        poller = self._call(operation, begin, **context)
        with map_azure_errors(operation, polling=True, **context), _quiet():
            result = poller.result(timeout=self.lro_timeout_s)
            if not poller.done():
                raise BackendError(
                    f"{operation}: still running after {self.lro_timeout_s:.0f}s; it continues in the service. "
                    "Check its state in Azure ML Studio, then run again (creating is idempotent).",
                    operation=operation,
                )
        return result

    # ------------------------------------------------------------------ endpoints

    def get_endpoint(self, name: str) -> EndpointInfo:
        """Return the endpoint and its deployments' names."""
        ml = self._ml
        endpoint = self._call("get_endpoint", lambda: ml.online_endpoints.get(name), resource=f"endpoint {name}")
        deployments = self._call(
            "list_deployments",
            lambda: tuple(sorted(d.name for d in ml.online_deployments.list(endpoint_name=name))),
            resource=f"endpoint {name}",
        )
        return endpoint_info(endpoint, deployments)

    def list_endpoints(self) -> list[EndpointInfo]:
        """Return the workspace's endpoints that ftkit created."""
        ml = self._ml
        endpoints = self._call("list_endpoints", lambda: list(ml.online_endpoints.list()))
        return [endpoint_info(e) for e in endpoints if (e.tags or {}).get(CREATED_BY_TAG) == "ftkit"]

    def create_endpoint(self, spec: EndpointSpec) -> EndpointInfo:
        """Create the endpoint with key auth (or return it when it exists already) and wait until it is ready."""
        from azure.ai.ml.entities import ManagedOnlineEndpoint

        with contextlib.suppress(NotFoundError):
            existing = self.get_endpoint(spec.name)
            if existing.provisioning_state == "Succeeded":
                return existing
        endpoint = ManagedOnlineEndpoint(
            name=spec.name,
            description=spec.description,
            auth_mode=spec.auth_mode,
            tags={CREATED_BY_TAG: "ftkit", **spec.tags},
        )
        ml = self._ml
        self._lro(
            "create_endpoint",
            lambda: ml.online_endpoints.begin_create_or_update(endpoint),
            endpoint=spec.name,
            resource=f"endpoint {spec.name}",
        )
        return self.get_endpoint(spec.name)

    def set_traffic(self, endpoint: str, traffic: Mapping[str, int]) -> EndpointInfo:
        """Route traffic between the endpoint's deployments."""
        name = endpoint
        current = self.get_endpoint(name)
        problems = [
            Problem(f"traffic.{d}", "no such deployment", f"deployments: {', '.join(current.deployments) or 'none'}")
            for d in traffic
            if d not in current.deployments
        ]
        problems += [
            Problem(f"traffic.{d}", f"{p} is not a percentage") for d, p in traffic.items() if not 0 <= p <= 100
        ]
        if sum(traffic.values()) not in (0, 100):
            problems.append(
                Problem("traffic", f"percentages add up to {sum(traffic.values())}", "make them add up to 100")
            )
        if problems:
            raise ValidationError(problems, f"cannot route traffic on endpoint {name}")
        ml = self._ml

        def begin() -> Any:
            endpoint = ml.online_endpoints.get(name)
            endpoint.traffic = dict(traffic)
            return ml.online_endpoints.begin_create_or_update(endpoint)

        self._lro("set_traffic", begin, endpoint=name, resource=f"endpoint {name}")
        return self.get_endpoint(name)

    def delete_endpoint(self, name: str) -> None:
        """Delete the endpoint and its deployments; no error when it is gone."""
        self._scoring.pop(name, None)
        ml = self._ml
        with contextlib.suppress(NotFoundError):
            self._lro(
                "delete_endpoint",
                lambda: ml.online_endpoints.begin_delete(name=name),
                endpoint=name,
                resource=f"endpoint {name}",
            )

    # ------------------------------------------------------------------ deployments

    def create_deployment(self, spec: DeploymentSpec) -> DeploymentInfo:
        """Create or update a deployment and wait until it serves; attach its logs when it fails."""
        from azure.ai.ml.entities import ManagedOnlineDeployment, OnlineRequestSettings, ProbeSettings

        settings = spec.settings  # max_queue and max_batch_size are the local server's: no Azure counterpart
        deployment = ManagedOnlineDeployment(
            name=spec.name,
            endpoint_name=spec.endpoint,
            model=spec.model.id,
            instance_type=settings.instance_type,
            instance_count=settings.instance_count,
            liveness_probe=ProbeSettings(initial_delay=settings.liveness_initial_delay_s),
            request_settings=OnlineRequestSettings(
                request_timeout_ms=settings.request_timeout_ms,
                max_concurrent_requests_per_instance=settings.max_concurrent_requests,
            ),
            tags={CREATED_BY_TAG: "ftkit"},
        )
        ml = self._ml
        context = {"endpoint": spec.endpoint, "deployment": spec.name, "resource": f"deployment {spec.name}"}
        try:
            result = self._lro(
                "create_deployment", lambda: ml.online_deployments.begin_create_or_update(deployment), **context
            )
        except DeploymentError as exc:
            exc.logs = self._logs_or_none(spec.endpoint, spec.name)
            if exc.logs:
                exc.add_note(f"last lines of the deployment's logs:\n{exc.logs}")
            raise
        return DeploymentInfo(
            name=spec.name,
            endpoint=spec.endpoint,
            provisioning_state=_state(result.provisioning_state),
            model_id=str(result.model) if result.model else spec.model.id,
            instance_type=result.instance_type,
        )

    def delete_deployment(self, endpoint: str, deployment: str) -> None:
        """Delete a deployment; no error when it is gone."""
        name = deployment
        ml = self._ml
        with contextlib.suppress(NotFoundError):
            self._lro(
                "delete_deployment",
                lambda: ml.online_deployments.begin_delete(name=name, endpoint_name=endpoint),
                endpoint=endpoint,
                deployment=name,
                resource=f"deployment {name}",
            )

    def get_logs(self, endpoint: str, deployment: str, *, lines: int = 200) -> str:
        """Return the last ``lines`` lines of the deployment's inference-server logs."""
        ml = self._ml
        return str(
            self._call(
                "get_logs",
                lambda: ml.online_deployments.get_logs(name=deployment, endpoint_name=endpoint, lines=lines),
                resource=f"deployment {deployment}",
            )
        )

    def _logs_or_none(self, endpoint: str, deployment: str) -> str | None:
        try:
            return self.get_logs(endpoint, deployment, lines=100) or None
        except BackendError:
            return None  # the deployment may never have started a container

    # ------------------------------------------------------------------ keys and scoring

    def get_keys(self, endpoint: str) -> EndpointKeys:
        """Return the endpoint's keys."""
        ml = self._ml
        keys = self._call("get_keys", lambda: ml.online_endpoints.get_keys(endpoint), resource=f"endpoint {endpoint}")
        return EndpointKeys(primary=str(keys.primary_key), secondary=str(keys.secondary_key))

    def regenerate_key(self, endpoint: str, which: Literal["primary", "secondary"]) -> EndpointKeys:
        """Roll one key and return both."""
        self._scoring.pop(endpoint, None)
        ml = self._ml
        self._lro(
            "regenerate_key",
            lambda: ml.online_endpoints.begin_regenerate_keys(name=endpoint, key_type=which),
            resource=f"endpoint {endpoint}",
        )
        return self.get_keys(endpoint)

    def _scoring_target(self, endpoint: str) -> tuple[str, str]:
        target = self._scoring.get(endpoint)
        if target is None:
            ml = self._ml
            info = self._call("score", lambda: ml.online_endpoints.get(endpoint), resource=f"endpoint {endpoint}")
            target = (str(info.scoring_uri), self.get_keys(endpoint).primary)
            self._scoring[endpoint] = target
        return target

    def score(
        self, endpoint: str, body: Mapping[str, Any], *, deployment: str | None = None, timeout_s: float = 90.0
    ) -> Any:
        """POST ``body`` to the endpoint's scoring URI with its key, always naming a deployment.

        Without ``deployment``, the one with most traffic is named: azure-ai-ml's own ``invoke`` leaves the
        header out (or, worse, reuses a previous call's), so ftkit never sends a request without it.

        Raises:
            ScoringError: The endpoint answered with an error (408/429/502/503/504 are retried first).
            ValidationError: No deployment was named and the endpoint routes no traffic.
        """
        from azure.core.rest import HttpRequest

        if deployment is None:
            traffic = {k: v for k, v in self.get_endpoint(endpoint).traffic.items() if v > 0}
            if not traffic:
                raise ValidationError(
                    [Problem("deployment", f"endpoint {endpoint} routes no traffic", "name the deployment to score")]
                )
            deployment = max(sorted(traffic), key=lambda d: traffic[d])

        uri, key = self._scoring_target(endpoint)
        payload = json.dumps(body).encode("utf-8")

        def send() -> Any:
            request = HttpRequest(
                "POST",
                uri,
                content=payload,
                headers={
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                    "Authorization": f"Bearer {key}",
                    "azureml-model-deployment": deployment,
                },
            )
            with map_azure_errors("score", resource=f"endpoint {endpoint}"):
                response = self._connection.pipeline_client().send_request(
                    request, connection_timeout=min(30.0, timeout_s), read_timeout=timeout_s
                )
            status = response.status_code
            text = response.text()
            if status in SCORING_TRANSIENT_STATUS:
                raise TransientBackendError(
                    f"scoring {endpoint}/{deployment} answered {status}: {text[:200]}",
                    operation="score",
                    status_code=status,
                    retry_after=_retry_after(response.headers),
                )
            if status >= 400:
                hint = " (the key is wrong or was rolled)" if status in (401, 403) else ""
                raise ScoringError(
                    f"scoring {endpoint}/{deployment} answered {status}{hint}: {text[:500]}",
                    status_code=status,
                    endpoint=endpoint,
                    deployment=deployment,
                )
            try:
                return json.loads(text)
            except ValueError:
                return text

        try:
            return retry.call(send)
        except ScoringError as exc:
            if exc.status_code in (401, 403):
                self._scoring.pop(endpoint, None)  # read the key afresh next time
            raise


def _retry_after(headers: Mapping[str, str]) -> float | None:
    raw = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None
