"""Stops honoured while the worker is busy with something other than a training step (here: a long step-0
evaluation): SIGTERM to ``ftkit run`` and ``ftkit job cancel`` both end the worker with the usual record.

The evaluation is made long (tens of thousands of evaluation rows, one per batch) so that a worker that only
checked for stops between training steps would still be evaluating long after the limits polled here; the tests
poll for states with generous limits and assert no deadline.
"""

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

EVAL_ROWS = 40_000


def _job(tmp_path: Path, model: Path, files: ChatFiles, home: Path) -> Path:
    rows = files.test.read_text(encoding="utf-8").splitlines()
    long_eval = tmp_path / "long_eval.jsonl"
    long_eval.write_text("".join(rows[i % len(rows)] + "\n" for i in range(EVAL_ROWS)), encoding="utf-8")
    job = tmp_path / "job.yaml"
    job.write_text(
        f"name: stop-phases\nbackend: local\nmodel: {{name: tiny, path: {model}}}\n"
        f"data: {{train_file: {files.train}, test_file: {long_eval}}}\n"
        "finetune:\n  max_steps: 4\n  per_device_train_batch_size: 4\n  per_device_eval_batch_size: 1\n"
        "  max_seq_length: 256\n  evaluation_strategy: steps\n  eval_steps: 2\n"
        f"local: {{home: {home}, device: cpu}}\n",
        encoding="utf-8",
    )
    return job


def _start(job: Path, home: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "FTKIT_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "ftkit", "run", "--no-deploy", "--poll", "0.2", str(job)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _record(home: Path) -> dict[str, object] | None:
    for path in home.glob("jobs/*/job.json"):
        try:
            return dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return None
    return None


def _wait_until_evaluating(home: Path, proc: subprocess.Popen[str], limit_s: float = 300.0) -> dict[str, object]:
    """Poll until the worker runs, then leave it time to tokenise and load (seconds; the evaluation takes minutes).

    Should the machine be so slow that it is still tokenising or loading, the stop is honoured there just the same:
    the assertions hold for every phase before the first step.
    """
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        record = _record(home)
        if record is not None and record.get("status") == "Running":
            time.sleep(10)
            return record
        time.sleep(0.2)
    raise AssertionError(f"the worker did not start within {limit_s}s")


def _wait_for_status(home: Path, wanted: str, limit_s: float = 240.0) -> dict[str, object]:
    deadline = time.monotonic() + limit_s
    record = _record(home)
    while time.monotonic() < deadline:
        record = _record(home)
        if record is not None and record.get("status") == wanted:
            return record
        time.sleep(0.2)
    raise AssertionError(f"job.json did not say {wanted} within {limit_s}s: {record}")


def _assert_stopped_in_evaluation(home: Path, record: dict[str, object], pid: int) -> None:
    assert "canceled at step 0" in str(record.get("error")), record
    assert "eval loss" not in str(record.get("progress")), record  # the step-0 evaluation never finished
    deadline = time.monotonic() + 60
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    else:
        assert not psutil.pid_exists(pid), f"the worker {pid} is still running"
    name = str(record["name"])
    # Stopped before the evaluation finished: no step was trained, so there is nothing to checkpoint.
    assert not list((home / "jobs" / name / "output").glob("checkpoints/checkpoint-*"))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigterm_during_the_step_0_evaluation(tmp_path: Path, tiny_model_dir: Path, chat_files: ChatFiles) -> None:
    home = tmp_path / "home"
    proc = _start(_job(tmp_path, tiny_model_dir, chat_files, home), home)
    try:
        running = _wait_until_evaluating(home, proc)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 143, out
        assert "did not stop within" not in out, out
        assert "Traceback" not in out, out
        record = _wait_for_status(home, "Canceled")
        _assert_stopped_in_evaluation(home, record, int(str(running["pid"])))
        (run_json,) = home.glob("runs/*/run.json")
        assert json.loads(run_json.read_text())["status"] == "interrupted"
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_job_cancel_during_the_step_0_evaluation(tmp_path: Path, tiny_model_dir: Path, chat_files: ChatFiles) -> None:
    home = tmp_path / "home"
    proc = _start(_job(tmp_path, tiny_model_dir, chat_files, home), home)
    try:
        running = _wait_until_evaluating(home, proc)
        ftkit = Path(sys.executable).with_name("ftkit")
        cancel = subprocess.run(
            [str(ftkit), "job", "cancel", str(running["name"]), "--home", str(home), "--wait", "240"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        assert "Canceled" in cancel.stdout
        record = _wait_for_status(home, "Canceled")
        _assert_stopped_in_evaluation(home, record, int(str(running["pid"])))
        out, _ = proc.communicate(timeout=300)
        assert "Traceback" not in out, out
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_stop_asked_during_a_checkpoint_write_stops_right_after_it(
    tmp_path: Path, tiny_model_dir: Path, chat_files: ChatFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint being written is the one to resume from: no further step, no second checkpoint."""
    from ftkit.backends.local import training
    from ftkit.backends.local.training import checkpoints

    from .conftest import tiny_train_config

    asked = {"stop": False}
    real_save = checkpoints.save_checkpoint

    def save(*args: object, **kwargs: object) -> None:
        real_save(*args, **kwargs)  # type: ignore[arg-type]
        asked["stop"] = True  # arrives while the checkpoint is written

    monkeypatch.setattr(checkpoints, "save_checkpoint", save)
    config = tiny_train_config(
        tiny_model_dir, chat_files, tmp_path / "out", max_steps=6, save_steps=2, evaluation_strategy="disable"
    )
    result = training.train(config, progress="none", should_stop=lambda: asked["stop"])
    assert result.stopped
    assert result.global_step == 2
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2"]


def test_a_stop_asked_during_an_evaluation_is_honoured_between_its_batches(
    tmp_path: Path, tiny_model_dir: Path, chat_files: ChatFiles
) -> None:
    """Polled between evaluation batches: the step-0 evaluation ends early, nothing is trained or logged."""
    from ftkit.backends.local import training

    from .conftest import tiny_train_config

    polls = {"n": 0}

    def should_stop() -> bool:
        polls["n"] += 1
        return polls["n"] > 8  # the loading phases poll a few times; then a few evaluation batches run

    config = tiny_train_config(tiny_model_dir, chat_files, tmp_path / "out", max_steps=4, per_device_eval_batch_size=1)
    result = training.train(config, progress="none", should_stop=should_stop)
    assert result.stopped
    assert result.global_step == 0
    assert result.first_eval_loss is None
    assert not list((tmp_path / "out").glob("checkpoints/checkpoint-*"))


def test_sigterm_while_the_model_loads_cuts_the_load_short(
    tmp_path: Path, tiny_model_dir: Path, chat_files: ChatFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's SIGTERM handler (stop_now) stops a model load at once: no step, no checkpoint, stopped."""
    from ftkit.backends.local import training
    from ftkit.backends.local.training import model_setup

    from .conftest import tiny_train_config

    real_build = model_setup.build_model
    loads = {"finished": 0}

    def build(*args: object, **kwargs: object) -> object:
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the model loads
        model = real_build(*args, **kwargs)  # type: ignore[arg-type]
        loads["finished"] += 1
        return model

    def on_term(_signum: int, _frame: object) -> None:
        training.stop_now()

    monkeypatch.setattr(model_setup, "build_model", build)
    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        config = tiny_train_config(tiny_model_dir, chat_files, tmp_path / "out", max_steps=4)
        result = training.train(config, progress="none")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result.stopped
    assert result.global_step == 0
    assert loads["finished"] == 0
    training.stop_now()  # outside a phase it may cut short, it does nothing
