"""The evaluate stage of JobRunner on ScriptedBackend: base deployment lifecycle, gate, records, early errors."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from ftkit.backends.base import RegisteredModel
from ftkit.exceptions import EvaluationGateError, ValidationError
from ftkit.jobfile import JobFile
from ftkit.runner import JobRunner, RunResult
from ftkit.testing import FakeClock, ScriptedBackend

EVALUATE = """\
evaluate:
  prompts: 6
  metrics: [loss]
  checks:
    - {name: pirate, kind: starts_with, value: Ahoy}
  require:
    - {metric: "check:pirate", min_delta: %s}
"""


def _answer(endpoint: str, deployment: str, body: Mapping[str, Any]) -> Any:
    del endpoint
    question = body["input_data"]["input_string"][0][-1]["content"]
    return {"output": f"Ahoy, matey! {question}" if deployment == "demo" else f"Well: {question}"}


def _losses(model: RegisteredModel, conversations: Sequence[Any]) -> list[tuple[float, int]]:
    per_token = 1.0 if model.name == "ft" else 2.0  # the registered (tuned) model is better
    return [(per_token * 10, 10) for _ in conversations]


def _job(tmp_path: Path, *, min_delta: float = 0.5, keep: bool = False, rows: int = 8, extra: str = "") -> JobFile:
    lines = [
        json.dumps({"messages": [{"role": "user", "content": f"q{i}?"}, {"role": "assistant", "content": "Ahoy!"}]})
        for i in range(rows)
    ]
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    text = (
        "name: ev\nbackend: azureml\nmodel: {name: Phi-3-mini-4k-instruct, version: '15'}\n"
        "compute: {cluster: gpu, size: Standard_ND40rs_v2}\n"
        "data: {train_file: train.jsonl, test_file: test.jsonl, score_split: null}\n"
        f"register: {{name: ft}}\ndeploy: {{keep: {str(keep).lower()}}}\n{EVALUATE % min_delta}{extra}"
    )
    path = tmp_path / "job.yaml"
    path.write_text(text, encoding="utf-8")
    return JobFile.load(path)


def _run(job: JobFile, backend: ScriptedBackend, tmp_path: Path) -> RunResult:
    clock = FakeClock()
    return JobRunner(job, backend, run_dir=tmp_path / "run", poll_s=60, clock=clock, sleep=clock.sleep).run()


def _backend() -> ScriptedBackend:
    return ScriptedBackend(answer=_answer, losses=_losses)


def test_base_on_a_second_deployment_scored_by_name_then_the_endpoint_goes(tmp_path: Path) -> None:
    backend = _backend()
    result = _run(_job(tmp_path), backend, tmp_path)
    assert result.evaluation is not None
    assert result.evaluation.passed
    deployments = [spec.name for spec in backend.requests("create_deployment")]
    assert deployments == ["demo", "base"]
    (base_spec,) = [s for s in backend.requests("create_deployment") if s.name == "base"]
    assert base_spec.model.id == "azureml://registries/azureml/models/Phi-3-mini-4k-instruct/versions/15"
    traffic = backend.requests("set_traffic")
    assert all("base" not in t or t["base"] == 0 for t in traffic)  # never routed: addressed by name only
    scored = {r["deployment"] for r in backend.requests("score")}
    assert scored == {"demo", "base"}
    assert backend.operations()[-1] == "delete_endpoint"
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "succeeded"
    assert record["evaluation"]["status"] == "passed"
    assert record["evaluation"]["summary"]["check:pirate"]["improvement"] == 1.0
    assert record["evaluation"]["summary"]["loss"]["improvement"] == pytest.approx(1.0)
    report = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert len(report["examples"]) == 6
    assert report["examples"][0]["tuned"].startswith("Ahoy")
    assert not (tmp_path / "run" / "evaluation.partial.jsonl").exists()  # whole report written: partial gone
    (logged,) = backend.requests("log_evaluation")
    assert logged["metrics"]["evaluation/check.pirate/tuned"] == 1.0


def test_a_kept_endpoint_loses_only_its_base_deployment(tmp_path: Path) -> None:
    backend = _backend()
    _run(_job(tmp_path, keep=True), backend, tmp_path)
    assert backend.requests("delete_deployment") == [{"endpoint": backend.requests("create_endpoint")[0].name,
                                                       "deployment": "base"}]  # fmt: skip
    assert "delete_endpoint" not in backend.operations()
    (endpoint,) = backend.endpoints.endpoints.values()
    assert set(backend.endpoints.deployments[endpoint.name]) == {"demo"}


def test_the_gate_fails_the_run_and_no_deployment_is_kept(tmp_path: Path) -> None:
    backend = _backend()
    with pytest.raises(EvaluationGateError, match=r"check:pirate: improvement lower bound \+1 < 2"):
        _run(_job(tmp_path, min_delta=2.0, keep=True), backend, tmp_path)
    assert backend.operations()[-1] == "delete_endpoint"
    assert backend.endpoints.endpoints == {}
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "failed"
    assert record["error"]["type"] == "EvaluationGateError"
    assert record["evaluation"]["status"] == "failed requirements"
    assert (tmp_path / "run" / "evaluation.md").is_file()  # the report is there to read why


def test_too_many_prompts_fails_before_anything_is_submitted_or_deployed(tmp_path: Path) -> None:
    backend = _backend()
    with pytest.raises(ValidationError, match="6 prompts requested but .* holds 3 usable"):
        _run(_job(tmp_path, rows=3), backend, tmp_path)
    assert "submit_finetune" not in backend.operations()
    assert "create_endpoint" not in backend.operations()


def test_an_existing_deployment_as_the_base(tmp_path: Path) -> None:
    backend = _backend()
    from ftkit.backends.base import DeploymentSpec, EndpointSpec

    backend.endpoints.create_endpoint(EndpointSpec(name="prod"))
    backend.endpoints.create_deployment(
        DeploymentSpec(name="blue", endpoint="prod", model=RegisteredModel(name="m", version="1", id="m:1"))
    )
    result = _run(_job(tmp_path, extra="  base: prod/blue\n"), backend, tmp_path)
    assert result.evaluation is not None
    assert [s.name for s in backend.requests("create_deployment")] == ["blue", "demo"]
    assert {(r["endpoint"], r["deployment"]) for r in backend.requests("score")} >= {("prod", "blue")}
    loss = result.evaluation.metric("loss")
    assert loss.low is None
    assert "model files" in (loss.note or "")


def test_sigterm_mid_evaluation_deletes_the_base_deployment_and_keeps_what_was_answered(tmp_path: Path) -> None:
    """A stop during generation: the endpoint (with its base deployment) is deleted, run.json says interrupted and
    points at evaluation.partial.jsonl, which holds every answer finished before the signal."""
    import os
    import signal
    import threading
    import time

    from ftkit.interrupts import Interrupted

    calls: list[str] = []
    lock = threading.Lock()

    partial_file = tmp_path / "run" / "evaluation.partial.jsonl"

    def finished() -> int:
        return len(partial_file.read_text().splitlines()) if partial_file.exists() else 0

    def answer(endpoint: str, deployment: str, body: Mapping[str, Any]) -> Any:
        with lock:
            calls.append(deployment)
            fire = len(calls) == 1 + 4  # the sample score, then four evaluation answers
        if fire:
            # Answers are generated by several worker threads: wait (bounded) until three of the answers that
            # came before this one are on disk, so the signal comes after them whatever the threads' order.
            for _ in range(600):
                if finished() >= 3:
                    break
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGTERM)
        return _answer(endpoint, deployment, body)

    backend = ScriptedBackend(answer=answer, losses=_losses)
    job = _job(tmp_path, keep=True)
    with pytest.raises(Interrupted) as info:
        _run(job, backend, tmp_path)
    assert info.value.stage == "evaluate"
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "interrupted"
    assert record["evaluation"]["status"] == "failed"
    partial = Path(record["evaluation"]["partial"])
    answered = [json.loads(line) for line in partial.read_text().splitlines()]
    assert len(answered) >= 3
    assert all(a["answer"] for a in answered)
    # The kept endpoint stays, but never with the base deployment that existed only for the evaluation.
    (endpoint,) = backend.endpoints.endpoints
    assert "base" not in backend.endpoints.deployments[endpoint]
