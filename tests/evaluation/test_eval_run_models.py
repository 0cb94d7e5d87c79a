"""``ftkit eval --run`` deploys the models the backend's registry holds, not ones rebuilt from ``run.json``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ftkit.cli.evaluate
from ftkit.backends.base import JobHandle, RegisterRequest
from ftkit.cli.main import main
from ftkit.exceptions import NotFoundError
from ftkit.testing import ScriptedBackend

JOB = """\
name: pirate
backend: azureml
model: {name: Phi-3-mini-4k-instruct}
evaluate:
  prompts: 2
  metrics: []
  checks:
    - {name: echo, kind: contains, value: asked}
"""


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    (tmp_path / "job.yaml").write_text(JOB, encoding="utf-8")
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]} for i in range(3)
    ]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run = tmp_path / "run"
    run.mkdir()
    record = {
        "job_file": str(tmp_path / "job.yaml"),
        "model": {"name": "Phi-3-mini-4k-instruct", "version": "14", "id": "stale"},
        "registered_model": {"name": "ft", "version": "7", "id": "stale", "path": None},
        "data": {"files": {"test": str(tmp_path / "test.jsonl")}},
    }
    (run / "run.json").write_text(json.dumps(record), encoding="utf-8")
    return run


def _backend(monkeypatch: pytest.MonkeyPatch) -> ScriptedBackend:
    backend = ScriptedBackend()  # resolves a pinned version as asked
    monkeypatch.setattr(ftkit.cli.evaluate, "_backend", lambda name, job: backend)
    return backend


def test_the_tuned_model_comes_from_the_registry_and_the_base_at_the_runs_version(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = _backend(monkeypatch)
    backend.register_model(RegisterRequest(job=JobHandle(name="job-1", status="Completed"), name="ft", version="7"))
    assert main(["eval", "--run", str(run_dir)]) == 0
    assert backend.requests("get_model") == [("ft", "7")]
    (resolved,) = backend.requests("resolve_model")
    assert resolved.version == "14"  # the run's base model, not the registry's newest
    tuned, base = backend.requests("create_deployment")
    assert tuned.model.id == "models:/ft/7"
    assert tuned.model.tags["ftkit.finetune_job"] == "job-1"  # the registry's model, with its lineage tags
    assert base.model.id == "azureml://registries/azureml/models/Phi-3-mini-4k-instruct/versions/14"
    assert backend.operations()[-1] == "delete_endpoint"
    assert "report:" in capsys.readouterr().out


def test_a_model_gone_from_the_registry_fails_before_any_deployment(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = _backend(monkeypatch)
    with pytest.raises(NotFoundError, match="model ft:7 not found"):
        ftkit.cli.evaluate._eval(_args(run_dir))
    assert "create_endpoint" not in backend.operations()


def _args(run_dir: Path) -> object:
    import argparse

    return argparse.Namespace(run=run_dir, tuned=None, base=None, data=None, job=None, backend=None, prompts=None,
                              out=None, json=False)  # fmt: skip
