"""Real ``ftkit run`` subprocesses for the tests that stop, kill or plant things around one: start it, poll its
job's record, find its worker's processes, wait for them to go.

Limits are for polled states and generous: a loaded 2-core machine is slow, not wrong; no test asserts a deadline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psutil

LIMIT_S = 600.0

JOB = """\
name: {name}
backend: local
model: {{name: tiny, path: {model}}}
data: {{train_file: {train}, test_file: {test}}}
finetune:
{finetune}
local: {{home: {home}, device: cpu{local}}}
"""


def job_file(
    path: Path, *, name: str, model: Path, train: Path, test: Path, home: Path, finetune: str, local: str = ""
) -> Path:
    """Write a local job file: ``finetune`` is its indented YAML body, ``local`` extra ``key: value`` pairs."""
    body = "\n".join(f"  {line}" for line in finetune.strip().splitlines())
    extra = f", {local}" if local else ""
    path.write_text(
        JOB.format(name=name, model=model, train=train, test=test, home=home, finetune=body, local=extra),
        encoding="utf-8",
    )
    return path


def ftkit_exe() -> str:
    """The ``ftkit`` console script of the running interpreter's environment."""
    return str(Path(sys.executable).with_name("ftkit"))


def env_for(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "FTKIT_HOME": str(home), "PYTHONUNBUFFERED": "1", **(extra or {})}


def ftkit(*args: str, home: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run one ``ftkit`` command to its end."""
    return subprocess.run(
        [ftkit_exe(), *args], capture_output=True, text=True, timeout=timeout, env=env_for(home), check=False
    )


def start_run(job: Path, home: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``ftkit run --no-deploy`` (output and errors on one pipe)."""
    return subprocess.Popen(
        [ftkit_exe(), "run", "--no-deploy", "--poll", "0.2", str(job)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env_for(home, env),
    )


def record(home: Path) -> dict[str, Any] | None:
    """The home's one job record, if it is there and whole."""
    for path in home.glob("jobs/*/job.json"):
        try:
            return dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return None
    return None


def wait_for_record(
    home: Path,
    wanted: Callable[[dict[str, Any]], bool],
    what: str,
    *,
    proc: subprocess.Popen[str] | None = None,
    limit_s: float = LIMIT_S,
) -> dict[str, Any]:
    """Poll the job's record until ``wanted`` holds (while ``proc``, if given, still runs)."""
    deadline = time.monotonic() + limit_s
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"ftkit run ended before {what}: {proc.stdout.read() if proc.stdout else ''}")
        last = record(home)
        if last is not None and wanted(last):
            return last
        time.sleep(0.1)
    raise AssertionError(f"not {what} within {limit_s}s: {last}")


def wait_for_status(home: Path, wanted: str, limit_s: float = LIMIT_S) -> dict[str, Any]:
    return wait_for_record(home, lambda r: r.get("status") == wanted, f"status {wanted}", limit_s=limit_s)


def in_phase(words: str) -> Callable[[dict[str, Any]], bool]:
    """A running job whose progress line starts with ``words`` (``loading the model``...)."""
    return lambda r: r.get("status") == "Running" and str(r.get("progress") or "").startswith(words)


def wait_for_path(path: Path, proc: subprocess.Popen[str], limit_s: float = LIMIT_S) -> None:
    deadline = time.monotonic() + limit_s
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def gone(pid: int, limit_s: float = 120.0) -> bool:
    """Whether process ``pid`` is gone (or a zombie) within ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def processes_of(folder: Path) -> list[psutil.Process]:
    """Live processes whose command line names the job's folder (worker, torchrun, ranks)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(folder) in part for part in proc.info["cmdline"] or []) and proc.status() != "zombie":
                found.append(proc)
        except psutil.Error:
            continue
    return found


def none_left(folder: Path, limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s
    while processes_of(folder):
        assert time.monotonic() < deadline, processes_of(folder)
        time.sleep(0.2)
