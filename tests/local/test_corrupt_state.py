"""State files that are not what ftkit wrote: one error naming the file and what to do, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ChatFiles

pytest.importorskip("mlflow")


def _ftkit(*args: str, home: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    ftkit = Path(sys.executable).with_name("ftkit")
    env = {**os.environ, "FTKIT_HOME": str(home)}
    return subprocess.run(
        [str(ftkit), *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd, check=False
    )


def _one_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    (line,) = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    return line


@pytest.mark.parametrize(
    "content", ['{"name": "job-1", "status": "Runn', "\xff\xfe garbage", '["a list"]', '{"unknown": 1}']
)
def test_a_corrupt_job_json(tmp_path: Path, content: str) -> None:
    """`job show/logs/cancel` name the file and say what to do; `job list` shows the job as unreadable."""
    home = tmp_path / "home"
    folder = home / "jobs" / "job-1"
    folder.mkdir(parents=True)
    (folder / "job.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    for command in (("job", "show", "job-1"), ("job", "logs", "job-1"), ("job", "cancel", "job-1")):
        line = _one_error(_ftkit(*command, home=home))
        assert str(folder / "job.json") in line, line
        assert "remove the job's folder" in line, line
    listed = _ftkit("job", "list", home=home)
    assert listed.returncode == 0, listed.stderr
    assert "Traceback" not in listed.stderr
    (row,) = [ln for ln in listed.stdout.splitlines() if ln.startswith("job-1")]
    assert "Unreadable" in row
    assert "no jobs" not in listed.stdout


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_mlflow_store(tmp_path: Path, tiny_model_dir: Path, chat_files: ChatFiles, damage: str) -> None:
    """`ftkit run` on a home whose mlflow.db is truncated or overwritten: one error naming the file."""
    home = tmp_path / "home"
    db = home / "mlflow.db"
    if damage == "truncate":
        check = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from ftkit.backends.local.tracking import *; client(MlflowStore.at({str(home)!r}))",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert check.returncode == 0, check.stderr
        with db.open("r+b") as f:
            f.truncate(db.stat().st_size // 2)
    else:
        home.mkdir()
        db.write_bytes(b"this is not a database\n" * 200)
    job = tmp_path / "job.yaml"
    job.write_text(
        f"name: damaged\nbackend: local\nmodel: {{name: tiny, path: {tiny_model_dir}}}\n"
        f"data: {{train_file: {chat_files.train}, test_file: {chat_files.test}}}\n"
        "finetune: {max_steps: 1, evaluation_strategy: disable, max_seq_length: 128}\n"
        f"local: {{home: {home}, device: cpu}}\n",
        encoding="utf-8",
    )
    line = _one_error(_ftkit("run", "--no-deploy", str(job), home=home))
    assert str(db) in line, line
    assert "is damaged" in line, line
    assert "restore it from a backup" in line, line
