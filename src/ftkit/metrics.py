"""Review a fine-tuning run's metrics: a summary and loss curves, for local and Azure ML runs alike.

Both backends return a :class:`~ftkit.backends.base.MetricsTable` (read from MLflow: Azure ML workspaces speak
MLflow too), so :func:`summarize` and :func:`plot_loss_curves` work on either. In a notebook, a
:class:`MetricsSummary` shows as a table and :class:`LossCurves` as an image.

Metric names: ``loss`` (``train_loss`` when a run only logged that), ``eval_loss``, ``learning_rate``,
``grad_norm``, ``tokens_per_second`` / ``train_tokens_per_second`` and ``train_runtime``, as the local training
loop and Hugging Face's MLflow callback write them. matplotlib is imported only to draw.
"""

from __future__ import annotations

import html
import io
import math
from pathlib import Path

import attrs

from .backends.base import MetricsTable
from .exceptions import MissingDependencyError, Problem, ValidationError

__all__ = ["LossCurves", "MetricsSummary", "plot_loss_curves", "summarize"]


def _loss_key(table: MetricsTable) -> str | None:
    for key in ("loss", "train_loss"):
        if table.series(key):
            return key
    return None


@attrs.frozen(kw_only=True)
class MetricsSummary:
    """The numbers that say how a run went.

    Attributes:
        run_id: The run.
        steps: The last step with a metric.
        first_loss: Training loss at its first log.
        last_loss: Training loss at its last log.
        min_loss: Lowest training loss.
        min_loss_step: The step of ``min_loss``.
        first_eval_loss: Evaluation loss at its first evaluation (before training, for local runs).
        last_eval_loss: Evaluation loss at the last evaluation.
        min_eval_loss: Lowest evaluation loss.
        perplexity: ``exp(last_eval_loss)``, where an evaluation loss exists.
        tokens_per_second: Training throughput (the run's overall figure, else the mean of its logs).
        wall_time_s: Training wall time (``train_runtime``, else the span of the metrics' timestamps).

    .. versionadded:: 0.1
    """

    run_id: str
    steps: int | None = None
    first_loss: float | None = None
    last_loss: float | None = None
    min_loss: float | None = None
    min_loss_step: int | None = None
    first_eval_loss: float | None = None
    last_eval_loss: float | None = None
    min_eval_loss: float | None = None
    perplexity: float | None = None
    tokens_per_second: float | None = None
    wall_time_s: float | None = None

    @property
    def eval_improved(self) -> bool | None:
        """Whether the last evaluation loss is below the first (``None`` when the run logged no eval loss)."""
        if self.first_eval_loss is None or self.last_eval_loss is None:
            return None
        return self.last_eval_loss < self.first_eval_loss

    def rows(self) -> list[tuple[str, str]]:
        """Return ``(label, formatted value)`` pairs for display; absent values are left out."""

        def num(value: float | None, fmt: str = ".4f") -> str | None:
            return None if value is None else format(value, fmt)

        candidates = [
            ("steps", None if self.steps is None else str(self.steps)),
            ("loss (first → last)", _arrow(num(self.first_loss), num(self.last_loss))),
            ("min loss", None if self.min_loss is None else f"{self.min_loss:.4f} at step {self.min_loss_step}"),
            ("eval loss (first → last)", _arrow(num(self.first_eval_loss), num(self.last_eval_loss))),
            ("min eval loss", num(self.min_eval_loss)),
            ("perplexity", num(self.perplexity, ".2f")),
            ("tokens/s", num(self.tokens_per_second, ",.0f")),
            ("wall time", None if self.wall_time_s is None else f"{self.wall_time_s:.1f} s"),
        ]
        return [(label, value) for label, value in candidates if value is not None]

    def __str__(self) -> str:
        rows = self.rows()
        width = max((len(label) for label, _ in rows), default=0)
        return "\n".join([f"run {self.run_id}", *(f"  {label:<{width}}  {value}" for label, value in rows)])

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><th style='text-align:left'>{html.escape(label)}</th><td>{html.escape(value)}</td></tr>"
            for label, value in self.rows()
        )
        return f"<table><caption>run {html.escape(self.run_id)}</caption>{body}</table>"


def _arrow(first: str | None, last: str | None) -> str | None:
    if first is None or last is None:
        return first or last
    return f"{first} → {last}"


