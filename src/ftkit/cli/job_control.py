"""``ftkit job list | show | logs | cancel``: see and stop fine-tuning jobs.

Local jobs train in background processes that outlive the ``ftkit run`` (or notebook) that started them;
their state is under the ftkit home (``jobs/NAME/job.json``, ``train.log``). With ``--backend azureml`` the
same commands read the workspace's jobs (``jobs.list``, ``jobs.get``, ``jobs.begin_cancel``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..backends.traits import backend_traits
from ..home import ftkit_home

if TYPE_CHECKING:
    from ..backends.azureml import AzureMLBackend
    from ..backends.local import LocalBackend


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``job`` (``list``, ``show``, ``logs``, ``cancel``) to the ``ftkit`` parser."""
    job = sub.add_parser(
        "job",
        help="list, inspect, follow or cancel fine-tuning jobs",
        description="See and stop fine-tuning jobs: the local backend's background jobs (default) or, with "
        "--backend azureml, the workspace's.",
    )
    actions = job.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="list jobs with their status", description=_list.__doc__)
    _common(listing)
    listing.set_defaults(handler=_list)

    show = actions.add_parser("show", help="show one job's state", description=_show.__doc__)
    _common(show)
    show.add_argument("name", help="the job's name (see `ftkit job list`)")
    show.set_defaults(handler=_show)

    logs = actions.add_parser("logs", help="print a local job's training log", description=_logs.__doc__)
    _common(logs)
    logs.add_argument("name", help="the job's name")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the job finishes")
    logs.set_defaults(handler=_logs)

    cancel = actions.add_parser("cancel", help="stop a running job", description=_cancel.__doc__)
    _common(cancel)
    cancel.add_argument("name", help="the job's name")
    cancel.add_argument(
        "--wait",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long to wait for it to stop (default 120; 0: do not wait)",
    )
    cancel.set_defaults(handler=_cancel)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend", choices=tuple(_OPEN), default="local", help="whose jobs: local (default) or azureml"
    )
    parser.add_argument("--home", type=Path, metavar="DIR", help="local: the ftkit home (default: $FTKIT_HOME)")
    parser.add_argument(
        "--config", type=Path, metavar="CONFIG.json", help="azureml: the workspace's config.json (as for cleanup)"
    )


def _local(args: argparse.Namespace) -> LocalBackend:
    from ..backends.local import LocalBackend

    return LocalBackend(ftkit_home(args.home))


def _azureml_backend(args: argparse.Namespace) -> AzureMLBackend:
    """Strictly private: the workspace's backend (tests replace this)."""
    from ..backends.azureml import AzureMLBackend

    return AzureMLBackend(config_path=args.config)


# `--backend NAME` -> how the command opens that backend: the option's choices are these keys, so the command line,
# not a comparison of names, picks it. Looked up when called, so that tests can replace the workspace's backend.
_OPEN: dict[str, Callable[[argparse.Namespace], LocalBackend | AzureMLBackend]] = {
    "local": lambda args: _local(args),
    "azureml": lambda args: _azureml_backend(args),
}

_COLUMNS = ("NAME", "STATUS", "SUBMITTED", "DURATION", "DISPLAY NAME", "PROGRESS")


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _rows(args: argparse.Namespace) -> tuple[list[tuple[str, ...]], str]:
    """Strictly private: one row per job (the table's columns) and where the jobs were looked for."""
    if not backend_traits(args.backend).runs_here:  # the service's jobs: what their handles say
        return [
            (h.name, h.status, "-", "-", h.display_name or "-", (h.progress or "") if not h.is_terminal else "")
            for h in _OPEN[args.backend](args).list_jobs()
        ], "the workspace"
    return _local_rows(_local(args))


def _local_rows(backend: LocalBackend) -> tuple[list[tuple[str, ...]], str]:
    """Strictly private: the jobs under the ftkit home, with their records' times."""
    rows: list[tuple[str, ...]] = []
    now = time.time()
    for handle in backend.list_jobs():
        record = backend.job_record(handle.name)
        ended = record.updated if handle.is_terminal else now
        rows.append(
            (
                handle.name,
                handle.status,
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created)),
                _duration(ended - record.created),
                handle.display_name or "-",
                (handle.progress or "") if not handle.is_terminal else "",
            )
        )
    from ..backends.local.jobs import unreadable_records

    for name, reason in unreadable_records(backend.home):  # shown, not hidden: `job show` says what to do
        rows.append((name, "Unreadable", "-", "-", f"job.json: {reason}", f"see: ftkit job show {name}"))
    return rows, str(backend.home / "jobs")


