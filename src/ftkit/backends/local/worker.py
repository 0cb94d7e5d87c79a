"""Run one local fine-tuning job: ``python -m ftkit.backends.local.worker JOB_DIR TRACKING_URI``.

:func:`run_job` is what :class:`~ftkit.backends.local.LocalBackend` runs, in a background process (the
default) or in-process. It marks the job ``Running``, trains (resuming from the job's last checkpoint, if any),
logs to the job's MLflow run, and marks it ``Completed``, ``Failed`` or ``Canceled`` (on SIGTERM, after
writing a checkpoint to resume from).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

import attrs

from ...exceptions import StorageError
from ...storage import StorageFailure, storage_cause
from . import launcher
from .job_sink import JobProgressSink
from .jobs import CANCEL_FILE, JobRecord, read_record, reserve_last_words, write_last_words, write_record
from .tracking import MlflowStore, RunLogger
from .training import Progress, TrainConfig, TrainResult, stop_now, train

__all__ = ["main", "run_job"]


def _read(folder: Path) -> tuple[TrainConfig, JobRecord]:
    config = TrainConfig.from_json((folder / "config.json").read_text(encoding="utf-8"))
    record = JobRecord(**json.loads((folder / "job.json").read_text(encoding="utf-8")))
    return config, record


def _train(
    folder: Path, config: TrainConfig, store: MlflowStore, sink: JobProgressSink, progress: Progress, **kw: Any
) -> TrainResult:
    """Strictly private: train in this process, or on ``config.processes`` torchrun ranks (see :mod:`.launcher`)."""
    if config.processes == 1:
        return train(config, metrics=sink, progress=progress, **kw)
    result = launcher.launch(folder, config, store.tracking_uri, **kw)
    sink.record = attrs.evolve(sink.record, progress=read_record(folder.parent.parent, folder.name).progress)
    return result


def run_job(
    folder: str | Path, store: MlflowStore, *, progress: Progress = "plain", handle_sigterm: bool = True
) -> JobRecord:
    """Train the job in ``folder`` to its end and record the outcome.

    Args:
        folder: The job's folder (with ``config.json`` and ``job.json``).
        store: The MLflow store of its run.
        progress: How to show progress (see :func:`~ftkit.backends.local.training.train`).
        handle_sigterm: Turn SIGTERM into a clean stop (checkpoint, then ``Canceled``); main thread only.

    Returns:
        The final record.
    """
    cancel = {"requested": False}
    if handle_sigterm:
        # First of all: a cancel that arrives while the job is still starting must stop it cleanly too.

        def on_term(_signum: int, _frame: Any) -> None:
            cancel["requested"] = True
            stop_now()  # loading, tokenising or evaluating: stop at once (steps and checkpoints finish first)

        signal.signal(signal.SIGTERM, on_term)
    folder = Path(folder)
    config, record = _read(folder)
    record = attrs.evolve(
        record, status="Running", pid=os.getpid(), error=None, storage=None, attempts=record.attempts + 1
    )
    write_record(folder, record)
    reserve_last_words(folder)
    logger = RunLogger(store, record.run_id) if record.run_id else None
    try:
        if logger is not None:
            logger.reopen()
            params = {k: v for k, v in json.loads(config.to_json()).items() if k not in ("output_dir",)}
            logger.log_params(params)
        sink = JobProgressSink(folder, record, logger)
        marker = folder / CANCEL_FILE
        result = _train(
            folder, config, store, sink, progress, should_stop=lambda: cancel["requested"] or marker.exists()
        )
        record = sink.record
        if result.stopped:
            record = attrs.evolve(
                record,
                status="Canceled",
                pid=None,
                error=f"canceled at step {result.global_step}; run the job again to resume from its checkpoint",
            )
            if logger is not None:
                logger.finish("KILLED")
        else:
            if logger is not None:
                logger.set_tags(
                    {
                        "ftkit.global_step": str(result.global_step),
                        "ftkit.resumed_from": str(result.resumed_from) if result.resumed_from else "",
                    }
                )
                logger.log_artifact(folder / "config.json")
                logger.log_artifact(Path(config.output_dir) / "result.json")
                logger.finish("FINISHED")
            record = attrs.evolve(record, status="Completed", pid=None)
    except BaseException as exc:
        cause = storage_cause(exc, config.output_dir)
        storage = StorageFailure.of("finetune", cause) if cause is not None else None
        message = str(StorageError("finetune", cause)) if cause is not None else f"{type(exc).__name__}: {exc}"
        unlogged = _log_traceback()
        if unlogged is not None:
            message += f" (train.log could not be written: {unlogged})"
        write_last_words(folder, message, storage)
        if logger is not None:
            try:
                logger.finish("FAILED")
            except Exception:  # the store itself may be what failed; the record still says why
                traceback.print_exc()
        record = attrs.evolve(
            record, status="Failed", pid=None, error=message[:2000], storage=attrs.asdict(storage) if storage else None
        )
        with contextlib.suppress(OSError):  # a full disk: the last words say it instead
            write_record(folder, record)
        if not isinstance(exc, Exception):
            raise
        return record
    write_record(folder, record)
    return record


def _log_traceback() -> str | None:
    """Strictly private: print the traceback to train.log; why it could not be written (a full disk), if so."""
    try:
        traceback.print_exc()
        sys.stderr.flush()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the background worker process."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m ftkit.backends.local.worker JOB_DIR TRACKING_URI", file=sys.stderr)
        return 2
    folder, uri = Path(args[0]), args[1]
    # train.log is a file, which Python would buffer in 8 KiB blocks: `ftkit job logs --follow` wants lines.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)
    home = folder.parent.parent
    record = run_job(folder, MlflowStore.at(home, uri))
    return 0 if record.status == "Completed" else 1


if __name__ == "__main__":
    raise SystemExit(main())
