"""``ftkit run JOB.yaml`` and ``ftkit demo``: the whole flow, with progress."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ..backends.base import Backend
from ..jobfile import JobFile
from ..runner import JobRunner, RunResult, StageEvent


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``run`` and ``demo`` to the ``ftkit`` parser."""
    run = sub.add_parser("run", help="run a job file end to end", description=_run.__doc__)
    run.add_argument("job", type=Path, metavar="JOB.yaml", help="the YAML job file")
    run.add_argument("--no-deploy", action="store_true", help="stop after registering the model")
    run.add_argument(
        "--new-job",
        action="store_true",
        help="local: start a new fine-tuning job even if an interrupted one of this job file could resume",
    )
    run.add_argument(
        "--timeout",
        type=_positive(float),
        default=24 * 3600.0,
        metavar="SECONDS",
        help="how long to wait for the fine-tuning job (default: 86400); the job keeps running after it",
    )
    run.add_argument(
        "--poll", type=_positive(float), default=30.0, metavar="SECONDS", help="time between job status reads (30)"
    )
    run.set_defaults(handler=_run)

    demo = sub.add_parser(
        "demo",
        help="the whole flow on this machine with a tiny model (no Azure, nothing downloaded)",
        description=_demo.__doc__,
    )
    demo.add_argument(
        "--dir", type=Path, default=Path("ftkit-demo"), metavar="DIR", help="where to write the demo (./ftkit-demo)"
    )
    demo.add_argument("--seed", type=int, default=0, help="seed for the data and the model (0)")
    demo.add_argument("--steps", type=_positive(int), default=None, help="training steps (default: two epochs)")
    demo.set_defaults(handler=_demo)


def _positive(kind: Callable[[str], float]) -> Callable[[str], Any]:
    """Return an argparse type that accepts numbers above zero (a zero poll interval would hammer the service)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value

    return parse


class ProgressPrinter:
    """Prints stage events: one line each, timed from the start of the run.

    Args:
        stream: Where to print.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.start = time.monotonic()

    def __call__(self, event: StageEvent) -> None:
        """Print one event."""
        mark = "done" if event.done else "...."
        elapsed = time.monotonic() - self.start
        print(f"[{elapsed:6.1f}s] {event.stage:<8} {mark}  {event.message}", file=self.stream, flush=True)


def _quiet_progress_bars() -> None:
    # transformers' per-shard progress bars drown the stage lines; the stages say what is happening.
    # huggingface_hub and transformers read this once, at import, so it must be set before either loads.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _execute(job: JobFile, backend: Backend | None = None, **options: Any) -> RunResult:
    result = JobRunner(job, backend, on_event=ProgressPrinter(sys.stderr), **options).run()
    out = sys.stdout
    print(f"fine-tuning job  {result.job.name} ({result.job.status})", file=out)
    print(f"registered model {result.registered.name}:{result.registered.version}", file=out)
    if result.endpoint is not None:
        print(f"endpoint         {result.endpoint.name} ({'kept' if job.deploy.keep else 'deleted'})", file=out)
    if result.score_request is not None:
        question = result.score_request["input_data"]["input_string"][0][-1]["content"]
        print(f"sample question  {question}", file=out)
    if result.score_response is not None:
        print(f"sample answer    {result.score_response}", file=out)
    print(f"run record       {result.run_dir / 'run.json'}", file=out)
    return result


def _run(args: argparse.Namespace) -> int:
    """Run a job file end to end: model, compute, data, fine-tune, metrics, register, deploy, score, clean up."""
    _quiet_progress_bars()
    job = JobFile.load(args.job)
    options: dict[str, Any] = {"deploy": not args.no_deploy, "wait_timeout_s": args.timeout, "poll_s": args.poll}
    if args.new_job and job.backend == "local":
        from ..backends import get_backend

        options["backend"] = get_backend("local", home=job.local.home, device=job.local.device, new_job=True)
    _execute(job, **options)
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Run the notebook's whole flow locally: tiny model, generated chat data, LoRA, MLflow, endpoint."""
    _quiet_progress_bars()
    from ..demo import prepare_demo

    directory: Path = args.dir.resolve()
    if directory.exists() and not directory.is_dir():
        print(f"error: --dir {directory} is a file; give a directory (it is created if missing)", file=sys.stderr)
        return 2
    print(f"preparing the demo in {directory}", file=sys.stderr)
    job = JobFile.load(prepare_demo(directory, seed=args.seed, steps=args.steps))
    if job.local.home is None and "FTKIT_HOME" not in os.environ:
        # Keep the demo's MLflow store, registry and endpoints beside it unless FTKIT_HOME says otherwise.
        os.environ["FTKIT_HOME"] = str(directory / "home")
    _execute(job, poll_s=1.0)
    return 0
