"""SIGINT and SIGTERM to a real `ftkit run` at each stage: nothing left running, the run recorded, one message.

Each test starts `python -m ftkit run demo.yaml` (the demo's job: tiny model, local backend) in a fresh ftkit
home, waits for a stage's progress line, sends a signal, and checks what a user would: the exit status
(130/143), one `interrupted by ...` message and no traceback, `run.json` saying `interrupted` at that stage,
no process of the run alive, no port listening, `ftkit endpoint list` empty.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("mlflow")
psutil = pytest.importorskip("psutil")

from ftkit.backends.local.endpoint_process import port_open  # noqa: E402
from ftkit.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def demo_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's job file, model and raw data, prepared once."""
    from ftkit.demo import prepare_demo

    return prepare_demo(tmp_path_factory.mktemp("demo"), seed=0)


@pytest.fixture(scope="module")
def short_job(demo_job: Path) -> Path:
    """The demo's job with 10 training steps: for the stages after fine-tuning, which need a model, not a good one."""
    short = demo_job.with_name("short.yaml")
    short.write_text(demo_job.read_text().replace("\nfinetune:\n", "\nfinetune:\n  max_steps: 10\n", 1))
    return short


class Run:
    """A `ftkit run` subprocess whose stderr is read line by line (and whose endpoints' ports are noted)."""

    def __init__(self, job: Path, home: Path, *extra: str) -> None:
        self.home = home
        env = {**os.environ, "FTKIT_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ftkit", "run", str(job), "--poll", "0.2", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.ports: set[int] = set()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout_s: float = 300.0) -> None:
        """Wait until a stderr line matches ``pattern`` (noting endpoint ports meanwhile)."""
        deadline = time.monotonic() + timeout_s
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            self._note_ports()
            if any(regex.search(line) for line in self.lines):
                return
            assert self.proc.poll() is None, f"ftkit exited ({self.proc.returncode}) first:\n{''.join(self.lines)}"
            time.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r} within {timeout_s}s:\n{''.join(self.lines)}")

    def _note_ports(self) -> None:
        for server in self.home.glob("endpoints/*/server.json"):
            try:
                port = json.loads(server.read_text()).get("port")
            except (OSError, ValueError):
                continue
            if isinstance(port, int):
                self.ports.add(port)

    def finish(self, timeout_s: float = 300.0) -> tuple[int, str, str]:
        """Wait for the exit; return the status, stdout and stderr."""
        self.proc.wait(timeout=timeout_s)
        self._reader.join(10)
        assert self.proc.stdout is not None
        return self.proc.returncode, self.proc.stdout.read(), "".join(self.lines)


def processes_of(home: Path) -> list[psutil.Process]:
    """Every live process whose command line names the ftkit home (job workers, endpoint servers)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and any(str(home) in a for a in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow store, created once: creating and migrating one takes seconds that every test would pay."""
    from ftkit.backends.local.tracking import MlflowStore, client

    root = tmp_path_factory.mktemp("store")
    client(MlflowStore.at(root))
    return root / "mlflow.db"


@pytest.fixture
def home(tmp_path: Path, mlflow_db: Path) -> Iterator[Path]:
    """A new ftkit home (with an empty MLflow store); any process left behind is killed after the test."""
    path = tmp_path / "home"
    path.mkdir()
    shutil.copy(mlflow_db, path / "mlflow.db")
    yield path
    for proc in processes_of(path):
        proc.kill()


def assert_nothing_left(
    run: Run, code: int, err: str, *, signum: int, stage: str | tuple[str, ...]
) -> dict[str, object]:
    """The checks every interrupted run must pass; returns run.json."""
    stages = (stage,) if isinstance(stage, str) else stage
    assert code == 128 + signum, err
    name = signal.Signals(signum).name
    assert re.findall(r"interrupted by SIG\w+", err) == [f"interrupted by {name}"], err
    assert "Traceback" not in err, err
    assert re.search(rf"interrupted by {name} during ({'|'.join(stages)})", err), err
    deadline = time.monotonic() + 120  # generous: a loaded machine is slow, not wrong
    while processes_of(run.home) and time.monotonic() < deadline:  # a process reported stopped may take a moment
        time.sleep(0.1)
    assert processes_of(run.home) == [], [p.info["cmdline"] for p in processes_of(run.home)]
    assert [p for p in run.ports if port_open(p)] == []
    assert (
        sorted(p.name for p in (run.home / "endpoints").glob("*")) == [] if (run.home / "endpoints").is_dir() else True
    )
    (record_path,) = run.home.glob("runs/*/run.json")
    assert f"record   {record_path}" in err
    record: dict[str, object] = json.loads(record_path.read_text())
    assert record["status"] == "interrupted"
    interrupted = record["interrupted"]
    assert isinstance(interrupted, dict)
    assert interrupted["signal"] == name
    assert interrupted["stage"] in stages
    assert not list(run.home.rglob("*.tmp")), list(run.home.rglob("*.tmp"))
    return record


