"""`AzureMLBackend`: the :class:`~ftkit.backends.base.Backend` protocol on an Azure ML workspace.

Every method takes and returns ftkit values, raises only ftkit errors (through
:func:`~ftkit.backends.azureml.errors.map_azure_errors`), and wraps each service call in
:func:`ftkit.retry.call` (the MLClients do not retry themselves).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import attrs

from ... import retry
from ...component import ComponentSchema
from ...compute import ClusterInfo, ComputeCheck, ComputeValidator, VmSize
from ...exceptions import (
    BackendError,
    NotFoundError,
    Problem,
    QuotaError,
    ValidationError,
)
from ...hashing import sha256_file
from ...jobfile import ComputeSection
from ...model import FoundationModelRef
from ..base import (
    FinetuneRequest,
    JobHandle,
    MetricsTable,
    RegisteredModel,
    RegisterRequest,
)
from ..traits import TRAITS
from . import jobs as _jobs
from . import metrics as _metrics
from .connection import AzureMLConnection, WorkspaceRef
from .endpoints import EndpointOperations
from .errors import map_azure_errors
from .pipeline import build_pipeline_job
from .tags import CREATED_BY_TAG

__all__ = ["AzureMLBackend", "DatastoreUploader", "Uploader"]

T = TypeVar("T")
FINETUNE_JOB_TAG = "ftkit.finetune_job"


class Uploader(Protocol):
    """Uploads one local file to the workspace's default datastore and returns its ``azureml://`` URI."""

    def __call__(self, path: Path, destination: str) -> str:
        """Upload ``path`` to ``destination`` (a path inside the datastore); return the datastore URI."""
        ...


class DatastoreUploader:
    """The real uploader: azure-ai-ml's own datastore upload (the one ``jobs.create_or_update`` uses).

    It writes to the workspace's default blob datastore through ``azure-storage-blob``, with the datastore's
    credentials or your identity; this traffic does not go through the MLClient's transport, which is why the
    backend takes an injectable uploader (``FakeAzureML.upload`` in tests). azure-storage-blob retries each of
    its requests (at most 4 attempts), so the backend does not retry an upload again.

    Args:
        connection: The workspace connection.
    """

    def __init__(self, connection: AzureMLConnection) -> None:
        self._connection = connection

    def __call__(self, path: Path, destination: str) -> str:
        """Upload ``path``; azure-ai-ml picks the blob path (``LocalUpload/<hash>/...``), ``destination`` is a hint."""
        upload = private_upload_function()
        del destination
        ml = self._connection.ml_client
        with map_azure_errors("upload_data", resource=f"file {path}"):
            return str(
                upload(
                    ml._operation_scope, ml.datastores, path, datastore_name="workspaceblobstore", show_progress=False
                )
            )


# The private azure-ai-ml function DatastoreUploader calls, and the keyword arguments it passes. Private names
# may change in any release: pyproject.toml bounds azure-ai-ml to the tested major, and this check turns a
# change inside it into a clear error instead of an AttributeError or TypeError halfway through a run.
PRIVATE_UPLOAD = ("azure.ai.ml._artifacts._artifact_utilities", "_upload_and_generate_remote_uri")
PRIVATE_UPLOAD_KEYWORDS = ("datastore_name", "show_progress")


def private_upload_function() -> Callable[..., Any]:
    """Return azure-ai-ml's datastore upload function, checked to take the arguments ftkit passes.

    Raises:
        BackendError: The installed azure-ai-ml no longer has it (or changed its parameters); names the version.
    """
    import importlib
    import inspect
    from importlib.metadata import version

    module_name, attr = PRIVATE_UPLOAD
    try:
        function: Callable[..., Any] = getattr(importlib.import_module(module_name), attr)
        parameters = inspect.signature(function).parameters
    except (ImportError, AttributeError, TypeError, ValueError):
        parameters = None
    missing = [k for k in PRIVATE_UPLOAD_KEYWORDS if parameters is None or k not in parameters]
    if missing:
        raise BackendError(
            f"azure-ai-ml {version('azure-ai-ml')} changed {module_name}.{attr}, which ftkit uses to upload data "
            f"({'missing' if parameters is None else 'no ' + ', '.join(missing)}); install the range ftkit "
            "supports (pip install 'azure-ai-ml>=1.35,<2') or pass data.train_file/test_file as azureml:// URIs",
            operation="upload_data",
        )
    return function


