"""The evaluate stage on Azure ML, through the real azure-ai-ml client over FakeAzureML: one endpoint, two
deployments, the base one at 0% traffic addressed by the deployment header, deleted with the rest."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest

import ftkit
from ftkit.backends.azureml import AzureMLBackend
from ftkit.evaluation import Check, EvaluateSection, Requirement
from ftkit.exceptions import EvaluationGateError
from ftkit.jobfile import JobFile
from ftkit.testing import FakeAzureML, FakeClock

pytest.importorskip("rouge_score")

# FakeAzureML answers "[<deployment>:<digest>] You asked: ...": the tuned deployment is `demo`.
SETTINGS = EvaluateSection(
    prompts=3,
    metrics=("loss", "rouge_l"),
    checks=(Check(name="routed", kind="starts_with", value="[demo:"),),
    require=(Requirement(metric="check:routed", min_delta=0.5),),
    bootstrap=200,
)


def _run(job: JobFile, backend: AzureMLBackend, tmp_path: Path, clock: FakeClock) -> ftkit.RunResult:
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]})
            + "\n"
            for i in range(4)
        ),
        encoding="utf-8",
    )
    job = attrs.evolve(job, data=attrs.evolve(job.data, test_file=str(held_out)))
    return ftkit.run(job, backend, run_dir=tmp_path / "run", poll_s=60, clock=clock, sleep=clock.sleep)


def test_two_deployments_one_endpoint_header_routed(
    fake: FakeAzureML, backend: AzureMLBackend, job: JobFile, tmp_path: Path, clock: FakeClock
) -> None:
    result = _run(attrs.evolve(job, evaluate=SETTINGS), backend, tmp_path, clock)
    assert result.evaluation is not None
    assert result.evaluation.passed
    assert result.endpoint is not None
    name = result.endpoint.name
    puts = [r for r in fake.calls("PUT") if f"/onlineEndpoints/{name}/deployments/" in r.url]
    bodies = {r.url.rsplit("/", 1)[-1].split("?")[0]: r.body for r in puts}
    assert set(bodies) == {"demo", "base"}
    assert bodies["base"]["properties"]["model"].startswith("azureml://registries/azureml/models/Phi-3-mini")
    traffic_puts = [r.body for r in fake.calls("PUT") if r.url.split("?")[0].endswith(f"/onlineEndpoints/{name}")]
    assert all(not (b.get("properties", {}).get("traffic") or {}).get("base") for b in traffic_puts)
    scored = [r.headers.get("azureml-model-deployment") for r in fake.calls("POST") if "/score" in r.url]
    assert scored.count("base") == 3
    assert scored.count("demo") == 1 + 3  # the sample score, then the evaluation
    assert fake.endpoint(name) is None  # deleted with its two deployments
    loss = result.evaluation.metric("loss")
    assert loss.low is None
    assert "not measured on azureml" in (loss.note or "")
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["evaluation"]["base_deployment"]["name"] == "base"
    assert record["evaluation"]["logged_to_run"] is False


def test_a_kept_endpoint_keeps_the_tuned_deployment_only_and_a_users_client_can_score_it(
    fake: FakeAzureML, backend: AzureMLBackend, job: JobFile, tmp_path: Path, clock: FakeClock
) -> None:
    kept = attrs.evolve(job, evaluate=SETTINGS, deploy=attrs.evolve(job.deploy, keep=True))
    result = _run(kept, backend, tmp_path, clock)
    assert result.endpoint is not None
    name = result.endpoint.name
    ml = fake.ml_client()
    assert [d.name for d in ml.online_deployments.list(endpoint_name=name)] == ["demo"]
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"input_data": {"input_string": [[{"role": "user", "content": "hi"}]]}}))
    answer = ml.online_endpoints.invoke(endpoint_name=name, deployment_name="demo", request_file=str(request))
    assert json.loads(answer)["output"].startswith("[demo:")
    ml.online_endpoints.begin_delete(name=name).result()


def test_a_failing_gate_deletes_even_a_kept_endpoint(
    fake: FakeAzureML, backend: AzureMLBackend, job: JobFile, tmp_path: Path, clock: FakeClock
) -> None:
    strict = attrs.evolve(SETTINGS, require=(Requirement(metric="rouge_l", min_delta=0.5),))
    kept = attrs.evolve(job, evaluate=strict, deploy=attrs.evolve(job.deploy, keep=True))
    with pytest.raises(EvaluationGateError, match="rouge_l: improvement lower bound"):
        _run(kept, backend, tmp_path, clock)
    assert not list(fake.ml_client().online_endpoints.list())
    assert (tmp_path / "run" / "evaluation.md").is_file()
