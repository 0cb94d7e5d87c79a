"""The backend protocol and the values that cross it.

A backend offers a few coarse, typed operations. It takes and returns ftkit values (never SDK entities),
raises only ftkit errors, and owns its retries (see :mod:`ftkit.retry`). Operations are idempotent where
the service allows it: deleting something that is gone is not an error.

Backends are asked, never named. Where the flow differs by backend (whether an interrupted run stops its job,
how a cleanup command is spelled, whether compute is a cluster, what a dry run shows), the runner, the plan,
the checks and the CLI ask, in one of two places:

* the backend object, for what needs it: its operations, :meth:`Backend.get_model`, :meth:`Backend.model_id`;
* its :class:`~ftkit.backends.traits.BackendTraits` (:attr:`Backend.traits`, or
  :func:`~ftkit.backends.traits.backend_traits` by name), for what must be known before one exists, without
  credentials: ``ftkit validate``, ``ftkit run --dry-run``, the job file's checks. A frozen value, one per
  backend, so the answers cannot drift between the object and the name.

A test (``tests/core/test_backend_names.py``) reads every module outside ``ftkit/backends/`` and fails on any
comparison with a backend's name. Adding a backend means implementing :class:`Backend` and registering its
factory (``BACKENDS``) and its traits (``TRAITS``); nothing above the backends changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

from ..component import ComponentSchema
from ..compute import ComputeCheck, ComputeValidator
from ..deployment_settings import DeploymentSettings, ServerSettings
from ..jobfile import ComputeSection
from ..model import FoundationModelRef
from ..plan import RunPlan
from .traits import BackendTraits

__all__ = [
    "FAILED_JOB_STATES",
    "TERMINAL_JOB_STATES",
    "Backend",
    "DeploymentInfo",
    "DeploymentSpec",
    "EndpointInfo",
    "EndpointKeys",
    "EndpointSpec",
    "Endpoints",
    "FinetuneRequest",
    "JobHandle",
    "MetricPoint",
    "MetricsTable",
    "RegisterRequest",
    "RegisteredModel",
]

TERMINAL_JOB_STATES = frozenset({"Completed", "Failed", "Canceled", "NotResponding"})
FAILED_JOB_STATES = frozenset({"Failed", "Canceled", "NotResponding"})


@attrs.frozen(kw_only=True)
class FinetuneRequest:
    """Everything a backend needs to start one fine-tuning job: the checked plan and what the runner resolved.

    The backend reads the plan's typed values (:attr:`RunPlan.spec`, :attr:`RunPlan.parameters`, names,
    model); it never reads or plans the job file again.

    Attributes:
        plan: The checked plan (:func:`~ftkit.plan.plan_run`, once per run).
        compute: The checked compute (cluster and GPUs per node); ``None`` for the local backend.
        train_data: The training data as the backend can read it (an uploaded URI, or a local path).
        test_data: The test data as the backend can read it.
    """

    plan: RunPlan
    compute: ComputeCheck | None
    train_data: str
    test_data: str


@attrs.frozen(kw_only=True)
class JobHandle:
    """A submitted (or finished) fine-tuning job.

    Attributes:
        name: The job's name (its id in the backend).
        status: ``NotStarted``, ``Queued``, ``Running``, ``Completed``, ``Failed``, ``Canceled``...
        display_name: The display name.
        experiment_name: The experiment.
        studio_url: Where to watch it (Azure ML Studio or the local MLflow UI), if any.
        backend: The backend's name.
        error: The failure message, when ``status`` is a failure.
        progress: What the job is doing now (``step 40: loss 0.4312, 12,900 tokens/s``), where the backend
            knows.
    """

    name: str
    status: str
    display_name: str | None = None
    experiment_name: str | None = None
    studio_url: str | None = None
    backend: str = "local"
    error: str | None = None
    progress: str | None = None

    @property
    def is_terminal(self) -> bool:
        """Whether the job has finished, one way or the other."""
        return self.status in TERMINAL_JOB_STATES

    @property
    def is_failed(self) -> bool:
        """Whether the job ended Failed, Canceled or NotResponding."""
        return self.status in FAILED_JOB_STATES


@attrs.frozen
class MetricPoint:
    """One logged value of one metric.

    Attributes:
        key: The metric (``loss``, ``eval_loss``, ``learning_rate``, ``grad_norm``, ``tokens_per_second``...).
        step: The training step.
        value: The value.
        timestamp_ms: When it was logged, if known.
    """

    key: str
    step: int
    value: float
    timestamp_ms: int | None = None


@attrs.frozen
class MetricsTable:
    """A run's metrics, by key and step.

    Attributes:
        run_id: The run the metrics belong to.
        points: Every logged point, ordered by key then step.
    """

    run_id: str
    points: tuple[MetricPoint, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        """The metrics present, sorted."""
        return tuple(sorted({p.key for p in self.points}))

    def series(self, key: str) -> tuple[tuple[int, float], ...]:
        """Return ``(step, value)`` pairs of one metric, by step."""
        return tuple(sorted((p.step, p.value) for p in self.points if p.key == key))

    def last(self, key: str) -> float | None:
        """Return the metric's value at its last step, or ``None`` if it was never logged."""
        s = self.series(key)
        return s[-1][1] if s else None

    def to_pandas(self) -> Any:
        """Return the metrics as a pandas DataFrame: one row per step, one column per metric.

        pandas comes with the core install (through ``datasets``); it is imported only here.

        Returns:
            A DataFrame indexed by ``step`` with columns sorted by name (missing values are NaN).
        """
        import pandas as pd

        frame = pd.DataFrame(
            [{"step": p.step, "key": p.key, "value": p.value} for p in self.points], columns=["step", "key", "value"]
        )
        # A metric logged twice at one step (a resumed run) keeps the last value logged.
        table = frame.pivot_table(index="step", columns="key", values="value", aggfunc="last")
        table.columns.name = None
        return table.reindex(sorted(table.columns), axis=1)


