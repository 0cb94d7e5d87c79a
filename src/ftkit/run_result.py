"""What a run reports: its progress (:class:`StageEvent`, one per step of a stage) and its :class:`RunResult`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from .backends.base import EndpointInfo, JobHandle, MetricsTable, RegisteredModel
from .compute import ComputeCheck
from .deploy import answer_text
from .jobfile import JobFile
from .plan import RunPlan

if TYPE_CHECKING:
    from .evaluation import EvaluationResult

__all__ = ["STAGES", "RunResult", "StageEvent"]

STAGES = ("model", "compute", "data", "finetune", "metrics", "register", "deploy", "score", "evaluate", "cleanup")


@attrs.frozen
class StageEvent:
    """Progress of a run: a stage started, reported something, or finished.

    Attributes:
        stage: One of ``model``, ``compute``, ``data``, ``finetune``, ``metrics``, ``register``, ``deploy``,
            ``score``, ``evaluate``, ``cleanup``.
        message: A one-line, human-readable account.
        done: Whether the stage has finished.
    """

    stage: str
    message: str
    done: bool = False


@attrs.frozen(kw_only=True)
class RunResult:
    """What a run produced.

    Attributes:
        job_file: The job file.
        plan: The checked plan of the run (its data as the job file names it; the request had the uploaded URIs).
        compute: The compute check, where there is a cluster.
        data_files: The data files used (``train``, ``test``, ``score`` when present).
        job: The finished fine-tuning job.
        metrics: Its metrics.
        registered: The registered model.
        endpoint: The endpoint it was deployed to (``None`` when not deployed).
        score_request: The sample request sent to the endpoint.
        score_response: The endpoint's answer.
        run_dir: Where ``run.json`` and the loss curves are.
        loss_curves: The loss-curve PNG, when one was drawn (matplotlib installed, a loss logged).
        evaluation: The tuned-vs-base evaluation, when the job has an ``evaluate`` section.
    """

    job_file: JobFile
    plan: RunPlan
    compute: ComputeCheck | None
    data_files: Mapping[str, str]
    job: JobHandle
    metrics: MetricsTable
    registered: RegisteredModel
    endpoint: EndpointInfo | None
    score_request: Mapping[str, Any] | None
    score_response: Any
    run_dir: Path
    loss_curves: Path | None = None
    evaluation: EvaluationResult | None = None

    @property
    def answer(self) -> str | None:
        """The endpoint's sample answer as text (see :func:`answer_text`), ``None`` when nothing was scored."""
        return None if self.score_response is None else answer_text(self.score_response)
