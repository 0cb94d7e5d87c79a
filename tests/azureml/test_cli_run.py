"""``ftkit run`` on Azure ML through the real azure-ai-ml over FakeAzureML: --dry-run sends nothing, --json parses."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

import ftkit.runner
from ftkit.backends.azureml import AzureMLBackend
from ftkit.cli import main
from ftkit.testing import FakeAzureML

from .conftest import EXAMPLE


@pytest.fixture
def job_path(tmp_path: Path, data_files: dict[str, Path]) -> Path:
    raw = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    raw["data"] = {"train_file": str(data_files["train"]), "test_file": str(data_files["test"])}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.fixture
def on_fake(backend: AzureMLBackend, monkeypatch: pytest.MonkeyPatch) -> AzureMLBackend:
    """`ftkit run` builds its backend from the job file; here that backend talks to the fake."""
    monkeypatch.setattr(ftkit.runner, "backend_for_job", lambda job: backend)
    return backend


def test_dry_run_sends_no_request(
    fake: FakeAzureML, on_fake: AzureMLBackend, job_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(job_path), "--dry-run", "--json", "--set", "finetune.num_train_epochs=1"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["dry_run"] is True
    assert record["body"]["properties"]["jobs"]["node"]["inputs"]["num_train_epochs"]["value"] == "1"
    assert fake.requests == []


def test_json_prints_the_run_record_and_the_set_keys_are_in_it(
    fake: FakeAzureML, on_fake: AzureMLBackend, job_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same command without --dry-run runs (the control for the test above) and --json gives run.json."""
    out_dir = tmp_path / "out"
    argv = ["run", str(job_path), "--json", "--poll", "0.01", "--output", str(out_dir)]
    assert main([*argv, "--set", "finetune.num_train_epochs=1", "--set", "score.max_new_tokens=20"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    assert record == json.loads((out_dir / "run.json").read_text(encoding="utf-8"))
    assert record["overrides"] == {"finetune.num_train_epochs": 1, "score.max_new_tokens": 20}
    assert record["parameters"]["num_train_epochs"] == 1
    assert record["endpoint"]["kept"] is False
    assert len(fake.calls("PUT", r"/jobs/[^/]+$")) == 1
    assert "score    done  answer: " in captured.err
    # The job is named once, when submitted; its status lines do not repeat the name.
    (submitted,) = [line for line in captured.err.splitlines() if "submitted job" in line]
    job_name = submitted.split("submitted job ", 1)[1].split()[0]
    assert len([line for line in captured.err.splitlines() if " finetune " in line and job_name in line]) == 1
    assert "finetune ....  Running" in captured.err


def test_keep_endpoint_keeps_it(
    fake: FakeAzureML, on_fake: AzureMLBackend, job_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(job_path), "--keep-endpoint", "--poll", "0.01", "--output", str(tmp_path / "o")]) == 0
    captured = capsys.readouterr()
    out = captured.out
    record = json.loads((tmp_path / "o" / "run.json").read_text(encoding="utf-8"))
    assert record["endpoint"]["kept"] is True
    assert fake.endpoint(record["endpoint"]["name"]) is not None
    # Where to reach what is left running: its URLs in run.json and in the summary.
    assert record["endpoint"]["scoring_uri"].startswith(f"https://{record['endpoint']['name']}.")
    assert f"  scoring        {record['endpoint']['scoring_uri']}" in out
    # The sample answer is text, not a Python dict; the loss-curve PNG is named in the summary.
    answer = next(line for line in out.splitlines() if line.startswith("sample answer"))
    assert "{'output'" not in answer
    if importlib.util.find_spec("matplotlib") is not None:
        assert f"loss curves      {tmp_path / 'o' / 'loss.png'}" in out
        assert (tmp_path / "o" / "loss.png").read_bytes().startswith(b"\x89PNG")
    else:  # a core-only install (`nox -s mindeps`): the review says which extra draws the curves
        assert "no loss curves: matplotlib is not installed: pip install 'ftkit[plots]'" in captured.err
        assert "loss curves" not in out


def test_json_on_failure_still_prints_the_record(
    fake: FakeAzureML, on_fake: AzureMLBackend, job_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.fail_job("CUDA out of memory")
    assert main(["run", str(job_path), "--json", "--poll", "0.01", "--output", str(tmp_path / "o")]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"]["type"] == "JobFailedError"
    assert captured.err.rstrip().splitlines()[-1].startswith("error: ")