@attrs.frozen(kw_only=True)
class RegisterRequest:
    """Register a job's output as a model.

    Attributes:
        job: The finished job.
        name: The registered model's name.
        version: Its version.
        description: Its description.
        tags: Lineage tags (job, base model and version, data files and hashes, parameters).
    """

    job: JobHandle
    name: str
    version: str
    description: str = ""
    tags: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class RegisteredModel:
    """A model in the backend's registry.

    Attributes:
        name: Its name.
        version: Its version.
        id: Its id as deployments reference it (``azureml:...`` or ``models:/name/version``).
        tags: Its tags.
        path: Where its files are, if local.
    """

    name: str
    version: str
    id: str
    tags: Mapping[str, str] = attrs.field(factory=dict)
    path: Path | None = None


@attrs.frozen(kw_only=True)
class EndpointSpec:
    """An online endpoint to create.

    Attributes:
        name: The endpoint's name.
        description: Its description.
        auth_mode: ``key`` (the only mode ftkit uses).
        tags: Tags (ftkit tags everything it creates, for ``ftkit cleanup``).
        server: The local endpoint server's settings (``None``: the backend's own; Azure ML has no use for them).
    """

    name: str
    description: str = ""
    auth_mode: Literal["key"] = "key"
    tags: Mapping[str, str] = attrs.field(factory=dict)
    server: ServerSettings | None = None


@attrs.frozen(kw_only=True)
class DeploymentSpec:
    """A deployment of a registered model behind an endpoint.

    Attributes:
        name: The deployment's name (``demo``, ``blue``, ``green``...).
        endpoint: The endpoint's name.
        model: The model to serve.
        settings: How it serves (instance type and count, timeouts, concurrency, queue, batch size).
    """

    name: str
    endpoint: str
    model: RegisteredModel
    settings: DeploymentSettings = attrs.field(factory=DeploymentSettings)


@attrs.frozen(kw_only=True)
class DeploymentInfo:
    """A deployment as the backend reports it.

    Attributes:
        name: Its name.
        endpoint: Its endpoint.
        provisioning_state: ``Creating``, ``Succeeded``, ``Failed``...
        model_id: The model it serves.
        instance_type: Its VM size.
    """

    name: str
    endpoint: str
    provisioning_state: str
    model_id: str | None = None
    instance_type: str | None = None


@attrs.frozen(kw_only=True)
class EndpointInfo:
    """An endpoint as the backend reports it.

    Attributes:
        name: Its name.
        scoring_uri: Where to POST scoring requests.
        provisioning_state: ``Creating``, ``Succeeded``, ``Failed``...
        traffic: Deployment name to percent of traffic.
        deployments: Its deployments' names.
        openai_uri: The OpenAI-compatible chat completions URL, where the backend serves one.
        tags: Its tags.
    """

    name: str
    scoring_uri: str
    provisioning_state: str = "Succeeded"
    traffic: Mapping[str, int] = attrs.field(factory=dict)
    deployments: tuple[str, ...] = ()
    openai_uri: str | None = None
    tags: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class EndpointKeys:
    """An endpoint's two keys. Never printed: the repr hides them.

    Attributes:
        primary: The primary key.
        secondary: The secondary key.
    """

    primary: str = attrs.field(repr=False)
    secondary: str = attrs.field(repr=False)


StatusCallback = Callable[[JobHandle], None]


