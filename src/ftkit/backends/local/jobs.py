"""Local fine-tuning jobs on disk: one folder per job under ``{home}/jobs/{name}``.

A job folder holds ``config.json`` (the :class:`~ftkit.backends.local.training.TrainConfig`), ``job.json``
(a :class:`JobRecord`: status, MLflow run, worker pid, lineage), ``train.log`` (the worker's output) and
``output/`` (checkpoints and the final model). ``job.json`` is replaced atomically, so a reader never sees a
half-written record.

A job's name is short and random (``ft-k3x9q2``): :func:`claim_job_dir` creates its folder with an exclusive
``mkdir``, so two runs started at the same moment never share a job. Choosing between resuming an
interrupted job and starting a new one happens under :func:`locked` (an ``flock`` on ``jobs/.lock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from ...exceptions import BackendError, NotFoundError, closest
from ...names import random_suffix
from ...storage import StorageFailure
from .pids import owned_process_alive

__all__ = [
    "CANCEL_FILE",
    "WORKER_MODULE",
    "JobRecord",
    "claim_job_dir",
    "job_dir",
    "list_records",
    "locked",
    "read_last_words",
    "read_record",
    "reserve_last_words",
    "unreadable_records",
    "worker_alive",
    "write_last_words",
    "write_record",
]

CANCEL_FILE = "cancel"
"""A file in the job's folder asking its worker to stop (see ``LocalBackend.cancel_job``)."""

LAST_WORDS = "last-words"
"""A file of fixed size, reserved when the worker starts, that its failure message overwrites in place: on a full
disk neither ``job.json`` (written anew) nor ``train.log`` (appended) can take it, an allocated block can."""
_LAST_WORDS_BYTES = 4096

WORKER_MODULE = "ftkit.backends.local.worker"
"""The module a background job's process runs (``python -m ftkit.backends.local.worker JOB_DIR URI``)."""


@attrs.frozen(kw_only=True)
class JobRecord:
    """The state of one local job, as ``job.json`` holds it.

    Attributes:
        name: The job's name (its folder).
        status: ``Queued``, ``Running``, ``Completed``, ``Failed`` or ``Canceled``.
        display_name: The display name.
        experiment_name: The MLflow experiment.
        run_id: The MLflow run the job logs to.
        pid: The worker process, while one runs.
        error: Why it failed.
        attempts: How many times a worker started (more than one after a resume).
        progress: The worker's last progress line (step, loss, tokens/s), while it trains.
        tags: Lineage: base model, data files and hashes, parameters.
        created: When it was submitted (Unix time).
        updated: When this record was written (Unix time).
        owner_pid: The process that started the background worker (``ftkit run``, a notebook), while one runs.
        owner_started: That process's start time, so a recycled pid is not taken for it.
        storage: Why it failed, when that was its file system (a :class:`~ftkit.storage.StorageFailure` as JSON).
    """

    name: str
    status: str
    display_name: str | None = None
    experiment_name: str | None = None
    run_id: str | None = None
    pid: int | None = None
    error: str | None = None
    attempts: int = 0
    progress: str | None = None
    tags: Mapping[str, str] = attrs.field(factory=dict)
    created: float = attrs.field(factory=time.time)
    updated: float = attrs.field(factory=time.time)
    owner_pid: int | None = None
    owner_started: float | None = None
    storage: Mapping[str, Any] | None = None


def job_dir(home: Path, name: str) -> Path:
    """Return the folder of job ``name`` under ``home``."""
    return home / "jobs" / name


def claim_job_dir(home: Path, prefix: str = "ft") -> tuple[str, Path]:
    """Create a new job's folder under a fresh random name (``ft-`` and 6 characters) and return both.

    Raises:
        FileExistsError: No free name after many tries (never in practice).
    """
    root = home / "jobs"
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        name = f"{prefix}-{random_suffix()}"
        try:
            (root / name).mkdir()  # exclusive: the name is ours only if we created it
        except FileExistsError:
            continue
        return name, root / name
    raise FileExistsError(f"no free job name under {root}")


