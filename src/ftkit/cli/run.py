"""``ftkit run JOB.yaml`` and ``ftkit demo``: the whole flow, with progress."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ..backends import backend_for_job, backend_traits
from ..backends.base import Backend
from ..exceptions import FtkitError
from ..home import ftkit_home
from ..jobfile import JobFile
from ..overrides import Overrides, parse_assignment
from ..runner import JobRunner, RunResult, StageEvent, answer_text


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
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="check and plan the run and print what would be submitted; no service call, no process started",
    )
    run.add_argument(
        "--keep-endpoint", action="store_true", help="keep the endpoint after scoring (as deploy.keep: true)"
    )
    run.add_argument(
        "--backend", choices=("local", "azureml"), help="run on this backend instead of the job file's `backend`"
    )
    run.add_argument(
        "--output",
        type=Path,
        metavar="DIR",
        help="where run.json and the loss curves go (default: {ftkit home}/runs/{name}-{timestamp})",
    )
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=_assignment,
        default=[],
        metavar="KEY=VALUE",
        help="replace a job-file key, checked like the file (e.g. --set finetune.learning_rate=1e-4; repeatable)",
    )
    run.add_argument(
        "--json",
        action="store_true",
        help="print the run record (run.json) on stdout instead of the summary; progress still goes to stderr",
    )
    run.set_defaults(handler=_run)

    demo = sub.add_parser(
        "demo",
        help="the whole flow on this machine on a real small chat model, evaluated against its base "
        "(no Azure, nothing downloaded)",
        description=_demo.__doc__,
    )
    demo.add_argument(
        "--dir", type=Path, default=Path("ftkit-demo"), metavar="DIR", help="where to write the demo (./ftkit-demo)"
    )
    demo.add_argument("--seed", type=int, default=0, help="seed for the data and the model (0)")
    demo.add_argument("--steps", type=_positive(int), default=None, help="training steps (default: the demo's own)")
    demo.add_argument(
        "--tiny",
        action="store_true",
        help="a tiny random-weight model built on the spot instead of SmolLM2-135M-Instruct (no extra package; "
        "no evaluation)",
    )
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


def _assignment(text: str) -> tuple[str, object]:
    try:
        return parse_assignment(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _overrides(args: argparse.Namespace) -> Overrides:
    """The job-file keys the command line replaces: ``--set`` ones, then ``--backend`` and ``--keep-endpoint``."""
    values: dict[str, object] = dict(args.overrides)
    if args.backend is not None:
        values["backend"] = args.backend
    if args.keep_endpoint:
        values["deploy.keep"] = True
    return Overrides(values, "--set")


class ProgressPrinter:
    """Prints stage events: one line each, timed from the start of the run.

    In a terminal, a message longer than the window continues on the next line under the message column
    instead of wrapping to column 0; piped output keeps one line per event, for grep.

    Args:
        stream: Where to print.
        width: The terminal's width (default: the stream's, when it is a terminal; else no wrapping).
    """

    PREFIX = 25  # "[  12.3s] finetune ....  "

    def __init__(self, stream: TextIO, width: int | None = None) -> None:
        self.stream = stream
        self.start = time.monotonic()
        if width is None and stream.isatty():
            width = shutil.get_terminal_size().columns
        self.width = width

    def __call__(self, event: StageEvent) -> None:
        """Print one event."""
        mark = "done" if event.done else "...."
        elapsed = time.monotonic() - self.start
        head = f"[{elapsed:6.1f}s] {event.stage:<8} {mark}  "
        message = event.message
        if self.width is not None and self.width - self.PREFIX >= 40 and len(head) + len(message) > self.width:
            lines = textwrap.wrap(message, self.width - self.PREFIX, break_on_hyphens=False) or [message]
            message = f"\n{' ' * self.PREFIX}".join(lines)
        print(f"{head}{message}", file=self.stream, flush=True)


def _quiet_progress_bars() -> None:
    # transformers' per-shard progress bars drown the stage lines; the stages say what is happening.
    # huggingface_hub and transformers read this once, at import, so it must be set before either loads.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _execute(job: JobFile, backend: Backend | None = None, *, as_json: bool = False, **options: Any) -> RunResult:
    runner = JobRunner(job, backend, on_event=ProgressPrinter(sys.stderr), **options)
    try:
        result = runner.run()
    except (FtkitError, KeyboardInterrupt):
        if as_json:  # a script still gets the record (error or interruption included) before the message on stderr
            _print_record(runner.run_dir)
        raise
    if as_json:
        _print_record(result.run_dir)
        return result
    out = sys.stdout
    print(f"fine-tuning job  {result.job.name} ({result.job.status})", file=out)
    print(f"registered model {result.registered.name}:{result.registered.version}", file=out)
    if result.endpoint is not None:
        print(f"endpoint         {result.endpoint.name} ({'kept' if job.deploy.keep else 'deleted'})", file=out)
        if job.deploy.keep:
            print(f"  scoring        {result.endpoint.scoring_uri}", file=out)
            print(f"  keys           {_where_keys_are(job, result.endpoint.name)}", file=out)
    if result.score_request is not None:
        question = result.score_request["input_data"]["input_string"][0][-1]["content"]
        print(f"sample question  {_indented(question)}", file=out)
    if result.score_response is not None:
        print(f"sample answer    {_indented(answer_text(result.score_response))}", file=out)
    if result.loss_curves is not None:
        print(f"loss curves      {result.loss_curves}", file=out)
    if result.evaluation is not None:
        verdict = "passed" if result.evaluation.passed else "FAILED its requirements"
        print(f"evaluation       {verdict}: {result.run_dir / 'evaluation.md'}", file=out)
        for line in result.evaluation.summary_lines():
            print(f"  {line}", file=out)
    print(f"run record       {result.run_dir / 'run.json'}", file=out)
    return result


def _where_keys_are(job: JobFile, endpoint: str) -> str:
    """Strictly private: the command that prints a kept endpoint's keys, where they are on this machine."""
    if not backend_traits(job.backend).runs_here:
        return "in the workspace (Studio)"
    keys = f"ftkit endpoint show {endpoint} --show-keys"
    if job.local.home:
        keys += f" --home {job.resolve_path(job.local.home)}"
    elif os.environ.get("FTKIT_HOME"):
        keys += f" --home {os.environ['FTKIT_HOME']}"
    return keys


