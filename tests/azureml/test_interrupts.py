"""SIGINT/SIGTERM during an azureml run on FakeAzureML: the billed endpoint is deleted, the job is reported."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

import ftkit
from ftkit.backends.azureml import AzureMLBackend
from ftkit.interrupts import Interrupted
from ftkit.jobfile import JobFile
from ftkit.runner import StageEvent
from ftkit.testing import FakeAzureML, FakeClock


def signal_on(stage: str, text: str, signum: int) -> Callable[[StageEvent], None]:
    """An event hook that sends this process ``signum`` when a ``stage`` event containing ``text`` arrives."""

    def hook(event: StageEvent) -> None:
        if event.stage == stage and text in event.message:
            os.kill(os.getpid(), signum)

    return hook


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_deploying_deletes_the_endpoint(
    fake: FakeAzureML, backend: AzureMLBackend, job: JobFile, tmp_path: Path, clock: FakeClock, signum: int
) -> None:
    """Interrupted once the endpoint is being created: it is deleted in the workspace, run.json says so."""
    with pytest.raises(Interrupted) as info:
        ftkit.run(
            job,
            backend,
            on_event=signal_on("deploy", "serving at", signum),
            run_dir=tmp_path / "run",
            poll_s=60,
            clock=clock,
            sleep=clock.sleep,
        )
    exc = info.value
    assert exc.exit_code == 128 + signum
    assert exc.stage == "deploy"
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    name = record["endpoint"]["name"]
    assert fake.endpoint(name) is None
    assert record["status"] == "interrupted"
    assert record["interrupted"]["signal"] == signal.Signals(signum).name
    assert f"endpoint {name} deleted" in record["interrupted"]["cleaned"]
    assert exc.left == []
    assert f"cleaned  endpoint {name} deleted" in exc.report()
    # The handlers are the previous ones again once the run is over.
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_signal_while_training_reports_the_running_job(
    fake: FakeAzureML, backend: AzureMLBackend, job: JobFile, tmp_path: Path, clock: FakeClock
) -> None:
    """An Azure ML job is left running by default (a cancelled pipeline cannot resume): the report says how
    to cancel it, and `stop_job_on_interrupt=True` cancels it instead."""
    with pytest.raises(Interrupted) as info:
        ftkit.run(
            job,
            backend,
            on_event=signal_on("finetune", "submitted job", signal.SIGTERM),
            run_dir=tmp_path / "run",
            poll_s=60,
            clock=clock,
            sleep=clock.sleep,
        )
    (left,) = info.value.left
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    name = record["finetune_job"]["name"]
    assert left == f"job {name} is still running; stop it with `ftkit job cancel {name} --backend azureml`"
    assert backend.get_job(name).status not in ("Canceled", "CancelRequested")

    with pytest.raises(Interrupted) as info:
        ftkit.run(
            job,
            backend,
            on_event=signal_on("finetune", "submitted job", signal.SIGINT),
            run_dir=tmp_path / "run2",
            poll_s=60,
            clock=clock,
            sleep=clock.sleep,
            stop_job_on_interrupt=True,
        )
    record = json.loads((tmp_path / "run2" / "run.json").read_text())
    name = record["finetune_job"]["name"]
    assert backend.get_job(name).status == "Canceled"
    assert info.value.cleaned == [f"job {name} stopped (Canceled)"]


def test_job_commands_on_the_workspace(
    fake: FakeAzureML,
    backend: AzureMLBackend,
    job: JobFile,
    tmp_path: Path,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`ftkit job list/show/cancel --backend azureml` read and cancel the workspace's job (jobs.list, jobs.get,
    begin_cancel); `job logs` points at the studio instead."""
    from ftkit.cli import job_control, main

    monkeypatch.setattr(job_control, "_azureml_backend", lambda args: backend)
    with pytest.raises(Interrupted):
        ftkit.run(
            job,
            backend,
            on_event=signal_on("finetune", "submitted job", signal.SIGINT),
            run_dir=tmp_path / "run",
            poll_s=60,
            clock=clock,
            sleep=clock.sleep,
        )
    name = json.loads((tmp_path / "run" / "run.json").read_text())["finetune_job"]["name"]
    capsys.readouterr()
    assert main(["job", "cancel", name, "--backend", "azureml"]) == 0
    assert capsys.readouterr().out.strip() == f"job {name} Canceled"
    assert len(fake.calls("POST", r"/jobs/[^/]+/cancel")) == 1
    assert main(["job", "list", "--backend", "azureml"]) == 0
    listed = capsys.readouterr().out
    assert listed.splitlines()[0].startswith("NAME ")
    assert listed.splitlines()[1].startswith(f"{name}  Canceled")
    assert main(["job", "show", name, "--backend", "azureml"]) == 0
    shown = capsys.readouterr().out
    assert f"name         {name}" in shown
    assert "status       Canceled" in shown
    assert "studio       https://" in shown
    assert main(["job", "logs", name, "--backend", "azureml"]) == 2
