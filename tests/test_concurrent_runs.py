"""Two `ftkit run` of one job at once in one ftkit home: distinct jobs, endpoints and run records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def demo_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ftkit.demo import prepare_demo

    return prepare_demo(tmp_path_factory.mktemp("demo"), seed=0, steps=10)  # a model, not a good one


def run_twice(job: Path, home: Path, *extra: str) -> list[tuple[int, str, str]]:
    """Start two `ftkit run JOB` in ``home`` at the same moment and wait for both."""
    env = {**os.environ, "FTKIT_HOME": str(home)}
    argv = [sys.executable, "-m", "ftkit", "run", str(job), "--poll", "0.3", *extra]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in "ab"]
    outputs = [p.communicate(timeout=600) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs, strict=True)]


def running_mlflow_runs(home: Path) -> list[str]:
    from ftkit.backends.local.tracking import MlflowStore, client

    c = client(MlflowStore.at(home))
    experiments = [e.experiment_id for e in c.search_experiments()]
    return [r.info.run_id for r in c.search_runs(experiments) if r.info.status == "RUNNING"]


@pytest.mark.slow
def test_two_runs_at_once_in_a_fresh_then_a_used_home(demo_job: Path, tmp_path: Path) -> None:
    """Fresh home: both create and migrate the MLflow store under its lock and succeed. Used home: both
    deploy, each to its own endpoint, with its own job and run record; nothing is left RUNNING or serving."""
    home = tmp_path / "home"
    results = run_twice(demo_job, home, "--no-deploy")
    for code, _, err in results:
        assert code == 0, err
        assert "Traceback" not in err
    results += run_twice(demo_job, home)
    for code, _, err in results:
        assert code == 0, err
        assert "Traceback" not in err

    records = [json.loads(p.read_text()) for p in sorted(home.glob("runs/*/run.json"))]
    assert len(records) == 4
    assert all(r["status"] == "succeeded" for r in records)
    jobs = {r["finetune_job"]["name"] for r in records}
    assert len(jobs) == 4  # never one job shared by two runs
    endpoints = [r["endpoint"]["name"] for r in records if "endpoint" in r]
    assert len(endpoints) == len(set(endpoints)) == 2
    versions = {(r["registered_model"]["name"], r["registered_model"]["version"]) for r in records}
    assert len(versions) == 4
    assert running_mlflow_runs(home) == []
    assert not list(home.glob("endpoints/*/endpoint.json"))
