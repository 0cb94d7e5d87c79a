"""Entry point of the ``ftkit`` command."""

from __future__ import annotations

import argparse
import importlib
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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{module}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ftkit`` command line.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when omitted.

    Returns:
        The exit status: 0 on success, 1 on an ftkit or file-system error, 2 on a usage error, 130 after
        SIGINT (Ctrl-C) and 143 after SIGTERM, once what the command created has been cleaned up.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    with handle_signals():
        try:
            return handler(args)
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
