"""What a run shows while it trains: phase lines before the first step, then a progress bar or step lines."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .config import Progress

if TYPE_CHECKING:
    from .ranks import Ranks

__all__ = ["ProgressView", "announcer"]


def announcer(sink: object, mode: Progress, ranks: Ranks) -> Callable[[str], None]:
    """Say what training does where no step line shows it yet (loading, tokenising, evaluating).

    A line on stderr (the job's ``train.log`` in a worker) and the sink's ``phase``, which a worker writes to
    ``job.json`` as the job's progress for ``ftkit run`` to show. Rank 0 only.
    """
    visible = mode in ("plain", "rich") or (mode == "auto" and sys.stderr.isatty())
    hear = getattr(sink, "phase", None)

    def say(message: str) -> None:
        if not ranks.main:
            return
        if visible:
            print(message, file=sys.stderr, flush=True)
        if callable(hear):
            hear(message)

    return say


class ProgressView:
    """A rich progress bar in a terminal, plain lines, or nothing."""

    def __init__(self, mode: Progress, total: int, start: int) -> None:
        if mode == "auto":
            mode = "rich" if sys.stderr.isatty() else "none"
        self.mode = mode
        self._bar: Any = None
        if mode == "rich":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]training"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[tps]} tok/s"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._task = self._bar.add_task("train", total=total, completed=start, loss="-", tps="-")
            self._bar.start()

    def update(self, step: int, total: int, metrics: Mapping[str, float] | None) -> None:
        """Show ``step`` of ``total`` and, at a logging step, its metrics."""
        if self.mode == "rich":
            fields = {}
            if metrics and "loss" in metrics:
                fields = {"loss": f"{metrics['loss']:.4f}", "tps": f"{metrics.get('tokens_per_second', 0):,.0f}"}
            self._bar.update(self._task, completed=step, **fields)
        elif self.mode == "plain" and metrics:
            shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
            print(f"step {step}/{total} {shown}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Stop the bar (a no-op without one)."""
        if self._bar is not None:
            self._bar.stop()
