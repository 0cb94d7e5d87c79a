"""Metrics review: summary numbers, notebook display, loss-curve PNG (backend-neutral)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ftkit.backends.base import MetricPoint, MetricsTable
from ftkit.exceptions import ValidationError
from ftkit.metrics import LossCurves, MetricsSummary, plot_loss_curves, summarize

pytest.importorskip("matplotlib")


def _table() -> MetricsTable:
    points = [MetricPoint("loss", s, 3.0 - 0.02 * s + (0.1 if s == 40 else 0), 1000 * s) for s in range(5, 101, 5)]
    points += [MetricPoint("eval_loss", s, v, 1000 * s) for s, v in [(0, 3.2), (50, 2.4), (100, 2.1)]]
    points += [MetricPoint("learning_rate", s, 1e-3 * (1 - s / 100), 1000 * s) for s in range(5, 101, 5)]
    points += [MetricPoint("tokens_per_second", s, 1000.0 + s, 1000 * s) for s in range(5, 101, 5)]
    return MetricsTable("run-1", tuple(points))


class TestSummary:
    def test_numbers(self) -> None:
        """First/last/min loss, eval losses, perplexity from the last eval loss, mean tokens/s, time span."""
        s = summarize(_table())
        assert s.steps == 100
        assert s.first_loss == pytest.approx(2.9)
        assert s.last_loss == pytest.approx(1.0)
        assert (s.min_loss, s.min_loss_step) == (pytest.approx(1.0), 100)
        assert (s.first_eval_loss, s.last_eval_loss, s.min_eval_loss) == (3.2, 2.1, 2.1)
        assert s.perplexity == pytest.approx(math.exp(2.1))
        assert s.tokens_per_second == pytest.approx(1052.5)
        assert s.wall_time_s == pytest.approx(100.0)
        assert s.eval_improved is True

    def test_overall_figures_win_and_train_loss_is_a_fallback(self) -> None:
        """train_runtime / train_tokens_per_second are preferred; train_loss stands in for loss (HF's final)."""
        t = MetricsTable(
            "r",
            (
                MetricPoint("train_loss", 10, 1.5),
                MetricPoint("train_runtime", 10, 42.0),
                MetricPoint("train_tokens_per_second", 10, 900.0),
            ),
        )
        s = summarize(t)
        assert (s.first_loss, s.wall_time_s, s.tokens_per_second) == (1.5, 42.0, 900.0)
        assert s.perplexity is None
        assert s.eval_improved is None

    def test_empty_run(self) -> None:
        """A run without metrics summarises to Nones and prints just its id."""
        s = summarize(MetricsTable("empty"))
        assert s == MetricsSummary(run_id="empty")
        assert str(s) == "run empty"

    def test_text_and_html(self) -> None:
        """str() is an aligned table; the notebook HTML escapes and lists the same rows."""
        s = summarize(_table())
        text = str(s)
        assert "eval loss (first → last)  3.2000 → 2.1000" in text
        assert "perplexity" in text
        html = s._repr_html_()
        assert html.count("<tr>") == len(s.rows())


class TestLossCurves:
    def test_png_written_and_displayable(self, tmp_path: Path) -> None:
        """The PNG is written (parents created) and the object displays inline."""
        curves = plot_loss_curves(_table(), tmp_path / "plots" / "loss.png", title="tiny run")
        assert isinstance(curves, LossCurves)
        assert curves.path == tmp_path / "plots" / "loss.png"
        assert curves.path.read_bytes() == curves._repr_png_()
        assert curves.png.startswith(b"\x89PNG")
        assert "bytes" in repr(curves)

    def test_nothing_to_plot(self) -> None:
        """A run without any loss is a ValidationError naming the metrics it has."""
        with pytest.raises(ValidationError, match="metrics present: grad_norm"):
            plot_loss_curves(MetricsTable("r", (MetricPoint("grad_norm", 1, 0.5),)))


def test_local_backend_import_is_light() -> None:
    """Importing the local backend (and the metrics review) loads no torch, transformers, mlflow or fastapi."""
    import subprocess
    import sys

    code = (
        "import sys, ftkit.backends.local, ftkit.metrics;"
        "from ftkit.backends.local import LocalBackend; LocalBackend('/tmp/unused-home');"
        "heavy = ('torch', 'transformers', 'mlflow', 'peft', 'fastapi', 'matplotlib');"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in heavy})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
