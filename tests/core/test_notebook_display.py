"""Notebook display of the values a user looks at: compact reprs, HTML tables, and metrics as a DataFrame."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftkit.backends.base import MetricPoint, MetricsTable
from ftkit.data import ChatDatasetBuilder
from ftkit.plan import plan_file

REPO = Path(__file__).resolve().parents[2]


def test_run_plan_repr_is_one_short_line_and_html_lists_the_parameters() -> None:
    plan = plan_file(REPO / "examples" / "phi3-ultrachat.yaml")
    text = repr(plan)
    assert len(text) < 300, text
    assert "component='chat_completion_pipeline:0.0.82'" in text
    page = plan._repr_html_()
    assert "parameter learning_rate" in page
    assert "Phi-3-mini-4k-instruct-ultrachat-bs8" in page


def test_dataset_report_repr_and_html(tmp_path: Path) -> None:
    conversation = [{"role": "user", "content": "Hi <there>"}, {"role": "assistant", "content": "Hello."}]
    rows = [{"messages": conversation} for _ in range(8)] + [{"messages": [{"role": "bot", "content": "x"}]}]
    for split in ("train_sft", "test_sft"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    report = ChatDatasetBuilder(tmp_path, splits=["train_sft", "test_sft"], out_dir=tmp_path / "out").build().report
    text = repr(report)
    assert len(text) < 200, text
    assert "train_sft=8/9" in text
    assert "rejected=2" in text
    page = report._repr_html_()
    assert page.count("<tr>") == 3  # header + one row per split
    assert "16 of 18 rows written" in page


def test_metrics_table_to_pandas() -> None:
    pytest.importorskip("pandas")
    table = MetricsTable(
        "run-1",
        (
            MetricPoint("eval_loss", 0, 3.0),
            MetricPoint("eval_loss", 10, 2.0),
            MetricPoint("loss", 5, 2.5),
            MetricPoint("loss", 10, 2.2),
        ),
    )
    frame = table.to_pandas()
    assert list(frame.columns) == ["eval_loss", "loss"]
    assert list(frame.index) == [0, 5, 10]
    assert frame.loc[10, "loss"] == 2.2
    assert frame["loss"].isna().tolist() == [True, False, False]
    assert MetricsTable("empty").to_pandas().empty
