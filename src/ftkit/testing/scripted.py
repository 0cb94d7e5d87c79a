"""`ScriptedBackend`: the backend protocol in memory, for testing the layers above it without any SDK.

:class:`~ftkit.deploy.EndpointDeployer`, :class:`~ftkit.runner.JobRunner` and your own code written against
:class:`~ftkit.backends.base.Backend` run on it unchanged. It is stateful (endpoints, deployments, traffic,
keys, jobs and registered models live in it), keeps every call with the typed value it was given
(:attr:`ScriptedBackend.calls`), walks jobs through a script of states, and fails an operation on request
(:meth:`ScriptedBackend.fail`). It imports neither azure-ai-ml nor torch::

    backend = ScriptedBackend(job_statuses=("Running", "Completed"))
    with EndpointDeployer(backend, "ep") as deployer:
        deployer.deploy(RegisteredModel(name="m", version="1", id="models:/m/1"))
    (spec,) = backend.requests("create_deployment")
    assert spec.settings.max_queue == 64
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from ..backends.base import (
    DeploymentInfo,
    DeploymentSpec,
    EndpointInfo,
    EndpointKeys,
    EndpointSpec,
    FinetuneRequest,
    JobHandle,
    MetricPoint,
    MetricsTable,
    RegisteredModel,
    RegisterRequest,
)
from ..backends.traits import backend_traits
from ..component import ComponentSchema
from ..compute import ClusterInfo, ComputeCheck, ComputeValidator, VmSize
from ..exceptions import ConflictError, FtkitError, NotFoundError, Problem, ValidationError
from ..jobfile import ComputeSection
from ..model import FoundationModelRef

__all__ = ["Call", "ScriptedBackend", "ScriptedEndpoints"]


@attrs.frozen
class Call:
    """One call a :class:`ScriptedBackend` received.

    Attributes:
        operation: The protocol method (``submit_finetune``, ``create_deployment``...).
        request: Its main argument, as given (a :class:`~ftkit.backends.base.FinetuneRequest`, a
            :class:`~ftkit.backends.base.DeploymentSpec`, an endpoint name...).
    """

    operation: str
    request: object


class _Script:
    """Strictly private: the call log and the faults shared by a backend and its endpoints."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.faults: dict[str, list[FtkitError]] = {}

    def enter(self, operation: str, request: object) -> None:
        self.calls.append(Call(operation, request))
        pending = self.faults.get(operation)
        if pending:
            raise pending.pop(0)


def default_answer(endpoint: str, deployment: str, body: Mapping[str, Any]) -> Any:
    """The scoring answer of :class:`ScriptedEndpoints` unless told otherwise: names who answered what.

    ``{"output": "[<deployment>] You asked: <last user message>"}`` for the notebook's body.
    """
    del endpoint
    question = ""
    conversations = body.get("input_data", {}).get("input_string") if isinstance(body, Mapping) else None
    if isinstance(conversations, list) and conversations and isinstance(conversations[0], list):
        users = [m.get("content", "") for m in conversations[0] if isinstance(m, Mapping) and m.get("role") == "user"]
        question = str(users[-1]) if users else ""
    return {"output": f"[{deployment}] You asked: {question}"}


