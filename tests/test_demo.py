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
    """--tiny: data, LoRA fine-tuning, metrics, registration, a key-auth endpoint, one answer; the endpoint is gone."""
    assert main(["demo", "--tiny", "--dir", str(tmp_path / "demo")]) == 0
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


@pytest.mark.slow
@pytest.mark.timeout(2400)  # a few minutes on an idle 2-core machine; far more when it is shared
def test_the_real_demo_shows_the_fine_tune_helped(
    tmp_path: Path, smollm2_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SmolLM2 learns a pirate's voice; the evaluation finds it on held-out questions, the base never has it."""
    from ftkit.backends.local import smollm2

    monkeypatch.setattr(smollm2, "default_cache_dir", lambda: smollm2_dir.parent)  # converted once per machine
    assert main(["demo", "--dir", str(tmp_path / "demo"), "--steps", "20"]) == 0
    captured = capsys.readouterr()
    stages = re.findall(r"^\[\s*[\d.]+s\] (\w+)\s+done ", captured.err, re.MULTILINE)
    assert stages[-2:] == ["evaluate", "cleanup"]
    assert "evaluation       passed" in captured.out
    (run_json,) = ftkit_home().glob("runs/*/run.json")
    report = json.loads((run_json.parent / "evaluation.json").read_text())
    pirate = next(m for m in report["metrics"] if m["name"] == "check:pirate")
    assert pirate["base"] == 0.0
    assert pirate["low"] > 0
    assert LocalEndpoints(ftkit_home()).list_endpoints() == []
