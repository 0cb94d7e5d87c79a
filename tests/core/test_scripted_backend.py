"""EndpointDeployer and JobRunner on ftkit.testing.ScriptedBackend: the layers above the backends, without any SDK."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import ftkit.runner
from ftkit import EndpointDeployer
from ftkit.backends.base import Backend, FinetuneRequest, RegisteredModel
from ftkit.exceptions import DeploymentError, JobFailedError, QuotaError
from ftkit.jobfile import JobFile
from ftkit.model import FoundationModelRef
from ftkit.runner import JobRunner, StageEvent
from ftkit.testing import FakeClock, ScriptedBackend

MODEL = RegisteredModel(name="ft", version="1", id="models:/ft/1")
CONVERSATION = [{"role": "user", "content": "Hello?"}]
ROW = {"prompt": "q", "prompt_id": "1", "messages": [*CONVERSATION, {"role": "assistant", "content": "Hi."}]}


def test_is_a_backend_and_imports_no_sdk() -> None:
    """ScriptedBackend satisfies the protocol; importing ftkit.testing pulls in neither azure nor torch."""
    assert isinstance(ScriptedBackend(), Backend)
    code = "import sys, ftkit.testing; print(sorted(m for m in ('azure.ai.ml', 'torch') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


class TestDeployer:
    def test_deploy_score_and_clean_up(self) -> None:
        """The deployer creates, deploys with the settings value, routes 100%, scores by name, and deletes."""
        backend = ScriptedBackend()
        with EndpointDeployer(backend, "ep") as deployer:
            deployer.deploy(MODEL)
            answer = deployer.invoke(CONVERSATION)
        assert answer == {"output": "[demo] You asked: Hello?"}
        assert backend.operations() == [
            "create_endpoint",
            "create_deployment",
            "set_traffic",
            "score",
            "delete_endpoint",
        ]
        (spec,) = backend.requests("create_deployment")
        assert (spec.settings.instance_type, spec.settings.max_queue, spec.settings.max_batch_size) == (
            "Standard_NC6s_v3",
            64,
            None,
        )
        assert backend.requests("score")[0]["deployment"] == "demo"
        assert backend.endpoints.endpoints == {}

    def test_job_file_settings_reach_the_backend(self) -> None:
        """deploy: keys (max_queue, max_batch_size, deploy.server) arrive typed in the specs the backend gets."""
        job = JobFile.from_yaml(
            "name: j\nmodel: {name: m}\ndeploy:\n  instance_count: 2\n  max_queue: '8'\n  max_batch_size: 4\n"
            "  request_timeout_ms: 5e3\n  server: {batch_window_ms: 0, max_new_tokens_cap: 64}\n"
        )
        backend = ScriptedBackend()
        with EndpointDeployer.from_job(backend, job, name="ep") as deployer:
            deployer.deploy(MODEL)
        (endpoint,) = backend.requests("create_endpoint")
        (spec,) = backend.requests("create_deployment")
        assert endpoint.server is not None
        assert (endpoint.server.batch_window_ms, endpoint.server.max_new_tokens_cap) == (0, 64)
        assert spec.settings == job.deploy.deployment_settings()
        assert (spec.settings.instance_count, spec.settings.max_queue, spec.settings.max_batch_size) == (2, 8, 4)
        assert spec.settings.request_timeout_ms == 5000

    def test_failed_deployment_still_deletes_the_endpoint(self) -> None:
        """A deployment that fails inside the block: the error propagates and the endpoint is gone."""
        backend = ScriptedBackend(failing_deployments=["demo"])
        with pytest.raises(DeploymentError), EndpointDeployer(backend, "ep") as deployer:
            deployer.deploy(MODEL)
        assert backend.operations()[-1] == "delete_endpoint"
        assert backend.endpoints.endpoints == {}

    def test_blue_green(self) -> None:
        """update() deploys beside, smoke-tests the new deployment, shifts traffic, and deletes the old one."""
        backend = ScriptedBackend()
        green = RegisteredModel(name="ft", version="2", id="models:/ft/2")
        with EndpointDeployer(backend, "ep") as deployer:
            deployer.deploy(MODEL, name="blue")
            info = deployer.update(green, name="green", delete_old=True, smoke_test=CONVERSATION)
        assert info.traffic == {"green": 100}
        assert info.deployments == ("green",)
        assert backend.requests("score")[0]["deployment"] == "green"


def _job(tmp_path: Path, extra: str = "") -> JobFile:
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text(json.dumps(ROW) + "\n", encoding="utf-8")
    text = (
        "name: scripted\nbackend: azureml\nmodel: {name: Phi-3-mini-4k-instruct, version: '15'}\n"
        "compute: {cluster: gpu, size: Standard_ND40rs_v2}\n"
        "data: {train_file: train.jsonl, test_file: test.jsonl, score_split: null}\n"
        "finetune:\n  learning_rate: 5e-6\n  apply_lora: 'true'\n  deepspeed_stage: '2'\n"
        f"deploy: {{max_queue: 8}}\nlocal: {{home: {tmp_path / 'home'}}}\n{extra}"
    )
    path = tmp_path / "job.yaml"
    path.write_text(text, encoding="utf-8")
    return JobFile.load(path)


class TestRunner:
    def _run(self, job: JobFile, backend: ScriptedBackend, tmp_path: Path, **kw: Any) -> ftkit.runner.RunResult:
        clock = FakeClock()
        return JobRunner(job, backend, run_dir=tmp_path / "run", poll_s=60, clock=clock, sleep=clock.sleep, **kw).run()

    def test_one_plan_and_the_request_is_that_plan(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """plan_run runs once; the backend gets the plan (typed values, live schema) plus the uploaded data."""
        plans: list[object] = []
        real = ftkit.runner.plan_run
        monkeypatch.setattr(ftkit.runner, "plan_run", lambda *a, **k: plans.append(a) or real(*a, **k))
        tags = {"model_specific_defaults": "{'learning_rate': '2e-5', 'precision': '16'}"}
        backend = ScriptedBackend(
            models={
                "Phi-3-mini-4k-instruct": FoundationModelRef(name="Phi-3-mini-4k-instruct", version="15", tags=tags)
            }
        )
        result = self._run(_job(tmp_path), backend, tmp_path)
        assert len(plans) == 1
        (request,) = backend.requests("submit_finetune")
        assert isinstance(request, FinetuneRequest)
        assert request.plan is result.plan
        assert request.plan.spec.learning_rate == 2e-5  # the model's default won, decoded from the tag's string
        assert request.plan.spec.precision == 16
        assert request.plan.parameters["apply_lora"] == "true"
        assert request.train_data.startswith("scripted://scripted-train/")
        assert request.compute is not None
        assert request.compute.gpus_per_node == 8
        assert backend.operations().index("component_schema") < backend.operations().index("submit_finetune")
        (spec,) = backend.requests("create_deployment")
        assert spec.settings.max_queue == 8
        assert backend.operations()[-1] == "delete_endpoint"

    def test_bad_file_stops_before_the_model_stage(self, tmp_path: Path) -> None:
        """A missing train file is reported by the offline check: the backend is never called."""
        job = _job(tmp_path)
        (tmp_path / "train.jsonl").unlink()
        backend = ScriptedBackend()
        events: list[StageEvent] = []
        with pytest.raises(ftkit.exceptions.ValidationError, match=r"data\.train_file"):
            JobRunner(job, backend, run_dir=tmp_path / "run", on_event=events.append).run()
        assert backend.calls == []
        assert events == []

    def test_failed_job_deploys_nothing(self, tmp_path: Path) -> None:
        """A job whose script ends Failed raises JobFailedError; no endpoint is created."""
        backend = ScriptedBackend(job_statuses=("Running", "Failed"), job_error="CUDA out of memory")
        with pytest.raises(JobFailedError, match="CUDA out of memory"):
            self._run(_job(tmp_path), backend, tmp_path)
        assert "create_endpoint" not in backend.operations()

    def test_injected_fault_is_reported_with_the_run(self, tmp_path: Path) -> None:
        """A quota error on deployment: the endpoint is deleted and run.json records the error."""
        backend = ScriptedBackend()
        backend.fail("create_deployment", QuotaError("no quota for Standard_NC6s_v3", operation="create_deployment"))
        with pytest.raises(QuotaError):
            self._run(_job(tmp_path), backend, tmp_path)
        assert backend.operations()[-1] == "delete_endpoint"
        assert json.loads((tmp_path / "run" / "run.json").read_text())["error"]["type"] == "QuotaError"