def _print_record(run_dir: Path) -> None:
    path = run_dir / "run.json"
    if path.is_file():
        sys.stdout.write(path.read_text(encoding="utf-8"))
        sys.stdout.flush()


def _indented(text: str) -> str:
    # The whole text (an answer is the point of the run), its later lines under the first.
    return "\n".join(line.rstrip() for line in text.strip().splitlines()).replace("\n", "\n" + " " * 17)


def _run(args: argparse.Namespace) -> int:
    """Run a job file end to end: model, compute, data, fine-tune, metrics, register, deploy, score, clean up.

    ``--set KEY=VALUE`` replaces a key of the job file before it is checked, exactly as if the file said so;
    ``--dry-run`` stops after the offline checks and prints the plan and the job as it would be submitted.
    """
    _quiet_progress_bars()
    from ..plan import check_file, plan_file

    if args.dry_run:
        from .dry_run import dry_run

        # The same checks, order and form as `ftkit validate`, then the plan it made.
        plan = plan_file(args.job, overrides=_overrides(args))
        return dry_run(plan.job, as_json=args.json, deploy=not args.no_deploy, run_dir=args.output)
    if args.output is not None:
        _warn_shared_output(args.output)
    job = check_file(args.job, overrides=_overrides(args))
    options: dict[str, Any] = {
        "as_json": args.json,
        "deploy": not args.no_deploy,
        "wait_timeout_s": args.timeout,
        "poll_s": args.poll,
        "run_dir": args.output.resolve() if args.output is not None else None,
    }
    if args.new_job and backend_traits(job.backend).resumes_jobs:
        # Only a backend that resumes jobs has anything to start anew.
        options["backend"] = backend_for_job(job, new_job=True)
    _execute(job, **options)
    return 0


def _warn_shared_output(output: Path) -> None:
    """Strictly private: say so when --output already holds another run's run.json (this run replaces it)."""
    import json

    record = output / "run.json"
    if not record.is_file():
        return
    try:
        status = json.loads(record.read_text(encoding="utf-8")).get("status", "unknown")
    except (OSError, ValueError, AttributeError):
        status = "unreadable"
    print(
        f"warning: {record} belongs to another run ({status}); this run replaces it. "
        "Give each run its own --output to keep both",
        file=sys.stderr,
    )


def _demo(args: argparse.Namespace) -> int:
    """Run the notebook's whole flow locally on a real chat model (SmolLM2-135M-Instruct), then evaluate it.

    The model learns to answer in a pirate's voice; the evaluation compares it with its base model on held-out
    questions and writes evaluation.md beside run.json. ``--tiny`` runs the flow on a tiny model instead.
    """
    _quiet_progress_bars()
    from ..demo import prepare_demo, prepare_real_demo

    directory: Path = args.dir.resolve()
    if directory.exists() and not directory.is_dir():
        print(f"error: --dir {directory} is a file; give a directory (it is created if missing)", file=sys.stderr)
        return 2
    print(f"preparing the demo in {directory}", file=sys.stderr)
    prepare = prepare_demo if args.tiny else prepare_real_demo
    job = JobFile.load(prepare(directory, seed=args.seed, steps=args.steps))
    own_home = job.local.home is None and "FTKIT_HOME" not in os.environ
    if own_home:
        # Keep the demo's MLflow store, registry and endpoints beside it unless FTKIT_HOME says otherwise.
        os.environ["FTKIT_HOME"] = str(directory / "home")
    _execute(job, poll_s=1.0)
    _print_home(ftkit_home(job.local.home), own_home)
    return 0


def _print_home(home: Path, own: bool) -> None:
    """Say where the run's state is, and how the other commands find it when it is not their default home."""
    out = sys.stdout
    print(f"ftkit home       {home}  (jobs, MLflow store, models, endpoints, caches)", file=out)
    where = f" --home {home}" if own else ""
    print(f"  look with      ftkit job list{where}; ftkit endpoint list{where}", file=out)
    print(f"                 mlflow ui --backend-store-uri sqlite:///{home / 'mlflow.db'}", file=out)
    if own:
        print(f"                 (or export FTKIT_HOME={home} first)", file=out)
