"""What kill -9 of ``ftkit run`` leaves behind: ``ftkit cleanup`` stops the orphaned worker and removes stale
staging copies (and nothing that a live process still uses)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from . import realrun
from .conftest import ChatFiles

pytest.importorskip("mlflow")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cleanup_stops_the_worker_of_a_killed_run(tmp_path: Path, tiny_model_dir: Path, chat_files: ChatFiles) -> None:
    home = tmp_path / "home"
    job = realrun.job_file(
        tmp_path / "job.yaml",
        name="orphan",
        model=tiny_model_dir,
        train=chat_files.train,
        test=chat_files.test,
        home=home,
        finetune="max_steps: 100000\nper_device_train_batch_size: 2\nmax_seq_length: 128\nevaluation_strategy: disable",
        local="save_steps: 5",
    )
    run = realrun.start_run(job, home)
    worker: int | None = None
    try:
        running = realrun.wait_for_record(
            home, lambda r: r.get("status") == "Running" and r.get("progress"), "training", proc=run
        )
        worker = int(str(running["pid"]))
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=60)
        assert not realrun.gone(worker, limit_s=2), "the worker died with its CLI: nothing to test"

        listed = realrun.ftkit("job", "list", home=home)
        assert "Running" in listed.stdout, listed.stdout
        dry = realrun.ftkit("cleanup", "--dry-run", home=home)
        assert dry.returncode == 0, dry.stderr
        assert "would stop orphaned training job" in dry.stdout, dry.stdout
        assert psutil.pid_exists(worker)

        done = realrun.ftkit("cleanup", home=home)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "stopped orphaned training job" in done.stdout, done.stdout
        assert realrun.gone(worker)
        record = realrun.record(home)
        assert record is not None
        assert record["status"] == "Canceled"
        name = str(record["name"])
        assert list((home / "jobs" / name / "output" / "checkpoints").glob("checkpoint-*"))
        again = realrun.ftkit("cleanup", home=home)
        assert "nothing to clean up" in again.stdout, again.stdout
    finally:
        if run.poll() is None:
            run.kill()
        if worker is not None and not realrun.gone(worker, limit_s=0):
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
    dry = realrun.ftkit("cleanup", "--dry-run", home=home)
    assert f"would remove stale staging copy {stale}" in dry.stdout, dry.stdout
    assert stale.exists()
    done = realrun.ftkit("cleanup", home=home)
    assert done.returncode == 0, done.stderr
    assert f"removed stale staging copy {stale}" in done.stdout
    assert not stale.exists()
    assert live.exists()  # this process is alive: its copy may be in use
