"""`ftkit job list | show | logs | cancel` on real background jobs, and the same commands on FakeAzureML."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from ftkit.backends.local import LocalBackend
from ftkit.cli import main

from .conftest import ChatFiles
from .test_backend import _request, _wait

pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> LocalBackend:
    b = LocalBackend(tmp_path_factory.mktemp("home"), device="cpu")
    b.register_model_dir("tiny-phi3", tiny_model_dir)
    return b


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_list_show_logs_and_cancel_a_running_job(
    backend: LocalBackend, chat_files: ChatFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    """A long job is listed Running with its progress, its log is printed, cancel stops it with a checkpoint
    (Canceled), `logs --follow` then ends, and submitting the same request again resumes that job."""
    home = str(backend.home)
    request = _request(backend, chat_files, num_train_epochs=20, per_device_train_batch_size=2, save_steps=10)
    handle = backend.submit_finetune(request)
    assert re.fullmatch(r"ft-[a-z0-9]{6}", handle.name)
    deadline = time.monotonic() + 600  # generous: a loaded machine is slow, not wrong
    log = backend.job_dir(handle.name) / "train.log"
    while not re.search(r"step \d+/", log.read_text()) or "loss" not in (backend.get_job(handle.name).progress or ""):
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)

    code, out, _ = cli(capsys, "job", "list", "--home", home)
    assert code == 0
    assert out.split()[:4] == ["NAME", "STATUS", "SUBMITTED", "DURATION"], out
    assert re.search(
        rf"^{handle.name}  Running\s+\d{{4}}-\d\d-\d\d [\d:]+\s+\S+( \S+)?\s+tiny-test\s+step \d+", out, re.M
    ), out

    code, out, _ = cli(capsys, "job", "show", handle.name, "--home", home)
    assert code == 0
    assert re.search(r"^status\s+Running$", out, re.MULTILINE)
    assert re.search(r"^pid\s+\d+$", out, re.MULTILINE)

    code, out, _ = cli(capsys, "job", "logs", handle.name, "--home", home)
    assert code == 0
    assert re.search(r"step \d+/\d+", out), out

    code, out, _ = cli(capsys, "job", "cancel", handle.name, "--home", home)
    assert code == 0, out
    assert out.strip() == f"job {handle.name} Canceled"
    record = json.loads((backend.job_dir(handle.name) / "job.json").read_text())
    assert record["status"] == "Canceled"
    assert record["pid"] is None
    assert list((backend.job_dir(handle.name) / "output" / "checkpoints").glob("checkpoint-*"))

    code, out, _ = cli(capsys, "job", "logs", handle.name, "--follow", "--home", home)
    assert code == 0  # it returns: the job has ended

    code, out, _ = cli(capsys, "job", "cancel", handle.name, "--home", home)
    assert out.strip() == f"job {handle.name} has already ended (Canceled)"

    again = backend.submit_finetune(request)
    assert again.name == handle.name  # resumed, not a new job
    backend.cancel_job(again.name)
    assert _wait(backend, backend.get_job(again.name)).status in ("Canceled", "Failed")
    assert json.loads((backend.job_dir(handle.name) / "job.json").read_text())["attempts"] == 2

    fresh = LocalBackend(backend.home, device="cpu", new_job=True).submit_finetune(request)  # `ftkit run --new-job`
    assert fresh.name != handle.name
    backend.cancel_job(fresh.name)
    assert _wait(backend, backend.get_job(fresh.name)).is_terminal


def test_unknown_job_is_one_clear_error(backend: LocalBackend, capsys: pytest.CaptureFixture[str]) -> None:
    """`ftkit job show nope` names the jobs there are and exits 1, no traceback."""
    code, _, err = cli(capsys, "job", "show", "nope", "--home", str(backend.home))
    assert code == 1
    assert err.startswith("error: no local job 'nope'")
    assert "Traceback" not in err


def test_a_stale_running_record_is_failed_in_the_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A job.json saying Running for a process that is gone shows (and is written) Failed."""
    from ftkit.backends.local import jobs

    folder = tmp_path / "jobs" / "ft-stale1"
    jobs.write_record(folder, jobs.JobRecord(name="ft-stale1", status="Running", pid=2**22 + 7))
    code, out, _ = cli(capsys, "job", "list", "--home", str(tmp_path))
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["NAME", "STATUS", "SUBMITTED", "DURATION", "DISPLAY", "NAME", "PROGRESS"]
    assert row.startswith("ft-stale1  Failed")
    assert re.search(r"Failed\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+\d+s\s+-$", row), row
    assert json.loads((folder / "job.json").read_text())["status"] == "Failed"
