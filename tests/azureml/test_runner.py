"""ftkit.run: the notebook's whole flow through the job runner, on the real azure-ai-ml over FakeAzureML."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest
import yaml

import ftkit
from ftkit.backends.azureml import AzureMLBackend
from ftkit.exceptions import JobFailedError, QuotaError
from ftkit.jobfile import JobFile
from ftkit.runner import StageEvent
from ftkit.testing import FakeAzureML, FakeClock

from .conftest import REPO


def test_run_walks_every_stage_and_leaves_nothing_running(
    fake: FakeAzureML, backend: AzureMLBackend, job: JobFile, tmp_path: Path, clock: FakeClock
) -> None:
    """model -> ... -> cleanup in order; one job, one endpoint, scored with the deployment header, then deleted."""
    events: list[StageEvent] = []
    result = ftkit.run(
        job, backend, on_event=events.append, run_dir=tmp_path / "run", poll_s=60, clock=clock, sleep=clock.sleep
    )

    done = [e.stage for e in events if e.done]
    assert done == ["model", "compute", "data", "finetune", "metrics", "register", "deploy", "score", "cleanup"]
    assert result.job.status == "Completed"
    assert result.plan.parameters["apply_lora"] == "true"
    assert result.registered.name == "Phi-3-mini-4k-instruct-ultrachat-200k"
    assert result.score_response is not None
    assert len(fake.calls("PUT", r"/jobs/[^/]+$")) == 1
    scoring = [r for r in fake.calls("POST") if "/score" in r.url]
    assert scoring
    assert all(r.headers.get("azureml-model-deployment") == "demo" for r in scoring)
    assert result.endpoint is not None
    assert fake.endpoint(result.endpoint.name) is None
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["component"] == "chat_completion_pipeline:0.0.82"
    assert record["model"]["version"] == result.plan.model.version
    assert set(record["data"]["sha256"]) == {"train", "test"}
    assert record["endpoint"]["kept"] is False


def test_a_failed_job_stops_the_run_before_anything_is_deployed(
    fake: FakeAzureML, backend: AzureMLBackend, job: JobFile, tmp_path: Path, clock: FakeClock
) -> None:
    """A failed fine-tuning job raises JobFailedError; no endpoint is created; run.json still records it."""
    fake.fail_job("CUDA out of memory")
    with pytest.raises(JobFailedError, match="Failed"):
        ftkit.run(job, backend, run_dir=tmp_path / "run", poll_s=60, clock=clock, sleep=clock.sleep)
    assert fake.calls("PUT", "/onlineEndpoints/") == []
    assert json.loads((tmp_path / "run" / "run.json").read_text())["finetune_job"]["name"]
    error = json.loads((tmp_path / "run" / "run.json").read_text())["error"]
    assert error["type"] == "JobFailedError"
    assert "ended Failed" in error["message"]


def test_a_quota_failure_at_deploy_still_deletes_the_endpoint(
    fake: FakeAzureML, backend: AzureMLBackend, job: JobFile, tmp_path: Path, clock: FakeClock
) -> None:
    """OutOfQuota on the deployment raises QuotaError, and the endpoint the run created is deleted."""
    fake.fail_deployment_quota()
    with pytest.raises(QuotaError):
        ftkit.run(job, backend, run_dir=tmp_path / "run", poll_s=60, clock=clock, sleep=clock.sleep)
    assert len(fake.calls("DELETE", r"/onlineEndpoints/[^/]+$")) == 1
    assert all(fake.endpoint(r.path.rsplit("/", 1)[-1]) is None for r in fake.calls("DELETE"))


def test_relative_data_files_follow_the_job_file(
    fake: FakeAzureML,
    backend: AzureMLBackend,
    data_files: dict[str, Path],
    tmp_path: Path,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """train_file/test_file relative to the job file are found from any working directory, as validate shows them."""
    jobs = tmp_path / "jobs"
    (jobs / "data").mkdir(parents=True)
    for path in data_files.values():
        (jobs / "data" / path.name).write_bytes(path.read_bytes())
    text = (REPO / "examples" / "phi3-ultrachat.yaml").read_text()
    loaded = JobFile.from_yaml(text)
    data = {"train_file": f"data/{data_files['train'].name}", "test_file": f"data/{data_files['test'].name}"}
    job_path = jobs / "job.yaml"
    # The example with its data section replaced (a second `data:` section would be a duplicate key).
    job_path.write_text(yaml.safe_dump({**yaml.safe_load(text), "data": data}, sort_keys=False), encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = ftkit.run(
        job_path, backend, deploy=False, run_dir=tmp_path / "run", poll_s=60, clock=clock, sleep=clock.sleep
    )
    assert loaded.data.train_file is None
    assert result.data_files["train"] == str(jobs / "data" / data_files["train"].name)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert set(record["data"]["sha256"]) == {"train", "test"}


def test_an_empty_scoring_file_skips_scoring_and_still_deletes_the_endpoint(
    fake: FakeAzureML, backend: AzureMLBackend, job: JobFile, tmp_path: Path, clock: FakeClock
) -> None:
    """With no conversation to send, the score stage says so; the run completes and leaves nothing running."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    job = attrs.evolve(job, data=attrs.evolve(job.data, test_file=str(empty)))
    events: list[StageEvent] = []
    result = ftkit.run(
        job, backend, on_event=events.append, run_dir=tmp_path / "run", poll_s=60, clock=clock, sleep=clock.sleep
    )
    assert result.score_response is None
    assert any(e.stage == "score" and e.message.startswith("skipped: no local conversation") for e in events)
    assert not [r for r in fake.calls("POST") if "/score" in r.url]
    assert result.endpoint is not None
    assert fake.endpoint(result.endpoint.name) is None


def test_a_bad_parameter_fails_before_any_service_call(
    fake: FakeAzureML, backend: AzureMLBackend, job: JobFile, tmp_path: Path, clock: FakeClock
) -> None:
    """A typo in finetune is reported before the model, compute or data stages touch the workspace."""
    import attrs

    from ftkit.exceptions import ValidationError

    bad = attrs.evolve(job, finetune=attrs.evolve(job.finetune, extra={"learning_rat": 1e-5}))
    before = len(fake.requests)
    with pytest.raises(ValidationError, match="did you mean learning_rate"):
        ftkit.run(bad, backend, run_dir=tmp_path / "run", clock=clock, sleep=clock.sleep)
    assert len(fake.requests) == before
