"""The run's ``evaluate`` stage: the tuned deployment against its base, on held-out prompts.

:class:`~ftkit.runner.JobRunner` picks the prompts before anything is submitted (:func:`held_out_prompts`, so a
split too small fails in a second) and, once the tuned model serves, runs :func:`evaluate_stage`: the base model
gets a deployment of its own on the same endpoint (0% traffic) for the evaluation only, unless ``evaluate.base``
names one already serving.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .backends.base import Backend, JobHandle, RegisteredModel
from .base_model import base_registered_model
from .deploy import EndpointDeployer
from .exceptions import Problem, ValidationError
from .jobfile import JobFile
from .model import FoundationModelRef

if TYPE_CHECKING:
    from .evaluation import EvaluationResult, HeldOutPrompt

__all__ = ["evaluate_stage", "held_out_prompts"]


class Emit(Protocol):
    """Reports progress as the runner does: ``emit(stage, message, done=False)``."""

    def __call__(self, stage: str, message: str, *, done: bool = False) -> None: ...


def held_out_prompts(job: JobFile, files: Mapping[str, str], emit: Emit) -> list[HeldOutPrompt]:
    """Read the evaluation's prompts from the run's ``test`` or ``score`` split, or from the file it names.

    Raises:
        ValidationError: The split is missing or not a local file, or too small for the prompts asked for.
    """
    from .evaluation import load_prompts

    settings = job.evaluate
    assert settings is not None
    if settings.split in ("test", "score"):
        source = files.get(settings.split)
        if source is None:
            raise ValidationError(
                [Problem("evaluate.split", f"the run has no {settings.split} split", "use test, or a JSONL path")],
                "no held-out prompts",
            )
    else:
        source = str(job.resolve_path(settings.split))
    if not Path(source).is_file():
        raise ValidationError(
            [Problem("evaluate.split", f"{source} is not a local file", "evaluate on a local JSONL file")],
            "no held-out prompts",
        )
    prompts = load_prompts(source, settings.prompts, seed=settings.seed)
    emit("data", f"{len(prompts)} held-out prompts for the evaluation from {Path(source).name}")
    return prompts


def evaluate_stage(
    *,
    job: JobFile,
    backend: Backend,
    deployer: EndpointDeployer,
    registered: RegisteredModel,
    model: FoundationModelRef,
    prompts: list[HeldOutPrompt],
    eval_loss: float | None,
    finetune_job: JobHandle | None,
    record: dict[str, Any],
    run_dir: Path,
    emit: Emit,
) -> EvaluationResult:
    """Tuned against base on the held-out prompts; the base deployment lives only for the evaluation.

    Args:
        job: The job file (its ``evaluate`` and ``deploy`` sections).
        backend: The run's backend.
        deployer: The deployer serving the tuned model.
        registered: The tuned model.
        model: The base model, resolved.
        prompts: The held-out prompts (:func:`held_out_prompts`).
        eval_loss: The fine-tuning job's own last ``eval_loss``, for the note where held-out loss is not measured.
        finetune_job: The fine-tuning job, whose tracked run gets the evaluation's metrics and reports.
        record: The run's record (``run.json``): ``evaluation`` is written into it, also on failure.
        run_dir: Where the reports go.
        emit: Reports progress (``emit(stage, message, done=False)``).

    Returns:
        The evaluation's result.

    Raises:
        EvaluationGateError: The tuned model failed ``evaluate.require`` (a kept endpoint was deleted first).
    """
    from .evaluation import Candidate, Evaluation

    settings = job.evaluate
    assert settings is not None
    endpoints = backend.endpoints
    tuned = Candidate(
        label="tuned",
        endpoints=endpoints,
        endpoint=deployer.name,
        deployment=deployer.primary_deployment(),
        model=registered,
    )
    evaluation_record: dict[str, Any] = {"status": "running"}
    record["evaluation"] = evaluation_record
    base_deployment: str | None = None
    try:
        if settings.deploys_base:
            base_deployment = settings.base_deployment
            base_model = base_registered_model(model)
            emit("evaluate", f"deploying the base model {model.name} as {deployer.name}/{base_deployment} (0% traffic)")
            evaluation_record["base_deployment"] = {
                "endpoint": deployer.name,
                "name": base_deployment,
                "deleted": False,
            }
            deployer.add_deployment(base_model, name=base_deployment)
            base = Candidate(
                label="base", endpoints=endpoints, endpoint=deployer.name, deployment=base_deployment, model=base_model
            )
        else:
            endpoint, deployment = settings.base_target()
            base = Candidate(label="base", endpoints=endpoints, endpoint=endpoint, deployment=deployment)
        note = f"not measured on {backend.name}: its endpoints serve generations only" + (
            f"; the fine-tuning job's own eval_loss was {eval_loss:.4g}" if eval_loss is not None else ""
        )
        evaluation = Evaluation(
            settings,
            tuned=tuned,
            base=base,
            prompts=prompts,
            losses=backend.heldout_losses,
            loss_note=note,
            out_dir=run_dir,
            on_progress=lambda message: emit("evaluate", message),
            timeout_s=max(60.0, job.deploy.request_timeout_ms / 1000),
        )
        result = evaluation.run()
        paths = result.write(run_dir)
        evaluation_record.update(
            status="passed" if result.passed else "failed requirements",
            report=str(paths["markdown"]),
            json=str(paths["json"]),
            summary=result.summary(),
        )
        if finetune_job is not None:
            files = [paths["json"], paths["markdown"]]
            evaluation_record["logged_to_run"] = backend.log_evaluation(finetune_job, result.mlflow_metrics(), files)
        for line in result.summary_lines():
            emit("evaluate", line)
        emit("evaluate", f"report: {paths['markdown']}", done=True)
        if not result.passed and job.deploy.keep:
            # The gate's promise: a tuned model that is not better is not left serving.
            emit("cleanup", f"deleting endpoint {deployer.name}: the evaluation's requirements failed")
            deployer.delete()
            record["endpoint"]["deleted"] = True
        result.gate()
        return result
    except BaseException:  # an interruption too: run.json says where the partial results are
        if evaluation_record.get("status") == "running":
            evaluation_record["status"] = "failed"
            partial = run_dir / "evaluation.partial.jsonl"
            if partial.is_file():
                evaluation_record["partial"] = str(partial)
        raise
    finally:
        if base_deployment is not None and job.deploy.keep and deployer.deployments:
            # The endpoint stays (deploy.keep); the base deployment was only for the evaluation.
            emit("evaluate", f"deleting the base deployment {deployer.name}/{base_deployment}")
            backend.endpoints.delete_deployment(deployer.name, base_deployment)
            evaluation_record["base_deployment"]["deleted"] = True