def _list(args: argparse.Namespace) -> int:
    """List jobs in a table: name, status, submitted, duration, display name, progress.

    Submitted is local time; duration is how long a job ran (or has been running); progress shows for running
    jobs. Local jobs oldest first, the workspace's newest first; a local job whose process died shows Failed.
    """
    rows, where = _rows(args)
    if not rows:
        home = " (another ftkit home? --home DIR, or FTKIT_HOME)" if backend_traits(args.backend).runs_here else ""
        print(f"no jobs in {where}{home}")
        return 0
    widths = [max(len(r[i]) for r in [_COLUMNS, *rows]) for i in range(len(_COLUMNS) - 1)]
    for row in [_COLUMNS, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())
    return 0


def _show(args: argparse.Namespace) -> int:
    """Show a job's status, progress, error and, for a local job, its process, MLflow run and files."""
    out = sys.stdout
    if not backend_traits(args.backend).runs_here:  # the service's job: its handle is all there is to show
        handle = _OPEN[args.backend](args).get_job(args.name)
        fields: list[tuple[str, object]] = [
            ("name", handle.name),
            ("status", handle.status),
            ("display name", handle.display_name),
            ("experiment", handle.experiment_name),
            ("studio", handle.studio_url),
            ("error", handle.error),
        ]
        for key, value in fields:
            if value:
                print(f"{key:<13}{value}", file=out)
        return 0
    local = _local(args)
    record = local.job_record(args.name)
    folder = local.job_dir(args.name)
    checkpoints = sorted(p.name for p in (folder / "output" / "checkpoints").glob("checkpoint-*"))
    details: list[tuple[str, object]] = [
        ("name", record.name),
        ("status", record.status),
        ("display name", record.display_name),
        ("experiment", record.experiment_name),
        ("mlflow run", record.run_id),
        ("pid", record.pid),
        ("attempts", record.attempts),
        ("progress", record.progress),
        ("error", record.error),
        ("checkpoint", checkpoints[-1] if checkpoints else None),
        ("folder", folder),
        ("log", folder / "train.log"),
    ]
    for key, value in details:
        if value not in (None, ""):
            print(f"{key:<13}{value}", file=out)
    return 0


def _logs(args: argparse.Namespace) -> int:
    """Print a local job's training log; with --follow, keep printing until the job finishes."""
    traits = backend_traits(args.backend)
    if not traits.runs_here:
        print(f"error: logs of {traits.name} jobs are in its studio (see `{traits.command('ftkit job show NAME')}`)")
        return 2
    backend = _local(args)
    backend.job_record(args.name)  # NotFoundError names the jobs there are
    path = backend.job_dir(args.name) / "train.log"
    offset = 0
    while True:
        if path.is_file():
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            sys.stdout.write(chunk.decode("utf-8", errors="replace"))
            sys.stdout.flush()
        if not args.follow or backend.get_job(args.name).is_terminal:
            if args.follow and path.is_file() and path.stat().st_size > offset:
                continue  # the last lines the worker wrote before it ended
            return 0
        time.sleep(0.5)


def _cancel(args: argparse.Namespace) -> int:
    """Stop a running job and wait until it stopped (exit 1 if it did not within --wait).

    A local job stops at its next step with a checkpoint, and `ftkit run` of the same job resumes it; an Azure
    ML job is cancelled (begin_cancel).
    """
    backend = _OPEN[args.backend](args)
    before = backend.get_job(args.name)
    if before.is_terminal:
        print(f"job {args.name} has already ended ({before.status})")
        return 0
    backend.cancel_job(args.name)
    deadline = time.monotonic() + args.wait
    handle = backend.get_job(args.name)
    while not handle.is_terminal and time.monotonic() < deadline:
        time.sleep(0.2)
        handle = backend.get_job(args.name)
    if not handle.is_terminal:
        if args.wait > 0:
            print(f"error: job {args.name} is still {handle.status} after {args.wait:.0f}s", file=sys.stderr)
            return 1
        print(f"asked job {args.name} to stop")
        return 0
    print(f"job {args.name} {handle.status}")
    return 0