def endpoint_list_is_empty(home: Path, capsys: pytest.CaptureFixture[str]) -> bool:
    """`ftkit endpoint list` says there are none."""
    capsys.readouterr()
    assert main(["endpoint", "list", "--home", str(home), "--json"]) == 0
    return capsys.readouterr().out.strip() == ""


@pytest.mark.slow
def test_sigterm_while_building_data(short_job: Path, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SIGTERM (timeout, CI, docker stop) during the data stage: exit 143, recorded, nothing started."""
    run = Run(short_job, home)
    run.wait_for(r"data\s+\.\.\.\.  building from")
    run.proc.send_signal(signal.SIGTERM)
    code, _, err = run.finish()
    assert_nothing_left(run, code, err, signum=signal.SIGTERM, stage="data")
    assert endpoint_list_is_empty(home, capsys)


@pytest.mark.slow
def test_ctrl_c_while_fine_tuning_stops_the_job_and_a_rerun_resumes_it(
    demo_job: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGINT while the worker trains: the job stops with a checkpoint (Canceled), and is said so; the next
    `ftkit run` resumes the same job from its checkpoint instead of starting a new one."""
    run = Run(demo_job, home)
    run.wait_for(r"finetune \.\.\.\.  Running: step")
    run.proc.send_signal(signal.SIGINT)
    code, _, err = run.finish()
    record = assert_nothing_left(run, code, err, signum=signal.SIGINT, stage="finetune")
    job = record["finetune_job"]
    assert isinstance(job, dict)
    name = job["name"]
    assert re.fullmatch(r"ft-[a-z0-9]{6}", name)
    assert job["status"] == "Canceled"
    assert re.search(rf"cleaned  job {name} stopped \(Canceled\).*resumes it", err), err
    state = json.loads((home / "jobs" / name / "job.json").read_text())
    assert state["status"] == "Canceled"
    assert list((home / "jobs" / name / "output" / "checkpoints").glob("checkpoint-*"))

    again = Run(demo_job, home, "--no-deploy")
    code, out, err = again.finish()
    assert code == 0, err
    assert f"fine-tuning job  {name} (Completed)" in out
    state = json.loads((home / "jobs" / name / "job.json").read_text())
    assert state["attempts"] == 2
    assert sorted(p.name for p in (home / "jobs").iterdir() if p.is_dir()) == [name]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_while_the_endpoint_server_starts(
    short_job: Path, home: Path, signum: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """About a second after `creating endpoint` (the server is still loading): the server is stopped, its
    state removed, and `ftkit endpoint list` and `ftkit cleanup` find nothing (the reported bug: 5 of 5)."""
    run = Run(short_job, home)
    run.wait_for(r"deploy\s+\.\.\.\.  creating endpoint")
    time.sleep(1.0)
    run.proc.send_signal(signum)
    code, _, err = run.finish()
    record = assert_nothing_left(run, code, err, signum=signum, stage="deploy")
    endpoint = record["endpoint"]
    assert isinstance(endpoint, dict)
    assert f"cleaned  endpoint {endpoint['name']} deleted" in err
    assert endpoint_list_is_empty(home, capsys)


@pytest.mark.slow
def test_signals_while_scoring_and_during_cleanup(
    short_job: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGINT as scoring starts, then a second SIGINT and a SIGTERM during the cleanup they started: the
    cleanup finishes anyway (the extra signals are only reported), and nothing is orphaned."""
    run = Run(short_job, home)
    run.wait_for(r"score\s+\.\.\.\.  scoring")
    run.proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    run.proc.send_signal(signal.SIGINT)
    run.proc.send_signal(signal.SIGTERM)
    code, _, err = run.finish()
    # Scoring the tiny model takes a tenth of a second: the first signal may land in the cleanup after it.
    assert_nothing_left(run, code, err, signum=signal.SIGINT, stage=("score", "cleanup"))
    assert endpoint_list_is_empty(home, capsys)
    capsys.readouterr()
    assert main(["cleanup", "--home", str(home)]) == 0
    assert "nothing to clean up" in capsys.readouterr().out


@pytest.mark.slow
def test_sigterm_during_the_final_cleanup(short_job: Path, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SIGTERM while the endpoint is being deleted at the end: the deletion completes, exit 143."""
    run = Run(short_job, home)
    run.wait_for(r"cleanup\s+\.\.\.\.  deleting endpoint")
    run.proc.send_signal(signal.SIGTERM)
    code, _, err = run.finish()
    assert_nothing_left(run, code, err, signum=signal.SIGTERM, stage="cleanup")
    assert endpoint_list_is_empty(home, capsys)