class ScriptedEndpoints:
    """Online endpoints in memory (the :class:`~ftkit.backends.base.Endpoints` half of :class:`ScriptedBackend`).

    Args:
        answer: Computes a scoring answer from ``(endpoint, deployment, body)`` (:func:`default_answer`).
        failing_deployments: Deployment names whose creation fails with a
            :class:`~ftkit.exceptions.DeploymentError`.
    """

    def __init__(
        self,
        answer: Callable[[str, str, Mapping[str, Any]], Any] = default_answer,
        *,
        failing_deployments: Sequence[str] = (),
        _script: _Script | None = None,
    ) -> None:
        self._script = _script or _Script()
        self.answer = answer
        self.failing_deployments = frozenset(failing_deployments)
        self.endpoints: dict[str, EndpointInfo] = {}
        self.deployments: dict[str, dict[str, DeploymentSpec]] = {}
        self.keys: dict[str, EndpointKeys] = {}

    def _existing(self, name: str) -> EndpointInfo:
        info = self.endpoints.get(name)
        if info is None:
            raise NotFoundError(f"endpoint {name!r} not found", operation="get_endpoint", status_code=404)
        return attrs.evolve(info, deployments=tuple(sorted(self.deployments.get(name, {}))))

    def create_endpoint(self, spec: EndpointSpec) -> EndpointInfo:
        """Create (or update) the endpoint with fresh keys."""
        self._script.enter("create_endpoint", spec)
        current = self.endpoints.get(spec.name)
        self.endpoints[spec.name] = EndpointInfo(
            name=spec.name,
            scoring_uri=f"https://{spec.name}.scripted.invalid/score",
            traffic=dict(current.traffic) if current else {},
            tags={"ftkit.created_by": "ftkit", **spec.tags},
        )
        self.deployments.setdefault(spec.name, {})
        self.keys.setdefault(spec.name, EndpointKeys(secrets.token_hex(8), secrets.token_hex(8)))
        return self._existing(spec.name)

    def create_deployment(self, spec: DeploymentSpec) -> DeploymentInfo:
        """Create (or update) a deployment; it serves at once (or fails, if it is in ``failing_deployments``)."""
        from ..exceptions import DeploymentError

        self._script.enter("create_deployment", spec)
        self._existing(spec.endpoint)
        if spec.name in self.failing_deployments:
            raise DeploymentError(
                f"deployment {spec.name} failed (scripted)", endpoint=spec.endpoint, deployment=spec.name, logs="boom"
            )
        self.deployments[spec.endpoint][spec.name] = spec
        return DeploymentInfo(
            name=spec.name,
            endpoint=spec.endpoint,
            provisioning_state="Succeeded",
            model_id=spec.model.id,
            instance_type=spec.settings.instance_type,
        )

    def set_traffic(self, endpoint: str, traffic: Mapping[str, int]) -> EndpointInfo:
        """Route traffic; the shares must name existing deployments and add up to 100 (or 0)."""
        self._script.enter("set_traffic", {"endpoint": endpoint, "traffic": dict(traffic)})
        info = self._existing(endpoint)
        unknown = sorted(set(traffic) - set(self.deployments[endpoint]))
        total = sum(traffic.values())
        if unknown or total not in (0, 100):
            raise ValidationError(
                [Problem("traffic", f"unknown deployments {unknown}" if unknown else f"adds up to {total}")],
                "invalid traffic",
            )
        self.endpoints[endpoint] = attrs.evolve(info, traffic=dict(traffic))
        return self._existing(endpoint)

    def get_endpoint(self, name: str) -> EndpointInfo:
        """Return the endpoint (``NotFoundError`` if absent)."""
        self._script.enter("get_endpoint", name)
        return self._existing(name)

    def list_endpoints(self) -> list[EndpointInfo]:
        """Return every endpoint, by name."""
        self._script.enter("list_endpoints", None)
        return [self._existing(n) for n in sorted(self.endpoints)]

    def get_keys(self, endpoint: str) -> EndpointKeys:
        """Return the endpoint's keys."""
        self._script.enter("get_keys", endpoint)
        self._existing(endpoint)
        return self.keys[endpoint]

    def regenerate_key(self, endpoint: str, which: Literal["primary", "secondary"]) -> EndpointKeys:
        """Replace one key."""
        self._script.enter("regenerate_key", {"endpoint": endpoint, "which": which})
        self._existing(endpoint)
        self.keys[endpoint] = attrs.evolve(self.keys[endpoint], **{which: secrets.token_hex(8)})
        return self.keys[endpoint]

    def score(
        self,
        endpoint: str,
        body: Mapping[str, Any],
        *,
        deployment: str | None = None,
        timeout_s: float = 90.0,
    ) -> Any:
        """Answer with :attr:`answer`, from the named deployment or the one with the most traffic."""
        self._script.enter(
            "score", {"endpoint": endpoint, "deployment": deployment, "body": body, "timeout_s": timeout_s}
        )
        info = self._existing(endpoint)
        target = deployment
        if target is None:
            live = {k: v for k, v in info.traffic.items() if v > 0}
            target = max(sorted(live), key=lambda k: live[k]) if live else None
        if target is None or target not in self.deployments[endpoint]:
            raise NotFoundError(f"no deployment {target!r} to score on {endpoint}", operation="score")
        return self.answer(endpoint, target, body)

    def get_logs(self, endpoint: str, deployment: str, *, lines: int = 200) -> str:
        """Return a one-line log naming the deployment."""
        self._script.enter("get_logs", {"endpoint": endpoint, "deployment": deployment})
        self._existing(endpoint)
        return f"{deployment}: serving (scripted)"[: max(lines, 0) * 200]

    def delete_deployment(self, endpoint: str, deployment: str) -> None:
        """Delete a deployment (no error if it is gone)."""
        self._script.enter("delete_deployment", {"endpoint": endpoint, "deployment": deployment})
        self.deployments.get(endpoint, {}).pop(deployment, None)
        info = self.endpoints.get(endpoint)
        if info is not None:  # as on Azure ML, a deleted deployment leaves the traffic table
            self.endpoints[endpoint] = attrs.evolve(
                info, traffic={k: v for k, v in info.traffic.items() if k != deployment}
            )

    def delete_endpoint(self, name: str) -> None:
        """Delete an endpoint and its deployments (no error if it is gone)."""
        self._script.enter("delete_endpoint", name)
        self.endpoints.pop(name, None)
        self.deployments.pop(name, None)
        self.keys.pop(name, None)