@contextlib.contextmanager
def locked(home: Path) -> Iterator[None]:
    """Hold the jobs' lock (across processes) while choosing which job a submission resumes or creates."""
    root = home / "jobs"
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_record(folder: Path, record: JobRecord) -> None:
    """Write ``job.json`` atomically (a failed write, such as a full disk, leaves no temporary file)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = attrs.asdict(attrs.evolve(record, updated=time.time()))
    tmp = folder / f".job.json.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
        tmp.replace(folder / "job.json")
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def reserve_last_words(folder: Path) -> None:
    """Reserve (and blank) the job's :data:`LAST_WORDS` file while there is still room for it."""
    with contextlib.suppress(OSError):
        (folder / LAST_WORDS).write_bytes(b" " * _LAST_WORDS_BYTES)


def write_last_words(folder: Path, message: str, storage: StorageFailure | None = None) -> bool:
    """Overwrite the reserved :data:`LAST_WORDS` with ``message`` (cut to fit); whether it was written.

    A storage failure goes with it as JSON, so that the waiting process raises it as a ``StorageError``.
    """
    data = message.encode("utf-8")[:_LAST_WORDS_BYTES]
    if storage is not None:
        text = json.dumps({"error": message[: _LAST_WORDS_BYTES // 2], "storage": attrs.asdict(storage)})
        if len(text.encode("utf-8")) <= _LAST_WORDS_BYTES:
            data = text.encode("utf-8")
    try:
        with (folder / LAST_WORDS).open("r+b") as f:
            f.write(data.ljust(_LAST_WORDS_BYTES))
    except OSError:
        return False
    return True


def read_last_words(folder: Path) -> tuple[str, StorageFailure | None] | None:
    """What a worker that could not update ``job.json`` last said, if anything, and its storage failure."""
    try:
        text = (folder / LAST_WORDS).read_bytes().decode("utf-8", "replace").strip()
    except OSError:
        return None
    if text.startswith("{"):
        with contextlib.suppress(ValueError):
            data = json.loads(text)
            if isinstance(data, dict) and isinstance(data.get("error"), str):
                return data["error"], StorageFailure.from_json(data.get("storage"))
    return (text, None) if text else None


def read_record(home: Path, name: str) -> JobRecord:
    """Read job ``name``'s record.

    Raises:
        NotFoundError: There is no such job (the message names close ones).
        BackendError: Its ``job.json`` is not a record ftkit wrote (names the file and what to do).
    """
    path = job_dir(home, name) / "job.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return JobRecord(**data)
    except FileNotFoundError:
        names = [r.name for r in list_records(home)]
        hint = closest(name, names)
        more = f"; did you mean {', '.join(hint)}?" if hint else ""
        raise NotFoundError(f"no local job {name!r} under {home / 'jobs'}{more}", operation="get_job") from None
    except (ValueError, TypeError) as exc:  # not JSON, not UTF-8, or not a record's keys
        raise BackendError(_unreadable_message(path, exc), operation="get_job") from None


def _unreadable_message(path: Path, exc: BaseException) -> str:
    """Strictly private: the error for a ``job.json`` that is no record: the file, why, and what to do."""
    reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return (
        f"{path} is not a job record ftkit can read ({reason}); the job cannot be shown, cancelled or resumed. "
        f"Restore the file, or remove the job's folder {path.parent} (its checkpoints go with it)"
    )


def unreadable_records(home: Path) -> list[tuple[str, str]]:
    """Jobs whose ``job.json`` cannot be read (what :func:`list_records` leaves out): ``(name, reason)``."""
    root = home / "jobs"
    out: list[tuple[str, str]] = []
    for p in sorted(root.glob("*/job.json")) if root.is_dir() else []:
        try:
            JobRecord(**json.loads(p.read_text(encoding="utf-8")))
        except FileNotFoundError:
            continue  # removed meanwhile
        except (OSError, ValueError, TypeError) as exc:
            out.append((p.parent.name, str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__))
    return out


def list_records(home: Path) -> list[JobRecord]:
    """Return every job's record, oldest first."""
    root = home / "jobs"
    out = []
    for p in sorted(root.glob("*/job.json")) if root.is_dir() else []:
        with contextlib.suppress(OSError, ValueError, TypeError):
            out.append(JobRecord(**json.loads(p.read_text(encoding="utf-8"))))
    return sorted(out, key=lambda r: r.created)


def worker_alive(pid: int, name: str) -> bool:
    """Whether ``pid`` is a live (not zombie) worker process of job ``name`` (a recycled pid is not)."""
    module, suffix = WORKER_MODULE, f"/{name}"
    return owned_process_alive(pid, lambda args: module in args and any(a.endswith(suffix) for a in args))
