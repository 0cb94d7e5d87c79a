"""Entry point of the ``ftkit`` command."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from ..exceptions import FtkitError, ValidationError
from ..interrupts import Interrupted, handle_signals

# Modules of ftkit.cli whose register(subparsers) adds commands, in the order of the flow (validate, render,
# data, run, demo, job, endpoint, cleanup), which is the order `ftkit --help` lists them. Each is imported only
# here, and heavy libraries are imported inside the command handlers, so `ftkit --help` stays fast.
COMMAND_MODULES: tuple[str, ...] = (
    "jobs",
    "data",
    "run",
    "evaluate",
    "job_control",
    "endpoint",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the ``ftkit`` argument parser with every command registered."""
    parser = argparse.ArgumentParser(
        prog="ftkit",
        description="Fine-tune a chat model, register, deploy and test it, on Azure ML or locally.",
        epilog="Start with `ftkit demo` (the whole flow on this machine, nothing downloaded). With a job file: "
        "`ftkit validate JOB.yaml`, then `ftkit run JOB.yaml`; `ftkit COMMAND --help` for each command.",
    )
    parser.add_argument("--version", action="version", version=f"ftkit {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{module}").register(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ftkit")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _quiet_broken_pipe() -> int:
    """The reader went away (``ftkit ... | head``): say nothing, as other Unix tools do, and exit 141 (SIGPIPE).

    stdout is pointed at /dev/null so that the interpreter's final flush of what is still buffered does not
    raise a second ``BrokenPipeError`` at exit.
    """
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ftkit`` command line.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when omitted.

    Returns:
        The exit status: 0 on success, 1 on an ftkit or file-system error, 2 on a usage error, 130 after
        SIGINT (Ctrl-C) and 143 after SIGTERM, once what the command created has been cleaned up.
    """
    try:
        return _main(argv)
    except BrokenPipeError:
        return _quiet_broken_pipe()


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    with handle_signals():
        try:
            result = handler(args)
            sys.stdout.flush()  # a closed pipe shows up here, inside the BrokenPipeError handler, not at exit
            return result
        except BrokenPipeError:
            raise
        except ValidationError as exc:
            print(f"error: {exc.render()}", file=sys.stderr)
            return 1
        except FtkitError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            # The file system said no (a path that is a file, a full disk, no permission): its message is the news.
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except Interrupted as exc:
            print(f"error: {exc.report()}", file=sys.stderr, flush=True)
            return exc.exit_code
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
