"""Background processes never import from the caller's directory (the worker, the endpoint server, torchrun ranks).

A module-named file planted in the directory ``ftkit run`` starts from must never be imported: each one writes a
marker file and raises, so an import both leaves evidence and breaks the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ChatFiles

pytest.importorskip("mlflow")
pytest.importorskip("fastapi")

# Modules the worker, the server or torchrun import (a stdlib package too: the caller's directory comes first).
PLANTED = ("peft", "tokenizers", "safetensors", "uvicorn", "fastapi", "concurrent", "accelerate", "mlflow")

JOB = """\
name: caller-dir
backend: local
model: {{name: tiny, path: {model}}}
data: {{train_file: {train}, test_file: {test}}}
finetune:
  learning_rate: 1e-3
  max_steps: 2
  per_device_train_batch_size: 8
  max_seq_length: 128
  evaluation_strategy: disable
register: {{name: caller-dir-model}}
deploy: {{deployment_name: blue, request_timeout_ms: 60000}}
score: {{max_new_tokens: 4}}
local: {{home: {home}, device: cpu, max_eval_examples: 8}}
"""


def plant(directory: Path, marker: Path) -> None:
    for name in PLANTED:
        (directory / f"{name}.py").write_text(
            f"import pathlib\npathlib.Path({str(marker)!r}).open('a').write({name!r} + '\\n')\n"
            f"raise SystemExit('planted {name} was imported')\n",
            encoding="utf-8",
        )


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONSAFEPATH", None)  # the children must set it themselves
    return env


def _paths(tmp_path: Path, model: Path, files: ChatFiles) -> dict[str, Path]:
    return {"model": model, "train": files.train, "test": files.test, "home": tmp_path / "home"}


def _run_from_a_planted_directory(tmp_path: Path, job_text: str, *options: str) -> None:
    """``ftkit run`` of ``job_text`` from a directory of planted modules: it succeeds, and none was imported."""
    cwd = tmp_path / "shared"
    cwd.mkdir()
    marker = tmp_path / "imported.txt"
    plant(cwd, marker)
    job = tmp_path / "job.yaml"
    job.write_text(job_text, encoding="utf-8")
    ftkit = Path(sys.executable).with_name("ftkit")
    done = subprocess.run(
        [str(ftkit), "run", *options, "--poll", "0.5", str(job)],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert not marker.exists(), marker.read_text()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_run_with_planted_modules_in_the_working_directory(
    tmp_path: Path, tiny_model_dir: Path, chat_files: ChatFiles
) -> None:
    """A real ``ftkit run`` (train, register, deploy, score, delete) from a directory full of module-named files:
    it completes and none of them is ever imported, by the worker or by the endpoint server."""
    _run_from_a_planted_directory(tmp_path, JOB.format(**_paths(tmp_path, tiny_model_dir, chat_files)))
    (run_json,) = (tmp_path / "home").glob("runs/*/run.json")
    record = json.loads(run_json.read_text())
    assert record["finetune_job"]["status"] == "Completed"
    assert record["status"] == "succeeded", record


def test_child_env_keeps_pythonpath_and_drops_the_working_directory(tmp_path: Path) -> None:
    """A child started like ftkit's background processes sees PYTHONPATH entries but not its working directory."""
    from ftkit.backends.local.spawn import child_env, python_command

    marker = tmp_path / "imported.txt"
    plant(tmp_path, marker)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "users_module.py").write_text("VALUE = 7\n", encoding="utf-8")
    (extra / "probe.py").write_text(
        "import os, sys, users_module, ftkit\n"
        "print(users_module.VALUE, '' in sys.path or os.getcwd() in sys.path)\n"
        "import peft, tokenizers, concurrent.futures\n",
        encoding="utf-8",
    )
    env = child_env({**cli_env(), "PYTHONPATH": str(extra)})
    done = subprocess.run(
        python_command("probe"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["7", "False"]
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_torchrun_ranks_with_planted_modules_in_the_working_directory(
    tmp_path: Path, tiny_model_dir: Path, chat_files: ChatFiles
) -> None:
    """Two CPU ranks (torchrun, gloo) started from a directory of module-named files: none is imported."""
    text = JOB.format(**_paths(tmp_path, tiny_model_dir, chat_files))
    _run_from_a_planted_directory(tmp_path, text.replace("device: cpu,", "device: cpu, processes: 2,"), "--no-deploy")
    (log,) = (tmp_path / "home").glob("jobs/*/train.log")
    assert "on 2 processes" in log.read_text(), log.read_text()[-2000:]  # torchrun and its ranks did run
