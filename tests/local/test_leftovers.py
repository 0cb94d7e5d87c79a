"""What kill -9 of ``ftkit run`` leaves behind: ``ftkit cleanup`` stops the orphaned worker and removes stale
staging copies (and nothing that a live process still uses)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from .conftest import ChatFiles

pytest.importorskip("mlflow")


def _ftkit(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    ftkit = Path(sys.executable).with_name("ftkit")
    env = {**os.environ, "FTKIT_HOME": str(home)}
    return subprocess.run([str(ftkit), *args], capture_output=True, text=True, timeout=300, env=env, check=False)


def _record(home: Path) -> dict[str, object] | None:
    for path in home.glob("jobs/*/job.json"):
        try:
            return dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return None
    return None


def _gone(pid: int, limit_s: float = 120.0) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cleanup_stops_the_worker_of_a_killed_run(tmp_path: Path, tiny_model_dir: Path, chat_files: ChatFiles) -> None:
    home = tmp_path / "home"
    job = tmp_path / "job.yaml"
    job.write_text(
        f"name: orphan\nbackend: local\nmodel: {{name: tiny, path: {tiny_model_dir}}}\n"
        f"data: {{train_file: {chat_files.train}, test_file: {chat_files.test}}}\n"
        "finetune: {max_steps: 100000, per_device_train_batch_size: 2, max_seq_length: 128, "
        "evaluation_strategy: disable}\n"
        f"local: {{home: {home}, device: cpu, save_steps: 5}}\n",
        encoding="utf-8",
    )
    env = {**os.environ, "FTKIT_HOME": str(home)}
    run = subprocess.Popen(
        [sys.executable, "-m", "ftkit", "run", "--no-deploy", "--poll", "0.2", str(job)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    worker: int | None = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and worker is None:
            record = _record(home)
            if record is not None and record.get("status") == "Running" and record.get("progress"):
                worker = int(str(record["pid"]))
            time.sleep(0.2)
        assert worker is not None, f"the job never trained: {_record(home)}"
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=60)
        assert not _gone(worker, limit_s=2), "the worker died with its CLI: nothing to test"

        listed = _ftkit("job", "list", home=home)
        assert "Running" in listed.stdout, listed.stdout
        dry = _ftkit("cleanup", "--dry-run", home=home)
        assert dry.returncode == 0, dry.stderr
        assert "would stop orphaned training job" in dry.stdout, dry.stdout
        assert psutil.pid_exists(worker)

        done = _ftkit("cleanup", home=home)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "stopped orphaned training job" in done.stdout, done.stdout
        assert _gone(worker)
        record = _record(home)
        assert record is not None
        assert record["status"] == "Canceled"
        name = str(record["name"])
        assert list((home / "jobs" / name / "output" / "checkpoints").glob("checkpoint-*"))
        again = _ftkit("cleanup", home=home)
        assert "nothing to clean up" in again.stdout, again.stdout
    finally:
        if run.poll() is None:
            run.kill()
        if worker is not None and not _gone(worker, limit_s=0):
            os.kill(worker, signal.SIGKILL)


def test_cleanup_removes_stale_staging_copies_only(tmp_path: Path) -> None:
    home = tmp_path / "home"
    staging = home / "tmp"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = staging / f"ftkit-mlflow-{int(dead.stdout)}-abc123"
    live = staging / f"ftkit-mlflow-{os.getpid()}-def456"
    for folder in (stale, live):
        (folder / "model").mkdir(parents=True)
        (folder / "model" / "model.safetensors").write_bytes(b"weights")
    dry = _ftkit("cleanup", "--dry-run", home=home)
    assert f"would remove stale staging copy {stale}" in dry.stdout, dry.stdout
    assert stale.exists()
    done = _ftkit("cleanup", home=home)
    assert done.returncode == 0, done.stderr
    assert f"removed stale staging copy {stale}" in done.stdout
    assert not stale.exists()
    assert live.exists()  # this process is alive: its copy may be in use
