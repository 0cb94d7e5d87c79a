"""``ftkit data build``: build the chat JSONL files of a job (or of a source given by flags)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``data`` command and its ``build`` subcommand."""
    data = subparsers.add_parser(
        "data",
        help="build and check chat data for fine-tuning",
        description="Build and check the chat data of a fine-tuning run.",
    )
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    build = sub.add_parser(
        "build",
        help="select, check and write the JSONL splits (from JOB.yaml's data section, or from --source)",
        description="Select, check and write the JSONL splits of JOB.yaml's data section (flags override it), "
        "or of --source alone, with a report.json beside them. Exit 0 with a summary; 1 when --strict and rows "
        "were rejected, or the source cannot be read.",
    )
    build.add_argument("job", nargs="?", metavar="JOB.yaml", help="a job file; its data section is used")
    build.add_argument("--source", help="dataset id, or a local parquet/JSONL file or directory")
    build.add_argument("--out", help="output directory (default: the job's data.out_dir, else ./data)")
    build.add_argument("--splits", help="comma-separated split names (default: train_sft,test_sft,test_gen)")
    amount = build.add_mutually_exclusive_group()
    amount.add_argument("--percent", type=float, help="percent of each split to keep")
    amount.add_argument("--rows", type=int, help="rows of each split to keep")
    build.add_argument("--sample", choices=("first", "random"), help="first rows (default) or a seeded sample")
    build.add_argument("--seed", type=int, help="seed of the random sample (default 0)")
    build.add_argument("--strict", action="store_true", default=None, help="fail when any row is rejected")
    build.add_argument("--parquet", action="store_true", help="also write {split}.parquet")
    build.set_defaults(handler=_build)


def _build(args: argparse.Namespace) -> int:
    # ftkit errors are printed by ftkit.cli.main, as for every command.
    from ..data import ChatDatasetBuilder, SplitSelection
    from ..exceptions import ValidationError

    overrides: dict[str, Any] = {}
    if args.splits:
        overrides["splits"] = [s.strip() for s in args.splits.split(",") if s.strip()]
    if args.out:
        overrides["out_dir"] = args.out
    if args.strict:
        overrides["strict"] = True
    if args.parquet:
        overrides["parquet"] = True
    if args.job:
        from ..jobfile import JobFile

        job = JobFile.load(args.job)
        if args.source:
            job = _with_source(job, args.source)
        base = ChatDatasetBuilder.from_job(job)
        sel = base.selection
    elif args.source:
        base = None
        sel = SplitSelection()
        if not args.splits and Path(args.source).expanduser().is_file():
            # One file is one split, named after it (not the notebook's three splits it cannot hold).
            overrides["splits"] = [Path(args.source).stem]
    else:
        print("error: give JOB.yaml or --source", file=sys.stderr)
        return 2
    if args.percent is not None or args.rows is not None or args.sample or args.seed is not None:
        try:
            sel = SplitSelection(
                percent=args.percent if args.rows is None else None,
                rows=args.rows if args.percent is None else None,
                sample=args.sample or sel.sample,
                seed=args.seed if args.seed is not None else sel.seed,
            )
        except ValidationError as exc:
            print(f"error: {exc.render()}", file=sys.stderr)
            return 2
    overrides["selection"] = sel
    if base is not None:
        builder = ChatDatasetBuilder.from_job(job, **overrides)
    else:
        builder = ChatDatasetBuilder(args.source, **overrides)
    result = builder.build()
    print(result.report.summary())
    print(f"wrote {', '.join(str(p) for p in result.files.values())} and {result.report_path}")
    return 0


def _with_source(job: Any, source: str) -> Any:
    import attrs

    return attrs.evolve(job, data=attrs.evolve(job.data, source=source))