class ScriptedBackend:
    """The :class:`~ftkit.backends.base.Backend` protocol in memory, for tests of code above the backends.

    Args:
        name: The backend it stands in for: its :attr:`traits` are that backend's (``azureml``: a cluster is
            checked and an interrupted run leaves its job running; ``local``: no cluster, the job is stopped).
        models: Foundation models by name, with their tags (``model_specific_defaults``, allow-lists); any
            other name resolves to version ``1`` with no tags.
        job_statuses: The states a submitted job goes through, one per :meth:`get_job`.
        job_error: The failure message of a job whose script ends ``Failed``.
        metrics: What :meth:`read_metrics` returns for every job (a falling ``loss`` by default).
        gpus_per_node: The GPUs per node of the scripted cluster.
        schema: What :meth:`component_schema` returns (ftkit's bundled snapshot of the version by default).
        answer: The endpoints' scoring answer (see :class:`ScriptedEndpoints`).
        failing_deployments: Deployment names whose creation fails.
        losses: What :meth:`heldout_losses` returns, as ``losses(model, conversations)`` (``None``: the backend
            cannot compute held-out loss, as on Azure ML).
    """

    def __init__(
        self,
        *,
        name: str = "azureml",
        models: Mapping[str, FoundationModelRef] | None = None,
        job_statuses: Sequence[str] = ("Queued", "Running", "Completed"),
        job_error: str = "scripted failure",
        metrics: Sequence[MetricPoint] | None = None,
        gpus_per_node: int = 8,
        schema: ComponentSchema | None = None,
        answer: Callable[[str, str, Mapping[str, Any]], Any] = default_answer,
        failing_deployments: Sequence[str] = (),
        losses: Callable[[RegisteredModel, Sequence[Sequence[Mapping[str, Any]]]], list[tuple[float, int]]]
        | None = None,
    ) -> None:
        self.name = name
        self.traits = backend_traits(name)
        self.losses = losses
        self._script = _Script()
        self.models = dict(models or {})
        self.job_statuses = tuple(job_statuses)
        self.job_error = job_error
        self.metrics = tuple(metrics) if metrics is not None else _falling_loss()
        self.gpus_per_node = gpus_per_node
        self.schema = schema
        self.jobs: dict[str, list[str]] = {}
        self.registered: dict[tuple[str, str], RegisteredModel] = {}
        self._endpoints = ScriptedEndpoints(answer, failing_deployments=failing_deployments, _script=self._script)

    def __repr__(self) -> str:
        return f"ScriptedBackend(name={self.name!r}, calls={len(self.calls)})"

    # -- the script -----------------------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        """Every call received so far, endpoints included, in order."""
        return self._script.calls

    def operations(self) -> list[str]:
        """The operations called so far, in order."""
        return [c.operation for c in self.calls]

    def requests(self, operation: str) -> list[Any]:
        """The values one operation was called with, in order."""
        return [c.request for c in self.calls if c.operation == operation]

    def fail(self, operation: str, error: FtkitError, *, times: int = 1) -> None:
        """Make the next ``times`` calls of ``operation`` raise ``error`` (after being recorded)."""
        self._script.faults.setdefault(operation, []).extend([error] * times)

    # -- the protocol ---------------------------------------------------------------------------------

    @property
    def endpoints(self) -> ScriptedEndpoints:
        """The in-memory endpoints."""
        return self._endpoints

    def component_schema(self, name: str, version: str) -> ComponentSchema:
        """Return :attr:`schema`, or ftkit's bundled snapshot of ``name`` ``version``."""
        self._script.enter("component_schema", (name, version))
        return self.schema if self.schema is not None else ComponentSchema.bundled(name, version)

    def resolve_model(self, ref: FoundationModelRef) -> FoundationModelRef:
        """Pin ``ref`` to the scripted model of that name (its version and tags), else version ``1``."""
        self._script.enter("resolve_model", ref)
        known = self.models.get(ref.name)
        if known is None:
            return ref.resolved(ref.version or "1", {})
        return ref.resolved(known.version or "1", known.tags)

    def model_id(self, model: FoundationModelRef, *, path: Path | None = None) -> str:
        """The directory where one is given, a ``models:/`` URI on this machine, else the registry asset id."""
        if not self.traits.runs_here:
            return model.asset_id
        if path is not None:
            return str(path)
        return f"models:/{model.name}/{model.version}" if model.version else f"models:/{model.name}"

    def ensure_compute(self, section: ComputeSection, validator: ComputeValidator) -> ComputeCheck | None:
        """Check a scripted cluster of ``section.size`` with :attr:`gpus_per_node` (``None`` without a cluster)."""
        self._script.enter("ensure_compute", section)
        if not self.traits.trains_on_cluster:
            return None
        size = section.size or "Standard_ND40rs_v2"
        cluster = ClusterInfo(name=section.cluster, size=size, max_instances=section.max_instances)
        return validator.check(cluster, [VmSize(size, gpus=self.gpus_per_node)])

    def upload_data(self, files: Mapping[str, Path | str], *, name_prefix: str) -> dict[str, str]:
        """Return a ``scripted://`` URI per file, named by its content hash (a missing file is a ValidationError)."""
        self._script.enter("upload_data", dict(files))
        out: dict[str, str] = {}
        problems: list[Problem] = []
        for key, value in files.items():
            path = Path(value)
            if not path.is_file():
                problems.append(Problem(key, f"{path} does not exist"))
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
            out[key] = f"scripted://{name_prefix}-{key}/{digest}/{path.name}"
        if problems:
            raise ValidationError(problems, "data files that cannot be uploaded")
        return out

    def submit_finetune(self, request: FinetuneRequest) -> JobHandle:
        """Start a scripted job named after the plan's display name."""
        self._script.enter("submit_finetune", request)
        name = f"{request.plan.display_name}-{len(self.jobs) + 1}"
        self.jobs[name] = list(self.job_statuses)
        return JobHandle(name=name, status="NotStarted", display_name=request.plan.display_name, backend=self.name)

    def get_job(self, name: str) -> JobHandle:
        """Return the job's next scripted state (the last one repeats)."""
        self._script.enter("get_job", name)
        states = self.jobs.get(name)
        if states is None:
            raise NotFoundError(f"job {name!r} not found", operation="get_job")
        status = states.pop(0) if len(states) > 1 else states[0]
        error = self.job_error if status == "Failed" else None
        return JobHandle(name=name, status=status, backend=self.name, error=error)

    def cancel_job(self, name: str) -> None:
        """End the job ``Canceled`` (no error when it has finished)."""
        self._script.enter("cancel_job", name)
        states = self.jobs.get(name)
        if states is not None and states[0] not in ("Completed", "Failed", "Canceled"):
            self.jobs[name] = ["Canceled"]

    def read_metrics(self, job: JobHandle) -> MetricsTable:
        """Return :attr:`metrics` for the job."""
        self._script.enter("read_metrics", job)
        return MetricsTable(run_id=job.name, points=self.metrics)

    def register_model(self, request: RegisterRequest) -> RegisteredModel:
        """Register the job's model (again from the same job: the same model; from another: ConflictError)."""
        self._script.enter("register_model", request)
        key = (request.name, request.version)
        existing = self.registered.get(key)
        if existing is not None:
            if existing.tags.get("ftkit.finetune_job") != request.job.name:
                raise ConflictError(f"model {request.name}:{request.version} exists", operation="register_model")
            return existing
        model = RegisteredModel(
            name=request.name,
            version=request.version,
            id=f"models:/{request.name}/{request.version}",
            tags={**request.tags, "ftkit.finetune_job": request.job.name},
        )
        self.registered[key] = model
        return model

    def get_model(self, name: str, version: str | None = None) -> RegisteredModel:
        """Return a model :meth:`register_model` registered (the highest version without ``version``)."""
        self._script.enter("get_model", (name, version))
        found = [m for (n, v), m in self.registered.items() if n == name and version in (None, v)]
        if not found:
            have = ", ".join(f"{n}:{v}" for n, v in self.registered) or "none"
            raise NotFoundError(
                f"model {name}:{version or 'latest'} not found; registered: {have}", operation="get_model"
            )
        return max(found, key=lambda m: m.version)

    def log_evaluation(self, job: JobHandle, metrics: Mapping[str, float], files: Sequence[Path]) -> bool:
        """Record the call (see :meth:`requests`); nothing is stored."""
        self._script.enter("log_evaluation", {"job": job.name, "metrics": dict(metrics), "files": list(files)})
        return True

    def heldout_losses(
        self, model: RegisteredModel, conversations: Sequence[Sequence[Mapping[str, Any]]]
    ) -> list[tuple[float, int]] | None:
        """Return :attr:`losses` ``(model, conversations)``, or ``None`` (not measured) when it is unset."""
        self._script.enter("heldout_losses", {"model": model.id, "conversations": len(conversations)})
        return None if self.losses is None else self.losses(model, conversations)


def _falling_loss() -> tuple[MetricPoint, ...]:
    return (*(MetricPoint("loss", step, 2.0 / step) for step in range(1, 6)), MetricPoint("eval_loss", 5, 0.5))
