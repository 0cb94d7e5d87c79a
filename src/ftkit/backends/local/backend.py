"""`LocalBackend`: the :class:`~ftkit.backends.base.Backend` protocol on this machine.

Training runs as a background process per job (:mod:`.worker`), tracked in MLflow on SQLite under the ftkit
home (:mod:`.tracking`); models live in MLflow's registry (:mod:`.registry`); endpoints are local HTTP servers
(:mod:`.endpoints`, imported only when an endpoint method is called).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ...component import ComponentSchema
from ...compute import ComputeCheck, ComputeValidator
from ...exceptions import BackendError, ConflictError, NotFoundError, Problem, ValidationError
from ...hashing import sha256_file
from ...home import ftkit_home
from ...interrupts import deferred
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
from . import jobs, registry, tracking
from .distributed import describe, sharding_for
from .spawn import child_env, python_command
from .training import Device, Progress, TrainConfig

if TYPE_CHECKING:
    from .endpoints import LocalEndpoints

__all__ = ["IGNORED_PARAMETERS", "TRAIN_CONFIG_TABLE", "LocalBackend"]


def _same(value: Any) -> Any:
    return value


def _modules(value: Any) -> tuple[str, ...]:
    # `local.lora_target_modules` is one comma-separated string in the job file.
    return tuple(v.strip() for v in str(value).split(",") if v.strip())


# The one table from a plan to a TrainConfig: each parameter the plan may carry (``finetune.*``, already typed
# by the job loader and the component schema) or local-only setting (``local.*``: the job file's section for
# what the component does not declare), to the TrainConfig field it sets and how its value is spelled there;
# ``None``: no meaning on one local device (recorded on the run, not used). Parameters not listed are recorded
# as ignored too.
TRAIN_CONFIG_TABLE: Mapping[str, tuple[str, Callable[[Any], Any]] | None] = {
    "finetune.num_train_epochs": ("num_train_epochs", _same),
    "finetune.max_steps": ("max_steps", _same),
    "finetune.per_device_train_batch_size": ("per_device_train_batch_size", _same),
    "finetune.per_device_eval_batch_size": ("per_device_eval_batch_size", _same),
    "finetune.gradient_accumulation_steps": ("gradient_accumulation_steps", _same),
    "finetune.learning_rate": ("learning_rate", _same),
    "finetune.lr_scheduler_type": ("lr_scheduler_type", _same),
    "finetune.warmup_steps": ("warmup_steps", _same),
    "finetune.weight_decay": ("weight_decay", _same),
    "finetune.max_grad_norm": ("max_grad_norm", _same),
    "finetune.adam_beta1": ("adam_beta1", _same),
    "finetune.adam_beta2": ("adam_beta2", _same),
    "finetune.adam_epsilon": ("adam_epsilon", _same),
    "finetune.max_seq_length": ("max_seq_length", _same),
    "finetune.apply_lora": ("apply_lora", _same),
    "finetune.lora_r": ("lora_r", _same),
    "finetune.lora_alpha": ("lora_alpha", _same),
    "finetune.lora_dropout": ("lora_dropout", _same),
    "finetune.merge_lora_weights": ("merge_lora_weights", _same),
    "finetune.precision": ("precision", str),  # the component's 16/32; TrainConfig also takes "auto"
    "finetune.seed": ("seed", _same),
    "finetune.logging_steps": ("logging_steps", _same),
    "finetune.evaluation_strategy": ("evaluation_strategy", _same),
    "finetune.eval_steps": ("eval_steps", _same),
    "finetune.save_total_limit": ("save_total_limit", _same),
    "finetune.apply_deepspeed": None,
    "finetune.deepspeed_stage": None,
    "finetune.deepspeed": None,
    "finetune.num_nodes_finetune": None,
    "finetune.apply_ort": None,
    "finetune.auto_find_batch_size": None,
    "finetune.dataloader_num_workers": None,
    "finetune.optim": None,
    "finetune.pad_to_max_length": None,
    "finetune.eval_accumulation_steps": None,
    "finetune.enable_full_determinism": None,
    "finetune.logging_strategy": None,
    "finetune.task_name": None,
    "local.save_steps": ("save_steps", _same),
    "local.lora_target_modules": ("lora_target_modules", _modules),
    "local.max_eval_examples": ("max_eval_examples", _same),
    "local.max_tokens_per_micro_batch": ("max_tokens_per_micro_batch", _same),
    "local.gradient_checkpointing": ("gradient_checkpointing", _same),
    "local.gpu_memory_gib": ("gpu_memory_gib", _same),
    "local.torch_compile": ("torch_compile", _same),
    "local.quantize": ("quantize", _same),
}
# Component inputs that have no meaning on one local device; they are recorded on the run, not used.
IGNORED_PARAMETERS = frozenset(k.removeprefix("finetune.") for k, v in TRAIN_CONFIG_TABLE.items() if v is None)


def _started(pid: int) -> float | None:
    """Strictly private: a process's start time (psutil's), ``None`` where it cannot be read."""
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


class LocalBackend:
    """The whole flow on this machine: transformers + peft training, MLflow tracking and registry, local endpoints.

    Constructing one does no I/O and imports neither torch nor fastapi.

    Args:
        home: ftkit's state directory (default ``$FTKIT_HOME`` or ``~/.ftkit``): the MLflow store, jobs, endpoints.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        tracking_uri: Another MLflow tracking URI instead of ``sqlite:///{home}/mlflow.db``.
        background: Train in a background process (``submit_finetune`` returns at once); else in this process.
        progress: How an in-process run shows progress (background runs write plain lines to ``train.log``).
        new_job: Always start a new job, even where an interrupted one of the same request could resume.

    .. versionadded:: 0.1
    """

    name = "local"
    traits = TRAITS["local"]

    def __init__(
        self,
        home: str | Path | None = None,
        device: Device = "auto",
        *,
        tracking_uri: str | None = None,
        background: bool = True,
        progress: Progress = "auto",
        new_job: bool = False,
    ) -> None:
        if device not in ("auto", "cpu", "cuda"):
            raise ValidationError(
                [Problem("local.device", f"unknown device {device!r}", "choose one of: auto, cpu, cuda")]
            )
        self.home = ftkit_home(home).absolute()
        self.device: Device = device
        self.store = tracking.MlflowStore.at(self.home, tracking_uri)
        self.background = background
        self.progress: Progress = progress
        self.new_job = new_job
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._endpoints: LocalEndpoints | None = None

    def __repr__(self) -> str:
        return f"LocalBackend(home={str(self.home)!r}, device={self.device!r})"

    # -- models -------------------------------------------------------------------------------------------

    def resolve_model(self, ref: FoundationModelRef) -> FoundationModelRef:
        """Pin ``ref`` to a version of the local registry and read its tags (``ftkit.path``: its directory).

        A name that is not registered but has a model directory at ``{home}/models/{name}`` is registered
        first (that is where the demo's tiny model goes).

        Raises:
            NotFoundError: No such entry (the message names close ones).
        """
        reference = ref.name if ref.version is None else f"{ref.name}:{ref.version}"
        try:
            found = registry.get_registered(self.store, reference)
        except NotFoundError:
            candidate = self.home / "models" / ref.name
            if ref.version is not None or not (candidate / "config.json").is_file():
                raise
            found = registry.register_model_dir(self.store, ref.name, candidate, {"ftkit.origin": "home/models"})
        return ref.resolved(found.version, found.tags)

    def register_model_dir(self, name: str, path: str | Path, tags: Mapping[str, str] | None = None) -> RegisteredModel:
        """Register a Hugging Face model directory (by reference) in the local registry; see :mod:`.registry`."""
        return registry.register_model_dir(self.store, name, path, tags)

    def get_model(self, name: str, version: str | None = None) -> RegisteredModel:
        """Look up a model in the local registry.

        Args:
            name: Its name; without ``version`` also ``name:version`` or ``models:/name/version``.
            version: Its version, or the version its registration asked for (the ``ftkit.version`` tag).

        Raises:
            NotFoundError: No such model or version (naming close names or the versions there are).
        """
        return registry.get_registered(self.store, name if version is None else f"{name}:{version}")

    def model_id(self, model: FoundationModelRef, *, path: Path | None = None) -> str:
        """The base model's directory when the job gives one, else its registry URI (``models:/name/version``)."""
        if path is not None:
            return str(path)
        return f"models:/{model.name}/{model.version}" if model.version else f"models:/{model.name}"

    # -- compute and data ---------------------------------------------------------------------------------

    def component_schema(self, name: str, version: str) -> ComponentSchema:
        """Return ftkit's bundled snapshot of the component (its inputs are what a local job accepts too).

        Raises:
            ParameterError: ftkit ships no snapshot of that version.
        """
        return ComponentSchema.bundled(name, version)

    def ensure_compute(self, section: ComputeSection, validator: ComputeValidator) -> ComputeCheck | None:  # noqa: ARG002 - the protocol's signature
        """Check the local device (there is no cluster): ``None``, or a ValidationError when CUDA is missing."""
        if self.device == "cuda":
            try:
                import torch
            except ImportError:
                return None
            if not torch.cuda.is_available():
                raise ValidationError(
                    [Problem("local.device", "cuda was asked for but torch sees no CUDA GPU", "use auto or cpu")],
                    "no GPU",
                )
        return None

    def upload_data(self, files: Mapping[str, Path | str], *, name_prefix: str) -> dict[str, str]:  # noqa: ARG002
        """Return the files' absolute local paths (nothing is copied).

        Raises:
            ValidationError: A file is missing or is a remote URI the local backend cannot read.
        """
        problems: list[Problem] = []
        out: dict[str, str] = {}
        for key, value in files.items():
            text = str(value)
            if "://" in text or text.startswith("azureml:"):
                problems.append(Problem(key, f"{text} is a remote URI", "the local backend reads local files only"))
                continue
            path = Path(text).expanduser().absolute()
            if not path.is_file():
                problems.append(Problem(key, f"{path} does not exist", "build the data first (ftkit data)"))
                continue
            out[key] = str(path)
        if problems:
            raise ValidationError(problems, "data files the local backend cannot use")
        return out

    # -- training -----------------------------------------------------------------------------------------

    def model_dir_for(self, request: FinetuneRequest) -> Path:
        """Return the base model directory of a request: ``model.path``, else its local registry entry.

        Raises:
            NotFoundError: The model is neither a directory nor registered.
            ValidationError: The directory is not a model with a tokenizer.
        """
        job, model = request.plan.job, request.plan.model
        if job.model.path:
            return registry.check_hf_dir(job.resolve_path(job.model.path))
        tagged = model.tags.get(registry.PATH_TAG)
        if tagged:
            return registry.check_hf_dir(tagged)
        ref = model.name if model.version is None else f"{model.name}:{model.version}"
        found = registry.get_registered(self.store, ref)
        if found.path is None:
            raise NotFoundError(f"registry entry {found.id} has no local directory", operation="submit_finetune")
        return registry.check_hf_dir(found.path)

    def train_config(
        self, request: FinetuneRequest, *, output_dir: str | Path
    ) -> tuple[TrainConfig, dict[str, object]]:
        """Map a request's parameters onto a :class:`~ftkit.backends.local.training.TrainConfig`.

        Args:
            request: The request.
            output_dir: Where the job writes checkpoints and its model.

        Returns:
            The config, and the parameters that do not apply locally (DeepSpeed, nodes...) with their values.

        Raises:
            ValidationError: Parameters the local backend does not know, or bad values (all listed).
        """
        local = request.plan.job.local
        given = {
            **{f"finetune.{k}": v for k, v in request.plan.spec.parameters().items()},
            **{k: getattr(local, k.removeprefix("local.")) for k in TRAIN_CONFIG_TABLE if k.startswith("local.")},
        }
        kwargs: dict[str, Any] = {}
        ignored: dict[str, object] = {}
        problems: list[Problem] = []
        for key, value in given.items():
            if value is None:
                continue
            row = TRAIN_CONFIG_TABLE.get(key)
            if row is None:
                ignored[key.removeprefix("finetune.")] = value
            else:
                field, spell = row
                kwargs[field] = spell(value)
        processes = self._processes(request)
        if processes > 1:  # several processes: DeepSpeed's settings pick the sharding (see .distributed)
            kwargs["sharding"] = sharding_for(request.plan.spec.parameters())
            for key in ("apply_deepspeed", "deepspeed_stage"):
                ignored.pop(key, None)
        # Caches go under this backend's home, the one the job names, not the worker's default.
        kwargs.setdefault("token_cache_dir", str(self.home / "cache" / "tokens"))
        try:
            config = TrainConfig(
                processes=processes,
                model_dir=str(self.model_dir_for(request)),
                train_file=request.train_data,
                eval_file=request.test_data or None,
                output_dir=str(output_dir),
                device=self.device,
                **kwargs,
            )
        except ValidationError as exc:
            problems.extend(exc.problems)
        except TypeError as exc:
            problems.append(Problem("finetune", str(exc)))
        if problems:
            raise ValidationError(problems, "finetune parameters the local backend cannot use")
        return config, ignored

    def _processes(self, request: FinetuneRequest) -> int:
        """Strictly private: training processes: ``local.processes``, else one per GPU the job asks for."""
        wanted = request.plan.job.local.processes
        if wanted is not None:
            return wanted
        gpus = request.plan.job.compute.gpus_per_node or 1
        if gpus == 1 or self.device == "cpu":
            return 1
        try:
            import torch
        except ImportError:
            return 1
        # compute.gpus_per_node describes an Azure node; on a machine without several GPUs it runs on one device
        return gpus if torch.cuda.is_available() and torch.cuda.device_count() > 1 else 1

    def _fingerprint(self, config: TrainConfig, hashes: Mapping[str, str]) -> str:
        data = {k: v for k, v in attrs.asdict(config).items() if k != "output_dir"}
        data["data"] = dict(hashes)
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:10]

    def submit_finetune(self, request: FinetuneRequest) -> JobHandle:
        """Start (or resume) a local fine-tuning job and return its handle.

        A new job gets a short random name (``ft-k3x9q2``); its fingerprint (base model, parameters, data
        files' hashes) is kept in its record. Submitting a request whose latest job of that fingerprint was
        interrupted (stopped, killed, failed) resumes it from its last checkpoint in the same MLflow run,
        unless the backend was made with ``new_job=True``; a job that completed or is running (in another
        run) leaves this submission a new job of its own. The choice and the claim are made under a lock, so
        two runs at once never take the same job.

        Raises:
            ValidationError: Bad parameters, data or model directory.
            NotFoundError: The base model is not in the local registry.
        """
        files = {"train": Path(request.train_data), "test": Path(request.test_data)}
        missing = [Problem(k, f"{p} does not exist") for k, p in files.items() if not p.is_file()]
        if missing:
            raise ValidationError(missing, "data files the local backend cannot use")
        hashes = {k: sha256_file(p) for k, p in files.items()}
        probe, ignored = self.train_config(request, output_dir="-")
        fingerprint = self._fingerprint(probe, hashes)
        with jobs.locked(self.home):
            if not self.new_job:
                resumable = self._resumable(fingerprint)
                if resumable is not None:
                    folder = jobs.job_dir(self.home, resumable.name)
                    # Claimed under the lock: a concurrent submission sees it Queued and starts its own.
                    claimed = attrs.evolve(resumable, status="Queued", pid=None, error=None)
                    jobs.write_record(folder, claimed)
                    return self._start(folder, claimed)
            name, folder = jobs.claim_job_dir(self.home)
            try:
                record = self._new_record(request, name, folder, probe, ignored, files, hashes, fingerprint)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)  # nothing half-made is left to be resumed
                raise
        return self._start(folder, record)

    def _resumable(self, fingerprint: str) -> jobs.JobRecord | None:
        """Strictly private: the latest job of this fingerprint, if it was interrupted (not completed/running)."""
        same = [r for r in jobs.list_records(self.home) if r.tags.get("ftkit.fingerprint") == fingerprint]
        if not same:
            return None
        current = self._refresh(same[-1])
        return current if current.status in ("Failed", "Canceled") else None

    def _new_record(
        self,
        request: FinetuneRequest,
        name: str,
        folder: Path,
        probe: TrainConfig,
        ignored: Mapping[str, object],
        files: Mapping[str, Path],
        hashes: Mapping[str, str],
        fingerprint: str,
    ) -> jobs.JobRecord:
        """Strictly private: write a new job's config, MLflow run and record."""
        plan = request.plan
        config = attrs.evolve(probe, output_dir=str(folder / "output"))
        (folder / "config.json").write_text(config.to_json(), encoding="utf-8")
        base_ref = f"{plan.model.name}:{plan.model.version}" if plan.model.version else plan.model.name
        tags = {
            "ftkit.job": name,
            "ftkit.backend": "local",
            "ftkit.fingerprint": fingerprint,
            "ftkit.base_model": base_ref,
            "ftkit.base_model_path": config.model_dir,
            "ftkit.data.train": str(files["train"].absolute()),
            "ftkit.data.train.sha256": hashes["train"],
            "ftkit.data.test": str(files["test"].absolute()),
            "ftkit.data.test.sha256": hashes["test"],
            "ftkit.parameters": json.dumps(plan.spec.parameters(), sort_keys=True, default=str)[:5000],
            "ftkit.ignored_parameters": ", ".join(sorted(ignored)),
        }
        if config.processes > 1:
            tags["ftkit.distributed"] = describe(config.sharding, config.processes)
        from mlflow.exceptions import MlflowException

        try:
            logger = tracking.RunLogger.start(self.store, plan.experiment_name, run_name=name, tags=tags)
        except MlflowException as exc:  # e.g. "database or disk is full": one clear error, not a traceback
            raise BackendError(
                f"cannot create the MLflow run of job {name} in {self.store.tracking_uri}: {exc.message}",
                operation="submit_finetune",
            ) from exc
        record = jobs.JobRecord(
            name=name,
            status="Queued",
            display_name=plan.display_name,
            experiment_name=plan.experiment_name,
            run_id=logger.run_id,
            tags=tags,
        )
        try:
            jobs.write_record(folder, record)
        except BaseException:
            with contextlib.suppress(Exception):
                logger.finish("FAILED")  # no run is left RUNNING for a job that never started
            raise
        return record

    def _start(self, folder: Path, record: jobs.JobRecord) -> JobHandle:
        (folder / jobs.CANCEL_FILE).unlink(missing_ok=True)  # an earlier cancel is not this run's
        if not self.background:
            from .worker import run_job

            done = run_job(folder, self.store, progress=self.progress, handle_sigterm=False)
            return self._handle(done)
        record = attrs.evolve(record, status="Queued", error=None)
        jobs.write_record(folder, record)
        log = (folder / "train.log").open("ab")
        # Held signals: the worker's pid must reach job.json, or nothing could stop it later.
        with deferred():
            try:
                proc = subprocess.Popen(
                    python_command(jobs.WORKER_MODULE, str(folder), self.store.tracking_uri),
                    env=child_env(),  # never imports from the caller's directory (see .spawn)
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # Ctrl-C in a terminal or notebook does not reach the training
                )
            finally:
                log.close()
            self._procs[record.name] = proc
            # Its owner: `ftkit cleanup` stops a worker whose owner died (kill -9 of `ftkit run`) as an orphan.
            record = attrs.evolve(record, pid=proc.pid, owner_pid=os.getpid(), owner_started=_started(os.getpid()))
            try:
                jobs.write_record(folder, record)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        return self._handle(record)

    def _refresh(self, record: jobs.JobRecord) -> jobs.JobRecord:
        """Strictly private: a Queued/Running record whose process is gone is Failed."""
        if record.status not in ("Queued", "Running") or record.pid is None:
            return record
        proc = self._procs.get(record.name)
        alive = (
            proc.poll() is None
            if proc is not None and proc.pid == record.pid
            else jobs.worker_alive(record.pid, record.name)
        )
        if alive:
            return record
        again = jobs.read_record(self.home, record.name)  # it may have just finished
        if again.status not in ("Queued", "Running"):
            return again
        # A worker that failed on a full disk could not write job.json (nor, perhaps, train.log): its last words.
        words = jobs.read_last_words(jobs.job_dir(self.home, record.name))
        failed = attrs.evolve(
            again,
            status="Failed",
            pid=None,
            error=words or "the training process exited unexpectedly; see train.log, and submit again to resume",
        )
        with contextlib.suppress(OSError):  # the record on disk is news only; the caller gets `failed`
            jobs.write_record(jobs.job_dir(self.home, record.name), failed)
        if failed.run_id:
            # The worker died without closing its MLflow run; a resubmission reopens it.
            with contextlib.suppress(Exception):
                tracking.RunLogger(self.store, failed.run_id).finish("FAILED")
        return failed

    def _handle(self, record: jobs.JobRecord) -> JobHandle:
        return JobHandle(
            name=record.name,
            status=record.status,
            display_name=record.display_name,
            experiment_name=record.experiment_name,
            studio_url=None,
            backend="local",
            error=record.error,
            progress=record.progress,
        )

    def get_job(self, name: str) -> JobHandle:
        """Return the job's current state.

        Raises:
            NotFoundError: No such job.
        """
        return self._handle(self._refresh(jobs.read_record(self.home, name)))

    def list_jobs(self) -> list[JobHandle]:
        """Return every local job, oldest first; one whose process is gone is reconciled to ``Failed``."""
        return [self._handle(self._refresh(r)) for r in jobs.list_records(self.home)]

    def job_record(self, name: str) -> jobs.JobRecord:
        """Return job ``name``'s full record (pid, attempts, MLflow run, lineage), reconciled like :meth:`get_job`.

        Raises:
            NotFoundError: No such job.
        """
        return self._refresh(jobs.read_record(self.home, name))

    def job_dir(self, name: str) -> Path:
        """Return the job's folder (``config.json``, ``job.json``, ``train.log``, ``output/``)."""
        return jobs.job_dir(self.home, name)

    def cancel_job(self, name: str) -> None:
        """Ask a running job to stop: it writes a checkpoint and ends ``Canceled`` (no error if finished).

        The request is a file in the job's folder, which the worker checks at every step, and a SIGTERM once
        the worker runs (it has its handler by then; a signal during its start-up would kill it outright).
        """
        import os
        import signal

        record = self._refresh(jobs.read_record(self.home, name))
        if record.status not in ("Queued", "Running"):
            return
        (jobs.job_dir(self.home, name) / jobs.CANCEL_FILE).touch()
        if record.status == "Running" and record.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGTERM)

    def read_metrics(self, job: JobHandle) -> MetricsTable:
        """Read the job's metrics back from its MLflow run.

        Raises:
            NotFoundError: No such job or run.
        """
        record = jobs.read_record(self.home, job.name)
        if record.run_id is None:
            raise NotFoundError(f"job {job.name} has no MLflow run", operation="read_metrics")
        return tracking.read_metrics(self.store, record.run_id)

    def run_id(self, job: str) -> str | None:
        """Return the MLflow run id of a job."""
        return jobs.read_record(self.home, job).run_id

    def register_model(self, request: RegisterRequest) -> RegisteredModel:
        """Log the job's model as an MLflow transformers model and register it, with lineage tags.

        Raises:
            ConflictError: The job has not completed.
            NotFoundError: No such job.
        """
        record = self._refresh(jobs.read_record(self.home, request.job.name))
        if record.status != "Completed":
            raise ConflictError(
                f"job {record.name} is {record.status}; only a completed job's model can be registered",
                operation="register_model",
            )
        model_dir = jobs.job_dir(self.home, record.name) / "output" / "model"
        tags = {
            **{k: v for k, v in record.tags.items() if k != "ftkit.job"},
            "ftkit.job": record.name,
            "ftkit.run_id": record.run_id or "",
            registry.REQUESTED_VERSION_TAG: request.version,
            **request.tags,
        }
        return registry.register_trained_model(
            self.store,
            request.name,
            run_id=record.run_id or "",
            model_dir=model_dir,
            tags=tags,
            description=request.description,
        )

    def log_evaluation(self, job: JobHandle, metrics: Mapping[str, float], files: Sequence[Path]) -> bool:
        """Log the evaluation's metrics (step 0) and report files (under ``evaluation/``) to the job's MLflow run."""
        record = jobs.read_record(self.home, job.name)
        if record.run_id is None:
            return False
        logger = tracking.RunLogger(self.store, record.run_id)
        logger.log_metrics(metrics, step=0)
        logger.flush()
        for path in files:
            logger.log_artifact(path, "evaluation")
        return True

    def heldout_losses(
        self, model: RegisteredModel, conversations: Sequence[Sequence[Mapping[str, Any]]]
    ) -> list[tuple[float, int]] | None:
        """Held-out loss of a model with files on this machine (training's masking); ``None`` for one without.

        Raises:
            MissingDependencyError: The ``local`` extra is not installed.
        """
        if model.path is None or not Path(model.path).is_dir():
            return None
        from .heldout import conversation_losses

        return conversation_losses(model.path, conversations, device="cpu" if self.device == "cpu" else "auto")

    # -- endpoints (delegated to the local endpoint server) ------------------------------------------------

    @property
    def endpoints(self) -> LocalEndpoints:
        """The local endpoint manager (created, and fastapi imported, on first use)."""
        if self._endpoints is None:
            from .endpoints import LocalEndpoints

            self._endpoints = LocalEndpoints(self.home)
        return self._endpoints
