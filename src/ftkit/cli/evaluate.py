"""``ftkit eval``: the tuned model against its base, on a finished run or on any two deployments.

``ftkit eval --run RUN_DIR`` deploys a finished run's registered model and its base model side by side on a new
endpoint (deleted afterwards, also on Ctrl-C), evaluates them on the run's held-out split with the job file's
``evaluate:`` settings (or the defaults), and writes ``evaluation.json`` and ``evaluation.md`` beside
``run.json``. ``ftkit eval --tuned ENDPOINT[/DEPLOYMENT] --base ENDPOINT[/DEPLOYMENT] --data FILE`` evaluates
what is already serving (models ftkit did not train too); held-out loss then needs model files, so it is
reported as not measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..exceptions import FtkitError, Problem, ValidationError

if TYPE_CHECKING:
    from ..backends.base import Backend
    from ..evaluation import EvaluateSection, EvaluationResult


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``eval`` to the ``ftkit`` parser."""
    parser = sub.add_parser(
        "eval",
        help="compare the tuned model with its base on held-out prompts (a finished run, or two deployments)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", type=Path, help="a finished run's directory (or its run.json)")
    parser.add_argument("--tuned", help="ENDPOINT[/DEPLOYMENT] serving the tuned model")
    parser.add_argument("--base", help="ENDPOINT[/DEPLOYMENT] serving the base model")
    parser.add_argument("--data", type=Path, help="held-out conversations (JSONL) for --tuned/--base")
    parser.add_argument("--job", type=Path, help="a job file whose evaluate: section (and backend) to use")
    parser.add_argument("--backend", choices=("local", "azureml"), help="where the endpoints are (default: the job's)")
    parser.add_argument("--prompts", type=int, help="held-out prompts to evaluate (overrides evaluate.prompts)")
    parser.add_argument("--out", type=Path, help="where to write the report (default: the run's directory, or .)")
    parser.add_argument("--json", action="store_true", help="print evaluation.json on stdout")
    parser.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> int:
    from ..runner import StageEvent
    from .run import ProgressPrinter, _quiet_progress_bars

    _quiet_progress_bars()
    printer = ProgressPrinter(sys.stderr)

    def progress(stage: str, message: str) -> None:
        printer(StageEvent(stage, message))

    if args.run is not None:
        if args.tuned or args.base:
            raise ValidationError([Problem("--run", "give either --run or --tuned/--base, not both")])
        result, out = _eval_run(args, progress)
    else:
        result, out = _eval_endpoints(args, progress)
    paths = result.write(out)
    if args.json:
        sys.stdout.write(paths["json"].read_text(encoding="utf-8"))
    else:
        for line in result.summary_lines():
            print(line)
        print(f"report: {paths['markdown']}")
    result.gate()
    return 0


def _settings(args: argparse.Namespace, job: Any) -> EvaluateSection:
    import attrs

    from ..evaluation import EvaluateSection

    settings = job.evaluate if job is not None and job.evaluate is not None else EvaluateSection()
    if args.prompts is not None:
        if args.prompts < 2:
            raise ValidationError([Problem("--prompts", f"{args.prompts} is too few", "evaluate at least 2 prompts")])
        settings = attrs.evolve(settings, prompts=args.prompts)
    return settings


def _backend(name: str | None, job: Any) -> Backend:
    from ..backends import backend_for_job, get_backend

    if job is not None and (name is None or name == job.backend):
        return backend_for_job(job)
    return get_backend(name or "local")


def _eval_run(args: argparse.Namespace, progress: Any) -> tuple[EvaluationResult, Path]:
    from ..base_model import base_registered_model, resolve_base_model
    from ..deploy import EndpointDeployer
    from ..evaluation import Candidate, Evaluation, load_prompts
    from ..jobfile import JobFile
    from ..names import endpoint_name, random_suffix

    record_path = args.run / "run.json" if args.run.is_dir() else args.run
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValidationError(
            [Problem("--run", f"{record_path} does not exist", "give a run's directory (it holds run.json)")],
            "not a run",
        ) from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValidationError([Problem("--run", f"cannot read {record_path}: {reason}")], "not a run") from None
    registered_record = record.get("registered_model")
    job_path = args.job or (Path(record["job_file"]) if record.get("job_file") else None)
    if not isinstance(registered_record, dict) or job_path is None:
        raise ValidationError(
            [Problem("--run", f"{record_path} records no registered model or job file", "evaluate a finished run")],
            "not a finished run",
        )
    job = JobFile.load(job_path)
    settings = _settings(args, job)
    backend = _backend(args.backend, job)
    test = args.data or Path(record.get("data", {}).get("files", {}).get("test", ""))
    prompts = load_prompts(test, settings.prompts, seed=settings.seed)
    # The models as the backend's registry has them now (a deleted one fails here, before any deployment).
    tuned_model = backend.get_model(str(registered_record["name"]), str(registered_record["version"]))
    recorded = (record.get("model") or {}).get("version")
    base_model = base_registered_model(resolve_base_model(job, backend, version=str(recorded) if recorded else None))
    name = endpoint_name(f"{job.name}-eval", random_suffix())
    deployer = EndpointDeployer.from_job(backend, job, name=name, on_event=lambda m: progress("evaluate", m))
    with deployer.session(keep=False):
        deployer.deploy(tuned_model)
        deployer.add_deployment(base_model, name=settings.base_deployment)
        evaluation = Evaluation(
            settings,
            tuned=Candidate(
                label="tuned", endpoints=backend.endpoints, endpoint=name, deployment=job.deploy.deployment_name,
                model=tuned_model,
            ),
            base=Candidate(
                label="base", endpoints=backend.endpoints, endpoint=name, deployment=settings.base_deployment,
                model=base_model,
            ),
            prompts=prompts,
            losses=backend.heldout_losses,
            out_dir=args.out or record_path.parent,
            on_progress=lambda m: progress("evaluate", m),
        )  # fmt: skip
        result = evaluation.run()
    return result, args.out or record_path.parent


def _eval_endpoints(args: argparse.Namespace, progress: Any) -> tuple[EvaluationResult, Path]:
    from ..evaluation import Candidate, Evaluation, load_prompts
    from ..jobfile import JobFile

    missing = [
        flag for flag, value in (("--tuned", args.tuned), ("--base", args.base), ("--data", args.data)) if not value
    ]
    if missing:
        raise ValidationError([Problem(flag, "is required without --run") for flag in missing], "nothing to evaluate")
    job = JobFile.load(args.job) if args.job is not None else None
    settings = _settings(args, job)
    backend = _backend(args.backend, job)
    prompts = load_prompts(args.data, settings.prompts, seed=settings.seed, key="--prompts")
    candidates = []
    for label, target in (("tuned", args.tuned), ("base", args.base)):
        endpoint, _, deployment = str(target).partition("/")
        try:
            backend.endpoints.get_endpoint(endpoint)
        except FtkitError as exc:
            raise ValidationError([Problem(f"--{label}", f"endpoint {endpoint}: {exc}")], "no such endpoint") from None
        candidates.append(
            Candidate(label=label, endpoints=backend.endpoints, endpoint=endpoint, deployment=deployment or None)
        )
    out = args.out or Path.cwd()
    evaluation = Evaluation(
        settings,
        tuned=candidates[0],
        base=candidates[1],
        prompts=prompts,
        loss_note="not measured: endpoints given by name serve generations only (ftkit eval --run measures it)",
        out_dir=out,
        on_progress=lambda m: progress("evaluate", m),
    )
    return evaluation.run(), out