class AzureMLBackend:
    """Azure ML through azure-ai-ml: registry models and components, compute, data, jobs, endpoints.

    The workspace comes from the explicit ids, else environment variables, else ``config.json`` (see
    :class:`~ftkit.backends.azureml.connection.WorkspaceRef`). Nothing is contacted until the first call.

    Args:
        subscription_id: The workspace's subscription.
        resource_group: Its resource group.
        workspace_name: Its name.
        config_path: A ``config.json`` (or the directory holding one).
        credential: A token credential (default: ``DefaultAzureCredential``; see ``interactive``).
        transport: An azure-core transport for every request (``FakeAzureML().transport`` in tests).
        interactive: Allow the interactive browser login (only in a terminal, never in CI).
        uploader: How local data files reach the datastore (default: :class:`DatastoreUploader`).
        connection: A ready connection, instead of the settings above.
        lro_timeout_s: Deadline for one long-running operation (endpoint/deployment create, delete).

    Waiting for a job is :func:`ftkit.waiting.wait_for_job` over :meth:`get_job` (the runner's one loop).
    """

    name = "azureml"
    traits = TRAITS["azureml"]

    def __init__(
        self,
        *,
        subscription_id: str | None = None,
        resource_group: str | None = None,
        workspace_name: str | None = None,
        config_path: str | Path | None = None,
        credential: Any = None,
        transport: Any = None,
        interactive: bool = False,
        uploader: Uploader | None = None,
        connection: AzureMLConnection | None = None,
        lro_timeout_s: float = 3600.0,
    ) -> None:
        if connection is None:
            workspace = WorkspaceRef.resolve(
                subscription_id=subscription_id,
                resource_group=resource_group,
                workspace_name=workspace_name,
                config_path=config_path,
            )
            connection = AzureMLConnection(
                workspace, credential=credential, transport=transport, interactive=interactive
            )
        self.connection = connection
        self.uploader: Uploader = uploader if uploader is not None else DatastoreUploader(connection)
        self._endpoint_ops = EndpointOperations(connection, lro_timeout_s=lro_timeout_s)
        self.lro_timeout_s = lro_timeout_s
        # Fetched by component_schema (the plan's schema) and reused by submit_finetune to build the job.
        self._components: dict[tuple[str, str], Any] = {}

    @property
    def ml_client(self) -> Any:
        """The workspace ``MLClient`` (for what ftkit does not wrap)."""
        return self.connection.ml_client

    def _call(self, operation: str, fn: Callable[[], T], *, resource: str | None = None) -> T:
        def attempt() -> T:
            with map_azure_errors(operation, resource=resource):
                return fn()

        return retry.call(attempt)

    # ------------------------------------------------------------------ model

    def resolve_model(self, ref: FoundationModelRef) -> FoundationModelRef:
        """Pin ``ref`` to a version in its registry and read its tags.

        Raises:
            NotFoundError: The registry has no such model (or version/label).
        """
        registry = self.connection.registry(ref.registry)
        where = f"model {ref.name} in registry {ref.registry}"
        if ref.version is not None:
            model = self._call(
                "resolve_model", lambda: registry.models.get(ref.name, version=ref.version), resource=where
            )
        else:
            model = self._call("resolve_model", lambda: registry.models.get(ref.name, label=ref.label), resource=where)
        return ref.resolved(str(model.version), {str(k): str(v) for k, v in (model.tags or {}).items()})

    def model_id(self, model: FoundationModelRef, *, path: Path | None = None) -> str:  # noqa: ARG002 - the protocol's
        """The registry asset id (``azureml://registries/.../models/NAME/versions/V``); jobs give no directory."""
        return model.asset_id

    def get_model(self, name: str, version: str | None = None) -> RegisteredModel:
        """Return a model of the workspace's registry (``ml_client.models.get``; the ``latest`` label without version).

        Raises:
            NotFoundError: The workspace has no such model or version.
        """
        ml = self.ml_client
        where = f"model {name}:{version or 'latest'}"
        if version is not None:
            model = self._call("get_model", lambda: ml.models.get(name, version=version), resource=where)
        else:
            model = self._call("get_model", lambda: ml.models.get(name, label="latest"), resource=where)
        return _registered(model)

    # ------------------------------------------------------------------ compute

    def list_sizes(self) -> list[VmSize]:
        """Return the VM sizes the workspace's region offers."""
        ml = self.ml_client
        sizes = self._call("list_sizes", lambda: list(ml.compute.list_sizes()))
        return [
            VmSize(
                name=str(s.name),
                gpus=int(s.gpus or 0),
                vcpus=int(s.vcpus) if getattr(s, "vcpus", None) is not None else None,
                memory_gb=float(s.memory_gb) if getattr(s, "memory_gb", None) is not None else None,
            )
            for s in sizes
        ]

    def describe_compute(self, name: str) -> ClusterInfo:
        """Return the cluster called ``name`` (:class:`~ftkit.exceptions.NotFoundError` if absent)."""
        ml = self.ml_client
        compute = self._call("get_compute", lambda: ml.compute.get(name), resource=f"compute {name}")
        return _cluster_info(compute)

    def _create_compute(self, section: ComputeSection, size: str, tier: str) -> ClusterInfo:
        from azure.ai.ml.entities import AmlCompute

        cluster = AmlCompute(
            name=section.cluster,
            size=size,
            tier=tier,
            min_instances=section.min_instances,
            max_instances=section.max_instances,
            tags={CREATED_BY_TAG: "ftkit"},
        )
        ml = self.ml_client
        where = f"compute {section.cluster}"
        poller = self._call("create_compute", lambda: ml.compute.begin_create_or_update(cluster), resource=where)
        with map_azure_errors("create_compute", polling=True, resource=where):
            created = poller.result(timeout=self.lro_timeout_s)
        if not getattr(created, "size", None):
            # azure-ai-ml before ~1.27 can hand back the operation's final body as an "unsupported compute"
            # without its size; the cluster itself is fine, so read it back as it now stands.
            created = self._call("get_compute", lambda: ml.compute.get(section.cluster), resource=where)
        return _cluster_info(created)

    def ensure_compute(self, section: ComputeSection, validator: ComputeValidator) -> ComputeCheck:
        """Get the cluster, or create it (dedicated, then low priority as the notebook does), then check it.

        Raises:
            NotFoundError: It does not exist and the job file gives no ``size`` to create it; lists the clusters.
            QuotaError: Creation failed for quota in every tier tried.
            ComputeValidationError: The cluster cannot run the job (allow-list, SKU list, failed provisioning).
        """
        try:
            cluster = self.describe_compute(section.cluster)
        except NotFoundError:
            if section.size is None:
                ml = self.ml_client
                names = self._call("list_computes", lambda: sorted(c.name for c in ml.compute.list()))
                raise NotFoundError(
                    f"compute {section.cluster} does not exist and compute.size is not set, so ftkit cannot create "
                    f"it; clusters in this workspace: {', '.join(names) or 'none'}",
                    operation="ensure_compute",
                ) from None
            tiers = ["dedicated", "low_priority"] if section.tier == "dedicated" else ["low_priority"]
            if not section.low_priority_fallback:
                tiers = tiers[:1]
            failures: list[BackendError] = []
            created: ClusterInfo | None = None
            for tier in tiers:
                try:
                    created = self._create_compute(section, section.size, tier)
                    break
                except BackendError as exc:
                    if isinstance(exc, NotFoundError):
                        raise
                    failures.append(exc)
            if created is None:
                last = failures[-1]
                summary = "; ".join(f"{t}: {e}" for t, e in zip(tiers, failures, strict=False))
                cls = QuotaError if all(isinstance(e, QuotaError) for e in failures) else BackendError
                raise cls(
                    f"cannot create compute {section.cluster} ({section.size}): {summary}",
                    operation="ensure_compute",
                    status_code=last.status_code,
                    code=last.code,
                ) from last
            cluster = created
        return validator.check(cluster, self.list_sizes())

    # ------------------------------------------------------------------ data

    def upload_data(self, files: Mapping[str, Path | str], *, name_prefix: str) -> dict[str, str]:
        """Register local JSONL files as ``uri_file`` data assets; pass URIs and assets through.

        A local file becomes data asset ``{name_prefix}-{key}`` whose version is the file's content hash, so
        uploading the same file again reuses the asset instead of creating a duplicate. ``azureml://`` URIs,
        ``https://`` URLs and ``azureml:name:version`` references are returned unchanged.

        Returns:
            The same keys mapped to ``azureml:name:version`` references (or the URIs given).
        """
        out: dict[str, str] = {}
        for key, value in files.items():
            text = str(value)
            if "://" in text or text.startswith("azureml:"):
                out[key] = text
                continue
            path = Path(text)
            if not path.is_file():
                raise ValidationError(
                    [Problem(f"data.{key}", f"no such file: {path}", "build the data first or give an azureml:// URI")]
                )
            digest = sha256_file(path)
            name = re.sub(r"[^A-Za-z0-9_-]+", "-", f"{name_prefix}-{key}").strip("-")[:250]
            out[key] = self._ensure_data(path, name, digest[:16], digest)
        return out

    def _ensure_data(self, path: Path, name: str, version: str, digest: str) -> str:
        """Strictly private: register ``path`` as data asset ``name:version`` unless it exists already."""
        from azure.ai.ml.entities import Data

        ml = self.ml_client
        where = f"data {name}:{version}"
        try:
            self._call("get_data", lambda: ml.data.get(name, version=version), resource=where)
        except NotFoundError:
            destination = f"ftkit/{name}/{version}/{path.name}"
            # Not wrapped in retry.call: azure-storage-blob retries each blob request itself (3 retries, and
            # azure-ai-ml gives no way to turn that off), so a second layer here would allow 16 attempts.
            uri = self.uploader(path, destination)
            asset = Data(
                name=name,
                version=version,
                type="uri_file",
                path=uri,
                description=f"{path.name} uploaded by ftkit",
                tags={CREATED_BY_TAG: "ftkit", "sha256": digest, "source_file": path.name},
            )
            self._call("upload_data", lambda: ml.data.create_or_update(asset), resource=where)
        return f"azureml:{name}:{version}"

    # ------------------------------------------------------------------ jobs

    def live_schema(self, name: str, version: str, registry: str = "azureml") -> tuple[ComponentSchema, Any]:
        """Fetch the pinned component from the registry; return its schema and the azure-ai-ml component."""
        client = self.connection.registry(registry)
        component = self._call(
            "get_component",
            lambda: client.components.get(name, version=version),
            resource=f"component {name} {version} in registry {registry}",
        )
        inputs = {k: dict(v._to_dict() if hasattr(v, "_to_dict") else v) for k, v in component.inputs.items()}
        outputs = {k: str(getattr(v, "type", "") or "") for k, v in (component.outputs or {}).items()}
        schema = ComponentSchema.from_input_dicts(
            str(component.name), str(component.version), inputs, outputs, source=str(component.id)
        )
        return schema, component

    def component_schema(self, name: str, version: str) -> ComponentSchema:
        """Return the live registry component's declared inputs (the schema the runner plans with).

        Raises:
            NotFoundError: The pinned version is not in the registry.
        """
        schema, component = self.live_schema(name, version)
        self._components[(name, version)] = component
        return schema

    def submit_finetune(self, request: FinetuneRequest) -> JobHandle:
        """Build the pipeline job from the checked plan and submit it (the plan is not made again here).

        Raises:
            ValidationError: No compute was checked.
            NotFoundError: The pinned component version is not in the registry.
        """
        if request.compute is None:
            raise ValidationError(
                [Problem("compute", "the azureml backend needs a checked compute cluster", "run ensure_compute first")]
            )
        plan = request.plan
        key = (plan.schema.name, plan.schema.version)
        component = self._components.get(key)
        if component is None:
            _, component = self.live_schema(*key)
            self._components[key] = component
        job = build_pipeline_job(
            attrs.evolve(plan, train_data=request.train_data, test_data=request.test_data),
            component=component,
            cluster=request.compute.cluster.name,
        )
        # Named before the PUT, so a retried PUT updates the same job instead of starting a second one.
        job.name = _jobs.job_name_for(plan.display_name)
        ml = self.ml_client
        created = self._call(
            "submit_finetune",
            lambda: ml.jobs.create_or_update(job, experiment_name=plan.experiment_name),
            resource=f"job {job.name}",
        )
        return _jobs.handle_from_job(created)

    def get_job(self, name: str) -> JobHandle:
        """Return the job's current state."""
        return _jobs.get_job(self.ml_client, name, connection=self.connection)

    def list_jobs(self, *, max_results: int = 50) -> list[JobHandle]:
        """Return the workspace's most recent jobs (``jobs.list``), newest first.

        Args:
            max_results: How many to read at most.
        """
        import itertools

        ml = self.ml_client

        def read() -> list[JobHandle]:
            return [_jobs.handle_from_job(j) for j in itertools.islice(ml.jobs.list(), max_results)]

        return self._call("list_jobs", read)

    def cancel_job(self, name: str) -> None:
        """Ask the job to stop; nothing happens when it has already finished."""
        if self.get_job(name).is_terminal:
            return
        ml = self.ml_client
        poller = self._call("cancel_job", lambda: ml.jobs.begin_cancel(name), resource=f"job {name}")
        with map_azure_errors("cancel_job", polling=True, resource=f"job {name}"):
            poller.result(timeout=self.lro_timeout_s)

    def read_metrics(self, job: JobHandle) -> MetricsTable:
        """Read the job's metrics (its root run's MLflow metrics)."""
        return _metrics.read_metrics(self.connection, job.name)

    def log_evaluation(
        self,
        job: JobHandle,  # noqa: ARG002 - the protocol's signature
        metrics: Mapping[str, float],  # noqa: ARG002
        files: Sequence[Path],  # noqa: ARG002
    ) -> bool:
        """``False``: the pipeline's runs are the component's own; the report stays beside ``run.json``."""
        return False

    def heldout_losses(
        self,
        model: RegisteredModel,  # noqa: ARG002 - the protocol's signature
        conversations: Sequence[Sequence[Mapping[str, Any]]],  # noqa: ARG002
    ) -> list[tuple[float, int]] | None:
        """``None``: a managed online endpoint serves generations, not token log-likelihoods.

        The evaluation reports the fine-tuning job's own ``eval_loss`` for the tuned model instead, and says so.
        """
        return None

    # ------------------------------------------------------------------ registration

    def register_model(self, request: RegisterRequest) -> RegisteredModel:
        """Register ``azureml://jobs/{job}/outputs/trained_model`` as an MLflow model with lineage tags.

        Registering the same name and version from the same job again returns the existing model.

        Raises:
            ConflictError: That name and version already hold a different model.
        """
        from azure.ai.ml.entities import Model

        from ...exceptions import ConflictError

        ml = self.ml_client
        path = f"azureml://jobs/{request.job.name}/outputs/trained_model"
        where = f"model {request.name}:{request.version}"
        # The job runner's lineage tags use ``ftkit.job`` for the job file's name; the finetune job is this one.
        tags = {CREATED_BY_TAG: "ftkit", **request.tags, FINETUNE_JOB_TAG: request.job.name}
        with contextlib.suppress(NotFoundError):
            existing = self._call(
                "get_model", lambda: ml.models.get(request.name, version=request.version), resource=where
            )
            if (existing.tags or {}).get(FINETUNE_JOB_TAG) != request.job.name:
                raise ConflictError(
                    f"{where} already exists and was not registered from job {request.job.name}; "
                    "choose another register.version",
                    operation="register_model",
                )
            return _registered(existing)
        model = Model(
            path=path,
            type="mlflow_model",
            name=request.name,
            version=request.version,
            description=request.description,
            tags=tags,
        )
        created = self._call("register_model", lambda: ml.models.create_or_update(model), resource=where)
        return _registered(created)

    @property
    def endpoints(self) -> EndpointOperations:
        """The workspace's online endpoints and deployments (the :class:`~ftkit.backends.base.Endpoints` half)."""
        return self._endpoint_ops


def _cluster_info(compute: Any) -> ClusterInfo:
    errors = tuple(
        str(getattr(getattr(e, "error", e), "message", e))
        for e in (getattr(compute, "provisioning_errors", None) or [])
    )
    state = getattr(compute, "provisioning_state", None)
    tier = getattr(compute, "tier", None)
    return ClusterInfo(
        name=str(compute.name),
        size=str(getattr(compute, "size", "") or ""),
        provisioning_state=str(getattr(state, "value", state) or "Unknown").capitalize(),
        max_instances=getattr(compute, "max_instances", None),
        tier=str(tier).lower() if tier else None,
        errors=errors,
    )


def _registered(model: Any) -> RegisteredModel:
    return RegisteredModel(
        name=str(model.name),
        version=str(model.version),
        id=f"azureml:{model.name}:{model.version}",
        tags={str(k): str(v) for k, v in (model.tags or {}).items()},
    )
