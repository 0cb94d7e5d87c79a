"""``ftkit validate``, ``ftkit render`` and ``ftkit schema``: offline checks, the exact job body, the file's schema."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from ..component import ComponentSchema
from ..plan import RunPlan, plan_file


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``validate`` and ``render`` to the ``ftkit`` parser."""
    validate = sub.add_parser(
        "validate", help="check a job file offline and list every problem", description=_validate.__doc__
    )
    _common(validate)
    validate.add_argument(
        "--list-parameters", action="store_true", help="also list every parameter the component declares"
    )
    validate.set_defaults(handler=_validate)

    render = sub.add_parser(
        "render",
        help="print the pipeline job exactly as it would be submitted (no credentials, no network)",
        description=_render.__doc__,
    )
    _common(render)
    render.add_argument("--format", choices=("json", "yaml"), default="json", help="output format")
    render.set_defaults(handler=_render)

    schema = sub.add_parser(
        "schema", help="print the JSON Schema of the job file (for editors)", description=_schema.__doc__
    )
    schema.add_argument(
        "--component-spec",
        type=Path,
        metavar="SPEC.yaml",
        help="list the finetune inputs of this component spec (default: ftkit's bundled snapshot)",
    )
    schema.set_defaults(handler=_schema)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", type=Path, metavar="JOB.yaml", help="the YAML job file")
    parser.add_argument(
        "--component-spec",
        type=Path,
        metavar="SPEC.yaml",
        help="the component's spec.yaml to validate against (default: ftkit's bundled snapshot of the pinned version)",
    )


def _plan(args: argparse.Namespace) -> RunPlan:
    schema = ComponentSchema.from_spec_file(args.component_spec) if args.component_spec else None
    return plan_file(args.job, schema)


def _validate(args: argparse.Namespace) -> int:
    """Check everything that can be checked offline; print every problem (exit 1) or a summary (exit 0)."""
    plan = _plan(args)
    job = plan.job
    out = sys.stdout
    print(f"ok: {job.source} is valid", file=out)
    print(f"  backend        {job.backend}", file=out)
    print(f"  model          {job.resolve_path(job.model.path) if job.model.path else plan.model.asset_id}", file=out)
    print(f"  component      {plan.schema.name} {plan.schema.version} ({plan.schema.source})", file=out)
    print(f"  display name   {plan.display_name}", file=out)
    print(f"  parameters     {len(plan.parameters)} set, in the component's encoding:", file=out)
    for name, value in sorted(plan.parameters.items()):
        print(f"    {name} = {value!r}", file=out)
    for override in plan.overrides:
        print(f"  model default  {override}", file=out)
    if args.list_parameters:
        print("  declared inputs:", file=out)
        for name, declared in sorted(plan.schema.inputs.items()):
            extra = f" enum={list(declared.enum)}" if declared.enum else ""
            print(f"    {name}: {declared.type} default={declared.default!r}{extra}", file=out)
    return 0


def _render(args: argparse.Namespace) -> int:
    """Print the azure-ai-ml REST body of the pipeline job, built offline from the job file."""
    body = pipeline_body(_plan(args))
    if args.format == "yaml":
        sys.stdout.write(yaml.safe_dump(body, sort_keys=False))
    else:
        sys.stdout.write(json.dumps(body, indent=2) + "\n")
    return 0


def _schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of the job file, for editors.

    Save it and point your editor at it with a first line ``# yaml-language-server: $schema=PATH``
    (editors with the YAML language server: VS Code, Neovim, JetBrains...).
    """
    from ..jobschema import job_file_schema

    component = ComponentSchema.from_spec_file(args.component_spec) if args.component_spec else None
    sys.stdout.write(json.dumps(job_file_schema(component), indent=2, ensure_ascii=False) + "\n")
    return 0


def pipeline_body(plan: RunPlan) -> dict[str, Any]:
    """Return the azure-ai-ml REST body of ``plan``'s pipeline job, built offline (no credentials, no network)."""
    from ..backends.azureml.pipeline import offline_body

    return offline_body(plan)
