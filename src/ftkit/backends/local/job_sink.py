"""Where a background job's training sends its metrics and progress (the worker, or rank 0 of several).

:class:`JobProgressSink` forwards metrics to the job's MLflow run and keeps a one-line progress in ``job.json``,
which ``ftkit run`` reads while it waits for the job.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import attrs

from .jobs import JobRecord, write_record
from .tracking import RunLogger
from .training.config import MetricsSink

__all__ = ["JobProgressSink"]


class JobProgressSink(MetricsSink):
    """Forwards metrics to the run's logger and keeps a progress line in ``job.json``.

    The job's owner polls ``job.json`` (``LocalBackend.get_job``), so this is how a background worker's
    progress reaches ``ftkit run``; it is written at the logging cadence only, so it costs nothing to speak of.
    """

    def __init__(self, folder: Path, record: JobRecord, logger: RunLogger | None) -> None:
        self.folder = folder
        self.record = record
        self.logger = logger

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log to the run; at a loss or eval-loss step, write it as the job's progress line."""
        if self.logger is not None:
            self.logger.log_metrics(metrics, step)
        if "loss" in metrics:
            line = f"step {step}: loss {metrics['loss']:.4f}"
            if "tokens_per_second" in metrics:
                line += f", {metrics['tokens_per_second']:,.0f} tokens/s"
        elif "eval_loss" in metrics:
            line = f"step {step}: eval loss {metrics['eval_loss']:.4f}"
        else:
            return
        self.record = attrs.evolve(self.record, progress=line)
        write_record(self.folder, self.record)

    def flush(self) -> None:
        """Send what the run's logger holds."""
        if self.logger is not None:
            self.logger.flush()

    def phase(self, message: str) -> None:
        """Before the first step (loading, tokenising, the step-0 evaluation) this is the job's progress."""
        self.record = attrs.evolve(self.record, progress=message)
        write_record(self.folder, self.record)