@runtime_checkable
class Endpoints(Protocol):
    """Online endpoints and their deployments: the half of :class:`Backend` that serves models.

    Each backend keeps these in an object of its own (Azure ML's operations, the local server processes),
    its :attr:`Backend.endpoints`.
    """

    def create_endpoint(self, spec: EndpointSpec) -> EndpointInfo:
        """Create (or update) an online endpoint with key auth and wait until it is ready."""
        ...

    def create_deployment(self, spec: DeploymentSpec) -> DeploymentInfo:
        """Create (or update) a deployment and wait until it serves; raise with its logs if it fails."""
        ...

    def set_traffic(self, endpoint: str, traffic: Mapping[str, int]) -> EndpointInfo:
        """Route traffic between an endpoint's deployments (percentages summing to 100 or 0)."""
        ...

    def get_endpoint(self, name: str) -> EndpointInfo:
        """Return the endpoint (:class:`~ftkit.exceptions.NotFoundError` if absent)."""
        ...

    def list_endpoints(self) -> list[EndpointInfo]:
        """Return the endpoints ftkit created."""
        ...

    def get_keys(self, endpoint: str) -> EndpointKeys:
        """Return the endpoint's keys."""
        ...

    def regenerate_key(self, endpoint: str, which: Literal["primary", "secondary"]) -> EndpointKeys:
        """Replace one of the endpoint's keys; returns both."""
        ...

    def score(
        self,
        endpoint: str,
        body: Mapping[str, Any],
        *,
        deployment: str | None = None,
        timeout_s: float = 90.0,
    ) -> Any:
        """POST ``body`` to the endpoint's scoring URI with its key (naming ``deployment`` when given)."""
        ...

    def get_logs(self, endpoint: str, deployment: str, *, lines: int = 200) -> str:
        """Return the last lines of the deployment's container logs."""
        ...

    def delete_deployment(self, endpoint: str, deployment: str) -> None:
        """Delete a deployment (no error if it is gone)."""
        ...

    def delete_endpoint(self, name: str) -> None:
        """Delete an endpoint and its deployments and wait until they are gone (no error if already gone)."""
        ...


@runtime_checkable
class Backend(Protocol):
    """The operations a run needs from a service (Azure ML) or from this machine.

    The endpoint half is the :attr:`endpoints` object (an :class:`Endpoints`). Every method raises only
    :class:`~ftkit.exceptions.FtkitError` subclasses.
    """

    name: str

    @property
    def traits(self) -> BackendTraits:
        """What differs about this backend (the same value :func:`~ftkit.backends.traits.backend_traits` gives)."""
        ...

    @property
    def endpoints(self) -> Endpoints:
        """The backend's online endpoints and deployments."""
        ...

    def component_schema(self, name: str, version: str) -> ComponentSchema:
        """Return the declared inputs of the pinned component, as the service will check them (the plan's schema)."""
        ...

    def resolve_model(self, ref: FoundationModelRef) -> FoundationModelRef:
        """Pin ``ref`` to a concrete version and read its tags (:class:`~ftkit.exceptions.NotFoundError` if absent)."""
        ...

    def model_id(self, model: FoundationModelRef, *, path: Path | None = None) -> str:
        """Return how this backend names the base model (``run.json``'s ``model.id``).

        Args:
            model: The resolved base model.
            path: Its directory, where the job gives one (``model.path``).
        """
        ...

    def ensure_compute(self, section: ComputeSection, validator: ComputeValidator) -> ComputeCheck | None:
        """Get or create the training compute and check it; ``None`` where there is no cluster (local)."""
        ...

    def upload_data(self, files: Mapping[str, Path | str], *, name_prefix: str) -> dict[str, str]:
        """Make data files reachable by the job; returns the same keys mapped to URIs the job can read."""
        ...

    def submit_finetune(self, request: FinetuneRequest) -> JobHandle:
        """Start a fine-tuning job and return at once with its handle."""
        ...

    def get_job(self, name: str) -> JobHandle:
        """Return the job's current state (:class:`~ftkit.exceptions.NotFoundError` if unknown)."""
        ...

    def cancel_job(self, name: str) -> None:
        """Ask the job to stop (no error when it has already finished)."""
        ...

    def read_metrics(self, job: JobHandle) -> MetricsTable:
        """Return the training and evaluation metrics the job logged."""
        ...

    def register_model(self, request: RegisterRequest) -> RegisteredModel:
        """Register the job's trained model with lineage tags."""
        ...

    def get_model(self, name: str, version: str | None = None) -> RegisteredModel:
        """Return a model of the backend's registry (the latest version when ``version`` is ``None``).

        Raises:
            NotFoundError: No such model or version.
        """
        ...

    def log_evaluation(self, job: JobHandle, metrics: Mapping[str, float], files: Sequence[Path]) -> bool:
        """Add an evaluation's metrics and report files to the fine-tuning job's tracked run.

        Returns:
            Whether they were logged (``False`` where this backend has no run to log them to).
        """
        ...

    def heldout_losses(
        self, model: RegisteredModel, conversations: Sequence[Sequence[Mapping[str, Any]]]
    ) -> list[tuple[float, int]] | None:
        """Held-out loss of ``model`` per conversation, with training's masking.

        Returns:
            ``(summed negative log-likelihood of the assistant tokens, their count)`` per conversation, or
            ``None`` where this backend cannot compute it (Azure ML's endpoints serve generations only).
        """
        ...
