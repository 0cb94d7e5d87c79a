"""From a job file to a checked run plan, without touching any service.

:func:`plan_run` does every check that can be done offline and reports all problems together; the job
runner calls it again with the resolved model (its tags) and the live compute check before submitting.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from .component import ComponentSchema
from .exceptions import JobFileError, ParameterError, Problem, ValidationError
from .finetune import FinetunePipelineSpec, ParameterOverride
from .jobfile import JobFile, parse_yaml
from .model import FoundationModelRef

__all__ = ["RunPlan", "data_files", "plan_file", "plan_run"]


@attrs.frozen(kw_only=True)
class RunPlan:
    """The checked, merged description of one fine-tuning run.

    Attributes:
        job: The job file.
        model: The base model (resolved when a backend has seen it).
        schema: The component schema the parameters were checked against.
        spec: The fine-tuning spec merged with the model's defaults.
        parameters: The parameters in the component's encoding.
        overrides: Where job and model defaults disagreed, and who won.
        gpus_per_node: GPUs per node of the training compute.
        display_name: The pipeline's display name.
        experiment_name: The experiment.
        train_data: The training data (local path or URI).
        test_data: The test data (local path or URI).
    """

    job: JobFile
    model: FoundationModelRef
    schema: ComponentSchema
    spec: FinetunePipelineSpec
    parameters: dict[str, object]
    overrides: tuple[ParameterOverride, ...]
    gpus_per_node: int
    display_name: str
    experiment_name: str
    train_data: str
    test_data: str

    def __repr__(self) -> str:
        # The generated repr nests the whole job file and component schema (thousands of characters).
        return (
            f"RunPlan({self.display_name!r}, backend={self.job.backend!r}, model={self.model.asset_id!r}, "
            f"component='{self.schema.name}:{self.schema.version}', parameters={len(self.parameters)}, "
            f"model_defaults={len(self.overrides)})"
        )

    def _repr_html_(self) -> str:
        from .display import html_table

        rows = [
            ("backend", self.job.backend),
            ("model", self.model.asset_id),
            ("component", f"{self.schema.name} {self.schema.version} ({self.schema.source})"),
            ("experiment", self.experiment_name),
            ("GPUs per node", str(self.gpus_per_node)),
            ("train data", self.train_data),
            ("test data", self.test_data),
            *((f"parameter {k}", repr(v)) for k, v in sorted(self.parameters.items())),
            *(("model default", str(o)) for o in self.overrides),
        ]
        return html_table(rows, f"RunPlan {self.display_name}")


def data_files(job: JobFile) -> tuple[str, str]:
    """Return the train and test data the job uses: given files/URIs, or the builder's output paths."""
    data = job.data
    out = job.resolve_path(data.out_dir)

    def given(p: str) -> str:
        # URIs (azureml://, https://, azureml:name:version assets) pass through; paths follow the job file.
        return p if "://" in p or p.startswith("azureml:") else str(job.resolve_path(p))

    train = given(data.train_file) if data.train_file else str(out / f"{data.train_split}.jsonl")
    test = given(data.test_file) if data.test_file else str(out / f"{data.test_split}.jsonl")
    return train, test


def plan_run(
    job: JobFile,
    schema: ComponentSchema | None = None,
    *,
    model: FoundationModelRef | None = None,
    gpus_per_node: int | None = None,
) -> RunPlan:
    """Check a job offline and merge its parameters with the model's defaults.

    Args:
        job: The job file.
        schema: The component's inputs; the bundled snapshot of the pinned version by default.
        model: The resolved model (with tags); the job's reference when not resolved yet.
        gpus_per_node: GPUs per node from a live compute check; ``job.compute.gpus_per_node`` otherwise.

    Returns:
        The plan.

    Raises:
        ValidationError: Every problem found (parameters, tags, compute), each with file and line.
    """
    source = str(job.source) if job.source is not None else None
    problems: list[Problem] = []
    model = model or job.model.ref()
    spec = job.finetune
    overrides: tuple[ParameterOverride, ...] = ()
    try:
        spec, overrides = spec.with_model_defaults(model.model_specific_defaults)
    except ValidationError as exc:
        problems.extend(exc.problems)
    parameters: dict[str, object] = {}
    try:
        schema = schema if schema is not None else spec.schema()
        parameters = spec.encoded(schema, source=source, lines=job.finetune_lines())
    except ParameterError as exc:
        problems.extend(exc.problems)
    gpus = gpus_per_node if gpus_per_node is not None else job.compute.gpus_per_node
    if gpus is None:
        gpus = 1 if job.backend == "local" else 0
        if job.backend != "local":
            problems.append(
                Problem(
                    "compute.gpus_per_node",
                    "is needed to plan the run offline (a live run reads it from the SKU list)",
                    "add gpus_per_node to the compute section",
                    source,
                    job.lines.get("compute"),
                )
            )
    if problems or schema is None:
        problems = job.overrides.relocate(problems)  # an overridden parameter is named by its --set, not a line
        raise ValidationError(problems, f"{len(problems)} problem(s) in {source or 'the job'}")
    train, test = data_files(job)
    return RunPlan(
        job=job,
        model=model,
        schema=schema,
        spec=spec,
        parameters=parameters,
        overrides=overrides,
        gpus_per_node=gpus,
        display_name=spec.display_name(model.name, gpus),
        experiment_name=job.experiment_name or f"chat_completion_{model.name}",
        train_data=train,
        test_data=test,
    )


def plan_file(path: str | Path, schema: ComponentSchema | None = None) -> RunPlan:
    """Load a job file and plan it offline, reporting job-file and parameter problems together.

    Args:
        path: The job file.
        schema: The component's inputs; the bundled snapshot of the pinned version by default.

    Returns:
        The plan.

    Raises:
        ValidationError: Every problem in the file: keys, values, and finetune parameters.
    """
    try:
        job = JobFile.load(path)
    except JobFileError as exc:
        problems = sorted([*exc.problems, *_finetune_problems(Path(path), schema)], key=lambda p: p.line or 0)
        raise JobFileError(problems, f"{len(problems)} problem(s) in {path}") from None
    return plan_run(job, schema)


def _finetune_problems(path: Path, schema: ComponentSchema | None) -> list[Problem]:
    """Strictly private: parameter problems of a job file whose other sections failed to load."""
    try:
        raw, all_lines = parse_yaml(path.read_text(encoding="utf-8"), source=str(path))
        section = raw.get("finetune") if isinstance(raw, dict) else None
        if not isinstance(section, dict):
            return []
        lines = {k.removeprefix("finetune."): v for k, v in all_lines.items() if k.startswith("finetune.")}
        spec = FinetunePipelineSpec.from_mapping({str(k): v for k, v in section.items()})
        spec.encoded(schema, source=str(path), lines=lines)
    except (OSError, JobFileError, TypeError):
        return []  # the load error already says what is wrong with the file
    except ValidationError as exc:
        return list(exc.problems)
    return []
