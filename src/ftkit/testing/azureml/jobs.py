"""Jobs with an inside: child steps with statuses and logs, the run-history routes ``jobs.stream`` reads, faults.

A job walks the fake's ``job_statuses`` timeline, one step per read of its status (an ARM ``jobs.get`` or a
run-history read). While it is ``Running``, its steps (the chat-completion pipeline's five child jobs, or the
pipeline's own nodes) run in order, each with a log file; a failure scripted with
:meth:`JobRoutes.fail_job` stops the job in the named step with that step's error.

Strictly private; use :class:`ftkit.testing.FakeAzureML`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from .base import ErrorBody, FakeBase, Reply
from .tasks import EVALUATION_METRICS, PIPELINE_TASKS, evaluation_task, pipeline_steps, trainer_metrics

__all__ = ["CHAT_COMPLETION_STEPS", "PIPELINE_LOG", "STEP_LOG", "TERMINAL", "JobRoutes", "JobRun", "Step"]

# The child jobs of chat_completion_pipeline 0.0.82 and the pipeline input naming each one's compute
# (shared/reference/chat-completion-pipeline-inputs.md, "Child jobs in 0.0.82").
CHAT_COMPLETION_STEPS: tuple[tuple[str, str], ...] = (
    ("ft_nlp_common_validation", "compute_model_import"),
    ("chat_completion_model_import", "compute_model_import"),
    ("chat_completion_datapreprocess", "compute_preprocess"),
    ("chat_completion_finetune", "compute_finetune"),
    ("ft_nlp_model_converter", "compute_finetune"),
)
DEFAULT_FAILED_STEP = "chat_completion_finetune"
WAITING = frozenset({"NotStarted", "Queued", "Preparing", "Provisioning", "Starting"})
TERMINAL = frozenset({"Completed", "Failed", "Canceled"})
STEP_LOG = "user_logs/std_log.txt"
PIPELINE_LOG = "logs/azureml/executionlogs.txt"


@attrs.define
class Step:
    """Strictly private: one child job of a pipeline job."""

    name: str
    run_id: str
    compute: str
    status: str = "NotStarted"
    log: list[str] = attrs.field(factory=list)
    error: str | None = None
    group: str | None = None  # the pipeline-component node holding it (a nested pipeline run on Azure)


@attrs.define
class JobRun:
    """Strictly private: what the fake knows about one job beyond its ARM body."""

    name: str
    experiment: str
    steps: list[Step]
    schedule: list[tuple[str, int]]  # per read: the job's status and the index of the running step
    tick: int = 0
    log: list[str] = attrs.field(factory=list)
    failure: tuple[int, str] | None = None
    pipeline: bool = True  # a command job's one step is the job itself: no child runs
    task: str | None = None  # the task of the registry fine-tuning pipeline it runs, if any
    evaluation: str | None = None  # the task whose metrics its evaluation step logs, if it has one


class JobRoutes(FakeBase):
    """Strictly private: jobs, their steps and logs, run history."""

    job_statuses: tuple[str, ...]
    metrics: dict[str, dict[str, list[tuple[int, float, int]]]]
    _job_failures: list[tuple[str, str]]
    _runs: dict[str, JobRun]
    _auto_metrics: dict[str, dict[str, list[tuple[int, float, int]]]]  # run id: the metrics the fake logged

    # ---------------------------------------------------------------- public

    def fail_job(self, message: str = "CUDA out of memory", *, step: str = DEFAULT_FAILED_STEP) -> None:
        """Make the next submitted job fail in ``step`` with ``message``.

        The job runs its earlier steps, then ``step`` logs a traceback ending in ``message`` and ends
        ``Failed``; the pipeline job ends ``Failed`` with Azure ML's "Pipeline has failed child jobs" error
        naming the node. A job without that step fails in its last step.

        Args:
            message: The step's error message.
            step: The child job that fails (default: the finetune step), matched by the end of its name.
        """
        self._job_failures.append((message, step))

    def add_job(self, name: str, *, status: str = "Completed", outputs: Sequence[str] = ("trained_model",)) -> None:
        """Create a job as if it had run already (``status``; ``outputs`` to register models from)."""
        key = self._ws_key(f"jobs/{name}")
        body = {
            "properties": {
                "jobType": "Pipeline",
                "displayName": name,
                "experimentName": "Default",
                "status": status,
                "outputs": {o: {"jobOutputType": "mlflow_model"} for o in outputs},
                "services": {"Studio": {"jobServiceType": "Studio", "endpoint": f"https://ml.azure.com/runs/{name}"}},
            }
        }
        self._put(key, body)
        step = Step("main", f"{name}-main", "serverless", status=status)
        self._runs[name.lower()] = JobRun(name, "Default", [step], [(status, 1)])
        if status == "Completed":
            self.metrics.setdefault(name, _training_metrics())

    def job_steps(self, name: str) -> list[dict[str, Any]]:
        """Return the job's steps: ``name``, ``run_id``, ``compute``, ``status``, ``error`` and ``log`` lines."""
        run = self._runs[name.lower()]
        return [attrs.asdict(s) for s in run.steps]

    # ---------------------------------------------------------------- ARM routes

    def _put_job(self, key: str, body: dict[str, Any]) -> Reply:
        name = key.rsplit("/", 1)[-1]
        props = body.setdefault("properties", {})
        existing = self.resources.get(key.lower())
        if existing is not None:
            # A job PUT for an existing name is an update of tags/description only; the job keeps its state.
            return 200, existing, {}
        missing = self._missing_computes(props)
        if missing:
            # AML answers a job on a compute it does not know with UserError "Unknown compute target '<name>'."
            # (seen in Azure/AML-Kubernetes#118).
            return 400, ErrorBody("UserError", f"Unknown compute target '{missing[0]}'."), {}
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
        steps = self._steps_of(name, props)
        run = JobRun(name, str(props["experimentName"]), steps, self._schedule(len(steps)))
        run.pipeline = str(props.get("jobType", "")).lower() == "pipeline"
        run.task, run.evaluation = self._pipeline_task(props)
        if self._job_failures:
            message, step_name = self._job_failures.pop(0)
            index = next((i for i, s in enumerate(steps) if s.name.endswith(step_name)), len(steps) - 1)
            run.failure = (index, message)
        for i, step in enumerate(steps):
            if step.compute != "serverless" and not self._compute_exists(step.compute) and run.failure is None:
                # A node whose compute input names a missing cluster fails when it starts, as on Azure:
                # "AzureMLCompute cluster <name> does not exist" (Azure/MachineLearningNotebooks#906).
                run.failure = (i, f"AzureMLCompute cluster {step.compute} does not exist")
        if run.failure is not None:
            run.schedule = _fail_schedule(run.schedule, run.failure[0])
        self._runs[name.lower()] = run
        run.log.append(f"[2025-01-01 00:00:00Z] Submitting pipeline job {name} with {len(steps)} steps")
        self._apply(stored, run)  # a timeline that starts Running has its first step running at once
        return 201, stored, {}

    def _read_job(self, stored: dict[str, Any]) -> None:
        """A read of the job's status: the job moves one step along its timeline."""
        run = self._runs.get(str(stored["name"]).lower())
        if run is None or stored["properties"]["status"] in TERMINAL:
            return
        run.tick += 1
        self._apply(stored, run)

    def _apply(self, stored: dict[str, Any], run: JobRun) -> None:
        status, current = run.schedule[min(run.tick, len(run.schedule) - 1)]
        props = stored["properties"]
        for i, step in enumerate(run.steps):
            before = step.status
            if status == "Completed" or i < current:
                step.status = "Completed"
            elif i == current and status in ("Running", "Failed"):
                step.status = "Failed" if status == "Failed" else "Running"
            if step.status != before:
                self._log_step(run, step, before)
                self._step_metrics(run, step)
        props["status"] = status
        if status == "Failed" and run.failure is not None and not run.pipeline:
            props["error"] = {"code": "UserError", "message": run.failure[1]}
        elif status == "Failed" and run.failure is not None:
            failed = run.steps[run.failure[0]] if run.steps else None
            node = f"/{failed.name}" if failed is not None else ""
            # The root error of a pipeline whose node failed (wording as Azure ML Studio shows it).
            props["error"] = {
                "code": "UserError",
                "message": f"Pipeline has failed child jobs. Failed nodes: {node}. For more details and logs, "
                "please go to the job detail page and check the child jobs.",
            }
            run.log.append(f"[2025-01-01 00:10:00Z] Execution of step {node.lstrip('/')} failed; pipeline Failed")
        if status == "Completed":
            self._register_outputs(str(stored["name"]), props)
            self.metrics.setdefault(str(stored["name"]), _training_metrics())
            run.log.append("[2025-01-01 00:20:00Z] Finished: all steps completed")

    def _log_step(self, run: JobRun, step: Step, before: str) -> None:
        ts = f"2025-01-01 00:{len(run.log):02d}:00"
        if before == "NotStarted":
            run.log.append(f"[{ts}Z] Submitting 1 runs, first five are: {step.name}:{step.run_id}")
            step.log.append(f"{ts} {step.name}: started on compute {step.compute}")
        if step.name.endswith("finetune") and step.status in ("Running", "Completed", "Failed"):
            history = _training_metrics()["loss"]
            shown = history if step.status == "Completed" else history[: len(history) // 2]
            for s, v, _ in shown:
                line = f"{ts} {{'loss': {v}, 'step': {s}}}"
                if line.split(" ", 2)[2] not in {x.split(" ", 2)[2] for x in step.log}:
                    step.log.append(line)
        if step.status == "Completed":
            step.log.append(f"{ts} {step.name}: completed")
            run.log.append(f"[{ts}Z] Completing processing run id {step.run_id}.")
        if step.status == "Failed" and run.failure is not None:
            step.error = run.failure[1]
            step.log.append(f"{ts} Traceback (most recent call last):")
            step.log.append(f"{ts} {step.error}")

    def _missing_computes(self, props: Mapping[str, Any]) -> list[str]:
        ids = [str((props.get("settings") or {}).get("default_compute") or "")]
        ids.append(str(props.get("computeId") or ""))
        ids += [str(node.get("computeId") or "") for node in (props.get("jobs") or {}).values()]
        names = [i.rstrip("/").rsplit("/computes/", 1)[-1] for i in ids if "/computes/" in i]
        return [n for n in names if not self._compute_exists(n)]

    def _steps_of(self, name: str, props: Mapping[str, Any]) -> list[Step]:
        inputs = props.get("inputs") or {}
        steps: list[Step] = []
        for node_name, node in (props.get("jobs") or {}).items():
            component = str(node.get("componentId") or "")
            node_inputs = node.get("inputs") or {}
            m = re.search(r"/registries/[^/]+/components/([^/]+)/", component, re.I)
            pipeline = m[1].lower() if m else ""
            if pipeline == "chat_completion_pipeline":
                layout: list[tuple[str, str]] | None = list(CHAT_COMPLETION_STEPS)
            elif pipeline in PIPELINE_TASKS or pipeline.endswith("_pipeline"):
                layout = pipeline_steps(pipeline, node_inputs)
            else:
                layout = None
            if layout is not None:
                for step_name, compute_input in layout:
                    compute = _input_value(node_inputs.get(compute_input), inputs) or "serverless"
                    steps.append(Step(step_name, f"{name}-{step_name}", compute, group=str(node_name)))
            else:
                compute = str(node.get("computeId") or "serverless").rsplit("/", 1)[-1]
                steps.append(Step(str(node_name), f"{name}-{node_name}", compute))
        if not steps:
            compute = str(props.get("computeId") or "serverless").rsplit("/", 1)[-1]
            steps.append(Step("main", f"{name}-main", compute))
        return steps

    def _pipeline_task(self, props: Mapping[str, Any]) -> tuple[str | None, str | None]:
        """The task a job fine-tunes (from its registry pipeline component) and its evaluation's task."""
        for node in (props.get("jobs") or {}).values():
            m = re.search(r"/registries/[^/]+/components/([^/]+)/", str(node.get("componentId") or ""), re.I)
            if m and m[1].lower() in PIPELINE_TASKS:
                pipeline = m[1].lower()
                # The variant the pipeline was asked for (multi-label image classification) is the model's task too.
                task = evaluation_task(pipeline, node.get("inputs") or {}) or PIPELINE_TASKS[pipeline]
                return task, task if task in EVALUATION_METRICS else None
        return None, None

    def _step_metrics(self, run: JobRun, step: Step) -> None:
        """Log a step's MLflow metrics as the real components do, as far as the step has run.

        Metrics a test put in ``fake.metrics`` for the step's run id first are left alone.
        """
        mine = self._auto_metrics.get(step.run_id)
        if step.run_id in self.metrics and self.metrics[step.run_id] is not mine:
            return  # a test's own metrics for this run (set before, or over, the fake's)
        if step.name.endswith("_finetune") and step.status in ("Running", "Completed", "Failed"):
            upto = None if step.status == "Completed" else 30  # a running trainer has logged half its steps
            self.metrics[step.run_id] = trainer_metrics(upto=upto)
        elif step.name == "compute_metrics" and step.status == "Completed" and run.evaluation is not None:
            ts = 1_735_690_800_000
            values = EVALUATION_METRICS[run.evaluation]
            self.metrics[step.run_id] = {k: [(0, v, ts)] for k, v in values.items()}
        else:
            return
        self._auto_metrics[step.run_id] = self.metrics[step.run_id]

    def _find_run(self, run_id: str) -> tuple[JobRun, Step | None, str | None] | None:
        """The job, step or pipeline-component node (``<job>-<node>``) a run id names."""
        wanted = run_id.lower()
        run = self._runs.get(wanted)
        if run is not None:
            return run, None, None
        for run in self._runs.values():
            for step in run.steps:
                if step.run_id.lower() == wanted:
                    return run, step, None
                if step.group is not None and f"{run.name}-{step.group}".lower() == wanted:
                    return run, None, step.group
        return None

    def _schedule(self, n_steps: int) -> list[tuple[str, int]]:
        running = [i for i, s in enumerate(self.job_statuses) if s not in WAITING and s not in TERMINAL]
        schedule: list[tuple[str, int]] = []
        for i, status in enumerate(self.job_statuses):
            if i in running:
                schedule.append((status, math.floor(running.index(i) * n_steps / len(running))))
            else:
                schedule.append((status, -1 if status in WAITING else n_steps))
        return schedule

    def _cancel_job(self, key: str) -> Reply:
        stored = self.resources.get(key.lower())
        if stored is None:
            return 404, ErrorBody("ResourceNotFound", "job not found"), {}
        if stored["properties"]["status"] not in TERMINAL:
            stored["properties"]["status"] = "Canceled"
            run = self._runs.get(str(stored["name"]).lower())
            for step in run.steps if run is not None else []:
                if step.status not in TERMINAL:
                    step.status = "Canceled"
        op_id = self._new_op("cancel", key)
        return 202, None, {"Location": self._operation_url(op_id), "Retry-After": "1"}


def _input_value(value: Any, job_inputs: Mapping[str, Any]) -> str | None:
    """A node input's literal value, following a ``${{parent.inputs.x}}`` binding to the job's inputs."""
    if isinstance(value, Mapping):
        value = value.get("value")
    if not isinstance(value, str):
        return None
    m = re.fullmatch(r"\$\{\{parent\.inputs\.([^}]+)\}\}", value.strip())
    if m:
        return _input_value(job_inputs.get(m[1]), {})
    return value


def _fail_schedule(schedule: Sequence[tuple[str, int]], index: int) -> list[tuple[str, int]]:
    """Cut a job's timeline at the read where step ``index`` runs: the next read finds the job Failed."""
    out: list[tuple[str, int]] = []
    for status, current in schedule:
        if status in TERMINAL:
            break
        if status not in WAITING and current >= index:
            out.append((status, index))
            break
        out.append((status, current))
    if not out or out[-1] != ("Running", index):
        out.append(("Running", index))  # the failing step is seen running (its log lines) before it fails
    out.append(("Failed", index))
    return out


def _training_metrics() -> dict[str, list[tuple[int, float, int]]]:
    """Strictly private: a finished job's own metrics, shaped like HF Trainer's logs (its finetune step logs more)."""
    keep = ("loss", "grad_norm", "learning_rate", "epoch", "eval_loss", "train_loss")
    return {k: v for k, v in trainer_metrics().items() if k in keep}
