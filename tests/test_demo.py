"""The README's main command: `ftkit demo` runs the whole flow locally and leaves nothing running."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("mlflow")

from ftkit.backends.local.endpoints import LocalEndpoints
from ftkit.cli import main
from ftkit.home import ftkit_home


def test_demo_runs_every_stage_and_cleans_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Data, LoRA fine-tuning, metrics, registration, a key-auth endpoint, one answer; the endpoint is gone."""
    assert main(["demo", "--dir", str(tmp_path / "demo")]) == 0
    captured = capsys.readouterr()
    stages = re.findall(r"^\[\s*[\d.]+s\] (\w+)\s+done ", captured.err, re.MULTILINE)
    assert stages == ["model", "compute", "data", "finetune", "metrics", "register", "deploy", "score", "cleanup"]

    home = ftkit_home()
    (run_json,) = home.glob("runs/*/run.json")
    record = json.loads(run_json.read_text())
    assert record["backend"] == "local"
    assert not record["model"]["id"].startswith("azureml://"), record["model"]
    assert record["metrics"]["last_eval_loss"] < record["metrics"]["first_eval_loss"]
    assert (run_json.parent / "loss.png").stat().st_size > 10_000
    assert record["score"]["response"]["output"]
    assert "sample answer" in captured.out
    # Where the state is, so `ftkit job list` and `mlflow ui` find it (FTKIT_HOME here: no --home needed).
    assert f"ftkit home       {home}  (" in captured.out
    assert "  look with      ftkit job list; ftkit endpoint list" in captured.out
    assert main(["job", "list"]) == 0
    assert "Completed" in capsys.readouterr().out
    assert list(home.glob("cache/tokens/*")), "the token cache is under the run's ftkit home"

    endpoints = LocalEndpoints(home)
    assert endpoints.list_endpoints() == []
    pid_files = list(home.glob("endpoints/*/server.json"))
    assert pid_files == []
    assert os.environ.get("FTKIT_HOME") == str(home)
