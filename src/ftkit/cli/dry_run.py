"""``ftkit run JOB.yaml --dry-run``: every offline check, the plan, and what would be submitted.

Nothing here creates a backend: no credential is read, no request is sent, no process or file is created.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

from ..backends.traits import backend_traits
from ..exceptions import JobFileError, ValidationError
from ..job_checks import job_file_problems
from ..jobfile import JobFile
from ..plan import RunPlan, plan_run


def dry_run(job: JobFile, *, as_json: bool, deploy: bool, run_dir: Path | None) -> int:
    """Plan ``job`` offline and print the plan and the job body (JSON with ``as_json``).

    Args:
        job: The job, overrides applied.
        as_json: Print one JSON document instead of the readable summary.
        deploy: Whether the run would deploy and score.
        run_dir: The run directory given with ``--output``, if any.

    Returns:
        The exit status (0: the run would be submitted as shown).

    Raises:
        ValidationError: Every offline problem (the same as ``ftkit validate``'s).
    """
    # The same checks as `ftkit validate`: the files the job points at, then the plan.
    problems = job.overrides.relocate(job_file_problems(job))
    try:
        plan = plan_run(job)
    except ValidationError as exc:
        raise JobFileError([*problems, *exc.problems], f"{len(problems) + len(exc.problems)} problem(s)") from None
    if problems:
        raise JobFileError(problems, f"{len(problems)} problem(s) in {job.source or job.name}")
    record = dry_run_record(plan, deploy=deploy, run_dir=run_dir)
    if as_json:
        sys.stdout.write(json.dumps(record, indent=2, default=str) + "\n")
        return 0
    out = sys.stdout
    print(f"dry run: {job.source or job.name} is valid; nothing was submitted", file=out)
    print(f"  backend        {job.backend}", file=out)
    print(f"  model          {record['model']}", file=out)
    print(f"  component      {record['component']}", file=out)
    print(f"  display name   {plan.display_name}", file=out)
    print(f"  experiment     {plan.experiment_name}", file=out)
    print(
        f"  train data     {plan.train_data}{'' if record['data']['given'] else ' (built from the source)'}", file=out
    )
    print(f"  test data      {plan.test_data}", file=out)
    for key, value in job.overrides.values.items():
        print(f"  --set          {key}={json.dumps(value, default=str)}", file=out)
    for override in plan.overrides:
        print(f"  model default  {override}", file=out)
    evaluation = record.get("evaluation")
    if evaluation:
        print(f"  evaluate       {evaluation['what']}", file=out)
        print(f"  evaluate cost  {evaluation['cost']}", file=out)
        for gate in evaluation["require"]:
            print(f"  require        {gate}", file=out)
    print(f"  then           {record['then']}", file=out)
    print(f"{backend_traits(job.backend).request_label}:", file=out)
    print(json.dumps(record["body"], indent=2, default=str), file=out)
    return 0


def dry_run_record(plan: RunPlan, *, deploy: bool, run_dir: Path | None = None) -> dict[str, Any]:
    """Return what a run of ``plan`` would do, as a JSON-ready mapping (``ftkit run --dry-run --json``)."""
    job = plan.job
    given = bool(job.data.train_file and job.data.test_file)
    steps = "register"
    if deploy:
        steps += ", deploy, score, " + ("evaluate, " if job.evaluate is not None else "")
        steps += "keep the endpoint" if job.deploy.keep else "delete the endpoint"
    record: dict[str, Any] = {
        "dry_run": True,
        "job": job.name,
        "source": str(job.source) if job.source is not None else None,
        "backend": job.backend,
        "overrides": job.overrides.as_record(),
        "model": str(job.resolve_path(job.model.path)) if job.model.path else plan.model.asset_id,
        "component": f"{plan.schema.name}:{plan.schema.version}",
        "display_name": plan.display_name,
        "experiment_name": plan.experiment_name,
        "parameters": plan.parameters,
        "model_defaults": [str(o) for o in plan.overrides],
        "data": {"train": plan.train_data, "test": plan.test_data, "given": given},
        "deploy": deploy,
        "run_dir": str(run_dir) if run_dir is not None else None,
        "then": f"fine-tune, review metrics, {steps}",
    }
    if deploy and job.evaluate is not None:
        record["evaluation"] = evaluation_plan(plan)
    # What would be submitted, as the backend would submit it (built offline: no credential, no request).
    record["body"] = submission_body(job.backend, plan)
    return record


def submission_body(backend: str, plan: RunPlan) -> dict[str, Any]:
    """Return the body ``backend`` would submit the job with, built offline (what ``ftkit run --dry-run`` prints).

    Args:
        backend: The backend's name.
        plan: The checked plan.

    Returns:
        A JSON-ready mapping, from the builder the backend's traits name (``request_body``).
    """
    module_name, _, attr = backend_traits(backend).request_body.partition(":")
    build = getattr(importlib.import_module(module_name), attr)
    body: dict[str, Any] = build(plan)
    return body


def evaluation_plan(plan: RunPlan) -> dict[str, Any]:
    """What the evaluation stage would do and what it adds to the bill, stated before anything is created."""
    from ..evaluation.spec import requirement_lines

    job = plan.job
    settings = job.evaluate
    assert settings is not None
    deploy = job.deploy
    metrics = ", ".join(settings.metric_names())
    what = (
        f"{settings.prompts} held-out prompts from {settings.split}, greedy answers of at most "
        f"{settings.max_new_tokens} tokens from both models; {metrics}"
    )
    if settings.deploys_base:
        base = f"{deploy.endpoint_name or '<endpoint>'}/{settings.base_deployment}"
        cost = (
            f"the base model {job.model.path or plan.model.asset_id} on a second deployment {base} (0% traffic) "
            f"for the evaluation only, then deleted: {deploy.instance_count} more {deploy.instance_type} "
            f"instance(s) while {2 * settings.prompts} answers are generated"
        )
        if backend_traits(job.backend).runs_here:
            cost = (
                f"the base model {job.model.path} loaded beside the tuned one in the local endpoint server "
                f"({base}, 0% traffic) for the evaluation only: its memory again, no charge"
            )
    else:
        cost = f"none: the base model is already served by {settings.base}"
    judge = settings.judge
    if judge is not None:
        cost += f"; {4 * settings.prompts} judge requests to {judge.chat_url} (both orders, two answers each)"
    return {
        "what": what,
        "cost": cost,
        "base": settings.base,
        "base_deployment": settings.base_deployment if settings.deploys_base else None,
        "prompts": settings.prompts,
        "metrics": list(settings.metric_names()),
        "require": requirement_lines(settings.require),
    }
