"""``ftkit run`` on a local job: an exponent-form learning rate trains; a bad percent stops before any stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftkit.cli import main

from .conftest import ChatFiles

pytest.importorskip("mlflow")

JOB = """\
name: run-cli
backend: local
model: {{name: tiny, path: {model}}}
data: {{train_file: {train}, test_file: {test}, percent: {percent}}}
finetune:
  learning_rate: 5e-6
  max_steps: 2
  per_device_train_batch_size: 8
  max_seq_length: 256
  evaluation_strategy: disable
local: {{home: {home}, device: cpu, max_eval_examples: 8}}
"""


def _job(tmp_path: Path, model: Path, files: ChatFiles, percent: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(
        JOB.format(model=model, train=files.train, test=files.test, percent=percent, home=tmp_path / "home"),
        encoding="utf-8",
    )
    return path


@pytest.mark.slow
def test_learning_rate_in_exponent_form_trains(
    tmp_path: Path, tiny_model_dir: Path, chat_files: ChatFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    """``learning_rate: 5e-6`` (a string to YAML 1.1) is the number 5e-06 all the way to the finished job."""
    job = _job(tmp_path, tiny_model_dir, chat_files, "100")
    assert main(["run", "--no-deploy", "--poll", "0.5", str(job)]) == 0, capsys.readouterr().err
    (run_json,) = (tmp_path / "home").glob("runs/*/run.json")
    record = json.loads(run_json.read_text())
    assert record["parameters"]["learning_rate"] == 5e-06
    assert record["finetune_job"]["status"] == "Completed"
    (config,) = (tmp_path / "home").glob("jobs/*/config.json")
    assert json.loads(config.read_text())["learning_rate"] == 5e-06


def test_bad_percent_stops_before_the_model_stage(
    tmp_path: Path, tiny_model_dir: Path, chat_files: ChatFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    """``percent: -5`` is the validate message, exit 1, and no stage has started (nothing under the home)."""
    job = _job(tmp_path, tiny_model_dir, chat_files, "-5")
    assert main(["run", str(job)]) == 1
    err = capsys.readouterr().err
    assert f"{job}:4: data.percent: -5 is out of range: must be above 0 and at most 100" in err
    assert "model " not in err
    assert "Traceback" not in err
    assert not (tmp_path / "home").exists()
