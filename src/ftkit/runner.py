"""`JobRunner`: the notebook's whole flow, stage by stage, on any backend.

::

    job file ──► model ──► compute ──► data ──► finetune ──► metrics ──► register ──► deploy ──► score ──► cleanup

Each stage is a call on the :class:`~ftkit.backends.base.Backend` (or on ``ChatDatasetBuilder`` and
``EndpointDeployer``), and each reports a :class:`StageEvent`. Everything the run resolved (model and
component versions, data files and their hashes, parameters, job name, registered model) is written to
``run.json`` in the run directory, and the endpoint is deleted at the end unless ``deploy.keep`` is set,
also when scoring fails.

SIGINT and SIGTERM (see :mod:`ftkit.interrupts`) stop the run where it is: the endpoint it created is
deleted (also one whose server is still starting), a local training job is asked to stop with a checkpoint
(the next run of the same job resumes it), ``run.json`` gets ``status: interrupted`` with what was cleaned
and what is left, and :class:`~ftkit.interrupts.Interrupted` is raised with the same account. A full disk
or another file-system error is reported as one :class:`~ftkit.exceptions.StorageError` naming the stage.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from .backends import backend_for_job
from .backends.base import (
    Backend,
    EndpointInfo,
    FinetuneRequest,
    JobHandle,
    MetricsTable,
    RegisteredModel,
    RegisterRequest,
)
from .base_model import base_registered_model, resolve_base_model
from .compute import ComputeValidator
from .deploy import EndpointDeployer, answer_text
from .exceptions import FtkitError, MissingDependencyError, StorageError, ValidationError
from .hashing import sha256_file
from .home import ftkit_home
from .interrupts import Interrupted, deferred, handle_signals
from .jobfile import JobFile
from .model import FoundationModelRef
from .names import endpoint_name, random_suffix
from .plan import RunPlan, check_job, data_files, plan_run
from .run_evaluation import evaluate_stage, held_out_prompts
from .run_result import STAGES, RunResult, StageEvent
from .waiting import wait_for_job

if TYPE_CHECKING:
    from .evaluation import EvaluationResult, HeldOutPrompt

__all__ = ["STAGES", "JobRunner", "RunResult", "StageEvent", "answer_text", "base_registered_model", "run"]


def _pick_conversation(path: Path, seed: int) -> list[dict[str, str]] | None:
    """Pick one conversation from a JSONL file, reproducibly (the notebook samples without a seed).

    Returns ``None`` when the file has no rows (a small ``percent`` can leave a split empty).
    """
    with path.open(encoding="utf-8") as fh:
        lines = [line for line in fh if line.strip()]
    if not lines:
        return None
    row = json.loads(random.Random(seed).choice(lines))
    messages: list[dict[str, str]] = row["messages"]
    # Ask the model for the next assistant turn: drop a trailing assistant answer.
    if len(messages) > 1 and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    return messages


class JobRunner:
    """Runs one job file end to end on a backend.

    Args:
        job: The job file.
        backend: Where to run; by default the job's ``backend`` with its settings.
        run_dir: Where ``run.json`` and plots go (default ``{ftkit home}/runs/{name}-{timestamp}-{random}``,
            claimed atomically so that two runs never share one).
        on_event: Called with each :class:`StageEvent`.
        wait_timeout_s: How long to wait for the fine-tuning job.
        poll_s: Seconds between job status polls.
        deploy: Whether to deploy and score (``False`` stops after registration).
        clock: Monotonic clock for waiting (injectable for tests).
        sleep: Sleep for waiting (injectable for tests).
        stop_job_on_interrupt: Whether SIGINT/SIGTERM during fine-tuning also stops the training job. The
            default asks the backend (:attr:`BackendTraits.resumes_jobs <ftkit.backends.traits.BackendTraits>`):
            a local job is stopped (it checkpoints, and the next run resumes it), an Azure ML job is left running
            (a cancelled pipeline cannot resume; the interruption report says how to cancel it).
    """

    def __init__(
        self,
        job: JobFile,
        backend: Backend | None = None,
        *,
        run_dir: Path | None = None,
        on_event: Callable[[StageEvent], None] | None = None,
        wait_timeout_s: float = 24 * 3600.0,
        poll_s: float = 30.0,
        deploy: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        stop_job_on_interrupt: bool | None = None,
    ) -> None:
        self.job = job
        self.backend = backend if backend is not None else backend_for_job(job)
        self.stamp = time.strftime("%Y%m%d%H%M%S")
        self.suffix = random_suffix()
        home = ftkit_home(job.local.home)
        self._claim_run_dir = run_dir is None
        self.run_dir = run_dir if run_dir is not None else home / "runs" / f"{job.name}-{self.stamp}-{self.suffix}"
        self._on_event = on_event
        self.wait_timeout_s = wait_timeout_s
        self.poll_s = poll_s
        self.deploy = deploy
        self._clock = clock
        self._sleep = sleep
        self.stop_job_on_interrupt = (
            stop_job_on_interrupt if stop_job_on_interrupt is not None else self.backend.traits.resumes_jobs
        )
        self._record: dict[str, Any] = {
            "job": job.name,
            "job_file": str(job.source.resolve()) if job.source is not None else None,
            "backend": self.backend.name,
            "started": self.stamp,
            "status": "running",
        }
        self._stage = "model"
        self._metrics: MetricsTable | None = None
        self._job_handle: JobHandle | None = None
        self._job_done = False
        self._loss_curves: Path | None = None
        self._prompts: list[HeldOutPrompt] = []
        self._evaluation: EvaluationResult | None = None
        if job.overrides:
            self._record["overrides"] = job.overrides.as_record()

    def _emit(self, stage: str, message: str, *, done: bool = False) -> None:
        self._stage = stage
        if self._on_event is not None:
            self._on_event(StageEvent(stage, message, done))

    def _claim(self) -> None:
        """Create the run directory; a default one that exists (another run's) gets a new random suffix."""
        if not self._claim_run_dir:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            return
        for _ in range(100):
            try:
                self.run_dir.mkdir(parents=True, exist_ok=False)
                return
            except FileExistsError:
                self.suffix = random_suffix()
                self.run_dir = self.run_dir.with_name(f"{self.job.name}-{self.stamp}-{self.suffix}")
        raise FileExistsError(f"no free run directory name beside {self.run_dir}")

    def _save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.run_dir / f".run.json.{self.suffix}.tmp"
        try:
            tmp.write_text(json.dumps(self._record, indent=2, default=str) + "\n", encoding="utf-8")
            tmp.replace(self.run_dir / "run.json")
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def run(self) -> RunResult:
        """Run every stage in order.

        Returns:
            The run's result.

        Raises:
            FtkitError: The first stage that failed, after the endpoint (if any) was deleted; ``run.json``
                records the error beside what the run had done by then (job name, endpoint). A file-system
                error (a full disk) is a :class:`~ftkit.exceptions.StorageError` naming the stage.
            Interrupted: SIGINT or SIGTERM arrived; what was cleaned up and what is left are on the exception
                and in ``run.json`` (``status: interrupted``).
        """
        with handle_signals():
            try:
                try:
                    self._claim()
                    result = self._run()
                except OSError as exc:
                    raise StorageError(self._stage, exc) from exc
            except Interrupted as exc:
                self._interrupted(exc)
                self._save_quietly(exc)
                raise
            except Exception as exc:  # FtkitError, and anything unexpected: run.json still says what happened
                self._record["status"] = "failed"
                self._record["error"] = {"type": type(exc).__name__, "message": str(exc), "stage": self._stage}
                self._save_quietly(exc)
                raise
            self._record["status"] = "succeeded"
            with deferred():
                try:
                    self._save()
                except OSError as exc:
                    raise StorageError("run record", exc) from exc
            return result

    def _save_quietly(self, exc: BaseException) -> None:
        """Write ``run.json`` after a failure; if even that fails (a full disk), say so on the first error."""
        try:
            self._save()
        except OSError as save_error:
            exc.add_note(f"run.json could not be written either: {save_error}")
            if isinstance(exc, Interrupted):
                exc.run_record = None
                exc.left.append(f"no run record: {save_error}")

    def _interrupted(self, exc: Interrupted) -> None:
        """Clean up after SIGINT/SIGTERM (further signals are held meanwhile) and record what is left."""
        exc.stage = self._stage
        backend, cleaned, left = self.backend, exc.cleaned, exc.left
        traits = backend.traits
        job = self._record.get("finetune_job", {}).get("name")
        if job and not self._job_done:
            if self.stop_job_on_interrupt:
                try:
                    cleaned.append(self._stop_job(job))
                except FtkitError as error:
                    left.append(f"job {job} may still be running ({error}); stop it with `ftkit job cancel {job}`")
            else:
                left.append(f"job {job} is still running; stop it with `{traits.command(f'ftkit job cancel {job}')}`")
        endpoint = self._record.get("endpoint")
        if endpoint:
            name = endpoint["name"]
            cleanup = traits.command("ftkit cleanup")
            if endpoint.get("kept"):
                left.append(f"endpoint {name} (deploy.keep); delete it with `ftkit endpoint delete {name}`")
            else:
                try:
                    backend.endpoints.delete_endpoint(name)
                    cleaned.append(f"endpoint {name} deleted")
                    endpoint["deleted"] = True
                except FtkitError as error:
                    left.append(f"endpoint {name} may still exist ({error}); run `{cleanup}`")
        self._record["status"] = "interrupted"
        self._record["interrupted"] = {
            "signal": exc.signal_name,
            "stage": exc.stage,
            "cleaned": list(cleaned),
            "left": list(left),
        }
        exc.run_record = self.run_dir / "run.json"

    def _stop_job(self, name: str, timeout_s: float = 120.0) -> str:
        """Cancel the training job and wait until it stopped (a local job writes a checkpoint first)."""
        self.backend.cancel_job(name)
        deadline = self._clock() + timeout_s
        handle = self.backend.get_job(name)
        while not handle.is_terminal and self._clock() < deadline:
            self._sleep(0.2)
            handle = self.backend.get_job(name)
        self._record["finetune_job"]["status"] = handle.status
        if not handle.is_terminal:
            raise FtkitError(f"it did not stop within {timeout_s:.0f}s")
        if handle.status == "Completed":
            return f"job {name} had completed already"
        again = " (a checkpoint is kept: running the job again resumes it)" if self.backend.traits.resumes_jobs else ""
        return f"job {name} stopped ({handle.status}){again}"

    def _run(self) -> RunResult:
        job, backend = self.job, self.backend
        # Check values, files and parameters offline first: a typo or a missing file should fail in a second,
        # not after a cluster was created. The plan itself is made once, below, with what the stages resolved.
        check_job(job)
        self._emit("model", f"resolving {job.model.ref().asset_id if not job.model.path else job.model.path}")
        # A local model directory needs no registry lookup: the backend reads it from the job file.
        model = resolve_base_model(job, backend)
        path = job.resolve_path(job.model.path) if job.model.path else None
        self._record["model"] = {"name": model.name, "version": model.version, "id": backend.model_id(model, path=path)}
        self._emit("model", f"{model.name} version {model.version}", done=True)

        self._emit(
            "compute", f"checking {job.compute.cluster}" if backend.traits.trains_on_cluster else "checking device"
        )
        validator = ComputeValidator(
            allow_list=model.finetune_compute_allow_list, expected_gpus_per_node=job.compute.gpus_per_node
        )
        compute = backend.ensure_compute(job.compute, validator)
        if compute is not None:
            self._record["compute"] = {"cluster": compute.cluster.name, "gpus_per_node": compute.gpus_per_node}
            self._emit(
                "compute",
                f"{compute.cluster.name}: {compute.cluster.size}, {compute.gpus_per_node} GPU(s)/node",
                done=True,
            )
        else:
            self._emit("compute", "this machine", done=True)

        # The one plan of the run: the model's tags, the live GPU count and the component as the backend will
        # check it, before the (possibly long) data step.
        schema = backend.component_schema(job.finetune.component_name, job.finetune.component_version)
        plan = plan_run(job, schema, model=model, gpus_per_node=compute.gpus_per_node if compute else None)
        for override in plan.overrides:
            self._emit("finetune", f"model default: {override}")

        files = self._data()
        if job.evaluate is not None and self.deploy:
            # Before anything is submitted or deployed: a split too small for the prompts asked for fails here.
            self._prompts = held_out_prompts(job, files, self._emit)
        uris = backend.upload_data({k: v for k, v in files.items() if k in ("train", "test")}, name_prefix=job.name)
        self._record["component"] = f"{plan.schema.name}:{plan.schema.version}"
        self._record["parameters"] = plan.parameters
        self._record["display_name"] = plan.display_name

        request = FinetuneRequest(plan=plan, compute=compute, train_data=uris["train"], test_data=uris["test"])
        self._emit("finetune", f"submitting {plan.display_name}")
        # Held signals: interrupted after the service accepted the job but before its name is known, the run
        # could neither stop nor report it.
        with deferred():
            handle = backend.submit_finetune(request)
            self._record["finetune_job"] = {"name": handle.name, "url": handle.studio_url}
        self._emit(
            "finetune", f"submitted job {handle.name}" + (f" ({handle.studio_url})" if handle.studio_url else "")
        )
        handle = wait_for_job(
            backend,
            handle.name,
            timeout_s=self.wait_timeout_s,
            poll_s=self.poll_s,
            # The job was named once, when submitted; status lines stay short (a local job name can be long).
            on_status=lambda h: self._emit("finetune", f"{h.status}" + (f": {h.progress}" if h.progress else "")),
            clock=self._clock,
            sleep=self._sleep,
        )
        self._job_done = True
        self._job_handle = handle
        self._record["finetune_job"]["status"] = handle.status
        self._emit("finetune", "job completed", done=True)

        metrics = backend.read_metrics(handle)
        self._metrics = metrics
        self._emit("metrics", self._review(metrics), done=True)

        registered = self._register(handle, model, plan, files)
        self._record["registered_model"] = {
            "name": registered.name,
            "version": registered.version,
            "id": registered.id,
            "path": str(registered.path) if registered.path is not None else None,
        }
        self._emit("register", f"{registered.name} version {registered.version}", done=True)

        endpoint: EndpointInfo | None = None
        request_body: Mapping[str, Any] | None = None
        response: Any = None
        if self.deploy:
            endpoint, request_body, response = self._deploy_and_score(registered, model, files)
        elif job.evaluate is not None:
            self._emit("evaluate", "skipped: the evaluation compares deployments, and this run does not deploy")
        return RunResult(
            job_file=job,
            plan=plan,
            compute=compute,
            data_files=files,
            job=handle,
            metrics=metrics,
            registered=registered,
            endpoint=endpoint,
            score_request=request_body,
            score_response=response,
            run_dir=self.run_dir,
            loss_curves=self._loss_curves,
            evaluation=self._evaluation,
        )

    def _data(self) -> dict[str, str]:
        job = self.job
        data = job.data
        if data.train_file and data.test_file:
            # Relative paths follow the job file, as everywhere else in it (and as `ftkit validate` shows them).
            train, test = data_files(job)
            files = {"train": train, "test": test}
            self._emit("data", "using the given train and test files", done=True)
        else:
            from .data import ChatDatasetBuilder

            self._emit("data", f"building from {data.source}")
            build = ChatDatasetBuilder.from_job(job).build()
            files = {"train": str(build.files[data.train_split]), "test": str(build.files[data.test_split])}
            if data.score_split and data.score_split in build.files:
                files["score"] = str(build.files[data.score_split])
            self._emit("data", build.report.summary_line(), done=True)
        hashes = {k: sha256_file(Path(v)) for k, v in files.items() if "://" not in v and Path(v).is_file()}
        self._record["data"] = {"files": files, "sha256": hashes}
        return files

    def _review(self, metrics: MetricsTable) -> str:
        from .metrics import plot_loss_curves, summarize

        summary = summarize(metrics)
        self._record["metrics"] = attrs.asdict(summary)
        try:
            curves = plot_loss_curves(metrics, self.run_dir / "loss.png", title=f"{self.job.name}: loss")
            self._record["loss_curves"] = str(curves.path)
            self._loss_curves = curves.path
        except (MissingDependencyError, ValidationError) as exc:
            # matplotlib is optional and a run may log no loss; the summary still stands.
            self._emit("metrics", f"no loss curves: {exc}")
        return str(summary)

    def _register(
        self, handle: JobHandle, model: FoundationModelRef, plan: RunPlan, files: Mapping[str, str]
    ) -> RegisteredModel:
        job = self.job
        name = job.register.name or f"{model.name}-ultrachat-200k".replace("/", "-")
        tags = {
            "ftkit.job": job.name,
            "ftkit.finetune_job": handle.name,
            "ftkit.base_model": model.asset_id,
            "ftkit.base_model_version": str(model.version),
            "ftkit.component": f"{plan.schema.name}:{plan.schema.version}",
            "ftkit.parameters": json.dumps(plan.parameters, sort_keys=True),
            **{f"ftkit.data.{k}": v for k, v in files.items()},
            **{f"ftkit.data.{k}.sha256": v for k, v in self._record["data"]["sha256"].items()},
        }
        self._emit("register", f"registering {name}")
        return self.backend.register_model(
            RegisterRequest(
                job=handle,
                name=name,
                version=job.register.version or self.stamp,
                description=job.register.description or f"{model.name} fine tuned with ftkit ({job.name})",
                tags=tags,
            )
        )

    def _deploy_and_score(
        self, registered: RegisteredModel, model: FoundationModelRef, files: Mapping[str, str]
    ) -> tuple[EndpointInfo, Mapping[str, Any] | None, Any]:
        job = self.job
        name = job.deploy.endpoint_name or endpoint_name(job.name, self.suffix)
        self._record["endpoint"] = {"name": name, "kept": job.deploy.keep}
        deployer = EndpointDeployer.from_job(self.backend, job, name=name, model_ref=model)
        self._emit("deploy", f"creating endpoint {name}")
        with deployer.session(keep=job.deploy.keep):
            info = deployer.deploy(registered)
            if job.deploy.keep:  # where to reach what is left running (the keys stay with the backend)
                self._record["endpoint"].update(scoring_uri=info.scoring_uri, openai_uri=info.openai_uri)
            self._emit("deploy", f"{name}/{job.deploy.deployment_name} serving at {info.scoring_uri}", done=True)
            request_body: Mapping[str, Any] | None = None
            response: Any = None
            source = files.get("score") or files["test"]
            # Only a local file can be sampled here; a data asset or URI lives in the workspace.
            conversation = _pick_conversation(Path(source), job.data.seed) if Path(source).is_file() else None
            if conversation is None:
                self._emit("score", f"skipped: no local conversation to send from {source}", done=True)
            else:
                request_body = deployer.request_body(conversation)
                self._emit("score", f"scoring one conversation from {Path(source).name}")
                response = deployer.invoke(request_body)
                self._record["score"] = {"request": request_body, "response": response}
                answer = " ".join(answer_text(response).split())
                self._emit("score", f"answer: {answer[:100]}{'…' if len(answer) > 100 else ''}", done=True)
            if job.evaluate is not None:
                self._evaluation = evaluate_stage(
                    job=job,
                    backend=self.backend,
                    deployer=deployer,
                    registered=registered,
                    model=model,
                    prompts=self._prompts,
                    eval_loss=self._metrics.last("eval_loss") if self._metrics is not None else None,
                    finetune_job=self._job_handle,
                    record=self._record,
                    run_dir=self.run_dir,
                    emit=self._emit,
                )
            if not job.deploy.keep:
                self._emit("cleanup", f"deleting endpoint {name}")
        self._emit(
            "cleanup", "endpoint kept (deploy.keep)" if job.deploy.keep else f"endpoint {name} deleted", done=True
        )
        return info, request_body, response


def run(
    job: JobFile | str | Path,
    backend: Backend | None = None,
    *,
    on_event: Callable[[StageEvent], None] | None = None,
    overrides: Mapping[str, object] | None = None,
    **options: Any,
) -> RunResult:
    """Run a job file end to end (see :class:`JobRunner`).

    Args:
        job: A :class:`~ftkit.jobfile.JobFile` or the path of one.
        backend: Where to run; by default the job's ``backend``.
        on_event: Called with each :class:`StageEvent`.
        overrides: Job-file keys to replace, checked like the file (``{"finetune.learning_rate": 1e-4}``,
            see :meth:`JobFile.evolve <ftkit.jobfile.JobFile.evolve>`); recorded in ``run.json``.
        **options: More :class:`JobRunner` options.

    Returns:
        The run's result.

    Raises:
        JobFileError: The file, or an override, is not a valid job.
    """
    if not isinstance(job, JobFile):
        job = JobFile.load(job, overrides=overrides)
    elif overrides:
        job = job.evolve(overrides)
    return JobRunner(job, backend, on_event=on_event, **options).run()
