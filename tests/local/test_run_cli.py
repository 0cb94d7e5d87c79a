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


@pytest.mark.slow
def test_a_kept_endpoint_is_reachable_from_the_cli(
    tmp_path: Path, tiny_model_dir: Path, chat_files: ChatFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    """--keep-endpoint: run.json records the endpoint's URLs, and the summary names the command that shows its
    keys (with the job's ftkit home); that command gives the URL and a key the endpoint accepts."""
    import shlex

    import httpx

    from ftkit.backends.local.endpoints import LocalEndpoints

    job = _job(tmp_path, tiny_model_dir, chat_files, "100")
    assert main(["run", "--keep-endpoint", "--poll", "0.5", str(job)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    (run_json,) = (tmp_path / "home").glob("runs/*/run.json")
    record = json.loads(run_json.read_text())
    assert record["model"]["id"] == str(tiny_model_dir)  # the local model's own name, not an Azure asset id
    endpoint = record["endpoint"]
    try:
        assert endpoint["kept"] is True
        assert endpoint["scoring_uri"].startswith("http://127.0.0.1:")
        assert endpoint["openai_uri"].endswith("/v1/chat/completions")
        command = next(line for line in out.splitlines() if line.startswith("  keys "))
        argv = shlex.split(command.split("ftkit ", 1)[1])
        assert argv == ["endpoint", "show", endpoint["name"], "--show-keys", "--home", str(tmp_path / "home")]
        assert main([*argv, "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["scoring_uri"] == endpoint["scoring_uri"]
        body = {"input_data": {"input_string": [[{"role": "user", "content": "hi"}]], "parameters": {}}}
        headers = {"Authorization": f"Bearer {shown['keys']['primary']}"}
        assert httpx.post(endpoint["scoring_uri"], json=body, headers=headers, timeout=60).status_code == 200
    finally:
        LocalEndpoints(tmp_path / "home").delete_endpoint(endpoint["name"])