def summarize(table: MetricsTable) -> MetricsSummary:
    """Summarise a run's metrics.

    Args:
        table: The run's metrics (from any backend's ``read_metrics``).

    Returns:
        The summary; values the run did not log are ``None``.

    .. versionadded:: 0.1
    """
    key = _loss_key(table)
    loss = table.series(key) if key else ()
    evals = table.series("eval_loss")
    steps = [p.step for p in table.points]
    min_loss = min(loss, key=lambda sv: sv[1]) if loss else None
    tps: float | None = table.last("train_tokens_per_second")
    if tps is None:
        logged = [v for _, v in table.series("tokens_per_second")]
        tps = sum(logged) / len(logged) if logged else None
    wall = table.last("train_runtime")
    if wall is None:
        stamps = [p.timestamp_ms for p in table.points if p.timestamp_ms is not None]
        wall = (max(stamps) - min(stamps)) / 1000 if len(stamps) > 1 else None
    last_eval = evals[-1][1] if evals else None
    perplexity = None
    if last_eval is not None:
        perplexity = math.exp(last_eval) if last_eval < 700 else math.inf  # exp overflows past ~709
    return MetricsSummary(
        run_id=table.run_id,
        steps=max(steps) if steps else None,
        first_loss=loss[0][1] if loss else None,
        last_loss=loss[-1][1] if loss else None,
        min_loss=min_loss[1] if min_loss else None,
        min_loss_step=min_loss[0] if min_loss else None,
        first_eval_loss=evals[0][1] if evals else None,
        last_eval_loss=last_eval,
        min_eval_loss=min(v for _, v in evals) if evals else None,
        perplexity=perplexity,
        tokens_per_second=tps,
        wall_time_s=wall,
    )


@attrs.frozen
class LossCurves:
    """A rendered loss-curve figure (PNG); shows inline in notebooks.

    Attributes:
        png: The image.
        path: Where it was written, if anywhere.

    .. versionadded:: 0.1
    """

    png: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")
    path: Path | None = None

    def _repr_png_(self) -> bytes:
        return self.png

    def save(self, path: str | Path) -> Path:
        """Write the PNG to ``path`` (parents created) and return it."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(self.png)
        return p


def plot_loss_curves(table: MetricsTable, path: str | Path | None = None, *, title: str | None = None) -> LossCurves:
    """Draw training and evaluation loss by step (and the learning rate, when logged) as a PNG.

    Args:
        table: The run's metrics.
        path: Where to write the PNG (parents created); ``None`` keeps it in memory only.
        title: The figure's title (default: the run id).

    Returns:
        The figure.

    Raises:
        ValidationError: The run logged no loss at all.
        MissingDependencyError: matplotlib is not installed (it comes with ``ftkit[plots]``, and with ``local``).

    .. versionadded:: 0.1
    """
    key = _loss_key(table)
    loss = table.series(key) if key else ()
    evals = table.series("eval_loss")
    if not loss and not evals:
        raise ValidationError(
            [Problem("metrics", f"run {table.run_id} logged no loss", f"metrics present: {', '.join(table.keys)}")],
            "nothing to plot",
        )
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError("matplotlib", "plots") from None
    lr = table.series("learning_rate")
    # Figure() without pyplot: no global state, no GUI backend, safe in servers and threads.
    fig = Figure(figsize=(10 if lr else 6.5, 4), dpi=100, layout="constrained")
    ax = fig.add_subplot(1, 2 if lr else 1, 1)
    if loss:
        ax.plot([s for s, _ in loss], [v for _, v in loss], label="train loss", color="tab:blue", linewidth=1.5)
    if evals:
        ax.plot([s for s, _ in evals], [v for _, v in evals], label="eval loss", color="tab:orange", marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or f"run {table.run_id}")
    if lr:
        ax2 = fig.add_subplot(1, 2, 2)
        ax2.plot([s for s, _ in lr], [v for _, v in lr], color="tab:green")
        ax2.set_xlabel("step")
        ax2.set_ylabel("learning rate")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax2.grid(alpha=0.3)
        ax2.set_title("learning rate")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    curves = LossCurves(buf.getvalue())
    if path is not None:
        curves = attrs.evolve(curves, path=curves.save(path))
    return curves
