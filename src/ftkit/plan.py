"""From a job file to a checked run plan, without touching any service.

:func:`plan_run` merges the job's typed parameters with the resolved model's defaults and checks them against
the component's schema; it does no I/O. The job runner calls it once per run, after the model and compute
stages (with the model's tags, the live GPU count and the live component schema), and before those runs
:func:`check_job`, so that a bad value or a missing file fails in a second, before anything is created.
``ftkit validate`` is :func:`plan_file`: the loader's problems, the file checks and the plan's, all at once.
``ftkit run`` checks the file with :func:`check_file` first (``--dry-run`` with :func:`plan_file`), so it reports
the same problems, in the same order and form, before any stage starts.
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs

from .backends.traits import backend_traits
from .component import ComponentSchema
from .exceptions import JobFileError, ParameterError, Problem, ValidationError
from .finetune import FinetunePipelineSpec, ParameterOverride
from .job_checks import file_problems, job_file_problems
from .jobfile import DataSection, JobFile, load_sections, parse_yaml
from .model import FoundationModelRef
from .overrides import Overrides
from .yamlsafe import read_text

__all__ = ["RunPlan", "check_file", "check_job", "data_files", "plan_file", "plan_run"]


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
    """Merge a job's parameters with the model's defaults and check them against the component (no I/O).

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
        schema = schema if schema is not None else spec.schema()
    except ParameterError as exc:
        problems.extend(exc.problems)
    try:
        spec, overrides = spec.with_model_defaults(model.model_specific_defaults, schema)
    except ValidationError as exc:
        problems.extend(exc.problems)
    parameters: dict[str, object] = {}
    if schema is not None:
        spec = spec.decoded(schema)
        try:
            parameters = spec.encoded(schema, source=source, lines=job.finetune_lines())
        except ParameterError as exc:
            problems.extend(exc.problems)
    gpus = gpus_per_node if gpus_per_node is not None else job.compute.gpus_per_node
    if gpus is None:
        # One device where there is no cluster; a cluster's GPUs come from its VM size, which only a live run reads.
        on_cluster = backend_traits(job.backend).trains_on_cluster
        gpus = 0 if on_cluster else 1
        if on_cluster:
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
        display_name=spec.display_name(model.name, gpus, _dataset_label(job)),
        experiment_name=job.experiment_name or f"chat_completion_{model.name}",
        train_data=train,
        test_data=test,
    )


def _dataset_label(job: JobFile) -> str:
    """Strictly private: the data's short name in the display name.

    ``ultrachat`` for ultrachat (the notebook's), else the source's or the train file's folder's name (``my-chats``
    for ``data.source: corpora/my-chats.jsonl``), else ``data``.
    """
    given = job.data.source or (str(Path(job.data.train_file).parent) if job.data.train_file else "")
    if "ultrachat" in given.lower():
        return "ultrachat"
    name = Path(given.rstrip("/")).stem if given else ""
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.-")
    return label[:40] or "data"


def check_job(job: JobFile, schema: ComponentSchema | None = None) -> None:
    """Check a loaded job before any stage runs: its files and, where a schema is at hand, its parameters.

    Args:
        job: The job file.
        schema: The component's inputs; the bundled snapshot of the pinned version when ftkit has one (without
            either the parameters wait for :func:`plan_run` with the live schema).

    Raises:
        ValidationError: Every problem found, each with file and line.
    """
    source = str(job.source) if job.source is not None else None
    problems = job.overrides.relocate(job_file_problems(job))
    if schema is None:
        try:
            schema = job.finetune.schema()
        except ParameterError as exc:
            # Azure ML: the live registry schema decides at plan time. Locally the bundled one is all there is.
            if not backend_traits(job.backend).live_schema:
                problems.extend(exc.problems)
            schema = None
    if schema is not None:
        try:
            job.finetune.decoded(schema).encoded(schema, source=source, lines=job.finetune_lines())
        except ParameterError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ValidationError(_by_line(problems), f"{len(problems)} problem(s) in {source or 'the job'}")


def plan_file(
    path: str | Path, schema: ComponentSchema | None = None, *, overrides: Overrides | None = None
) -> RunPlan:
    """Load a job file, check its files and plan it offline, reporting every problem of the file together.

    Args:
        path: The job file.
        schema: The component's inputs; the bundled snapshot of the pinned version by default.
        overrides: Keys replaced before the file is checked (``--set``); problems with them name the override.

    Returns:
        The plan.

    Raises:
        ValidationError: Every problem in the file: keys, values, files, and finetune parameters, by line.
    """
    job = _load_all(Path(path), schema, overrides)
    problems = job.overrides.relocate(job_file_problems(job))
    try:
        plan = plan_run(job, schema)
    except ValidationError as exc:
        problems.extend(exc.problems)
    if problems:
        raise JobFileError(_by_line(problems), f"{len(problems)} problem(s) in {path}")
    return plan


def check_file(path: str | Path, *, overrides: Overrides | None = None) -> JobFile:
    """Load a job file and check it as :func:`plan_file` does, without planning against a registry's schema.

    What ``ftkit run`` does before any stage: every problem :func:`plan_file` (``ftkit validate``) would find
    offline, in the same order and form, at once. On Azure ML the parameters wait for the live component
    schema when ftkit has no snapshot of its version (as :func:`check_job`).

    Args:
        path: The job file.
        overrides: Keys replaced before the file is checked (``--set``).

    Returns:
        The job, overrides applied.

    Raises:
        ValidationError: Every problem in the file, by line.
    """
    job = _load_all(Path(path), None, overrides)
    try:
        check_job(job)
    except ValidationError as exc:
        raise JobFileError(_by_line(list(exc.problems)), f"{len(exc.problems)} problem(s) in {path}") from None
    return job


def _load_all(path: Path, schema: ComponentSchema | None, overrides: Overrides | None) -> JobFile:
    """Strictly private: load ``path``; where it fails, add what the sections that did load show, by line."""
    try:
        return JobFile.load(path, overrides=overrides)
    except JobFileError as exc:
        problems = [*exc.problems, *_partial_problems(path, schema, overrides)]
        raise JobFileError(_by_line(problems), f"{len(problems)} problem(s) in {path}") from None


def _by_line(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: p.line or 0)


def _partial_problems(path: Path, schema: ComponentSchema | None, overrides: Overrides | None) -> list[Problem]:
    """Strictly private: file and parameter problems of a job file whose other sections failed to load."""
    try:
        raw, lines = parse_yaml(read_text(path), source=str(path))
        if not isinstance(raw, dict):
            return []
        if overrides:
            raw, lines = overrides.apply(raw), overrides.drop_lines(lines)
    except (OSError, JobFileError):
        return []  # the load error already says what is wrong with the file (or the overrides)
    relocate = overrides.relocate if overrides else list
    return relocate(_section_problems(path, schema, raw, lines))


def _section_problems(
    path: Path, schema: ComponentSchema | None, raw: dict[str, object], lines: dict[str, int]
) -> list[Problem]:
    """Strictly private: the problems of the sections of ``raw`` that load on their own."""
    parts, _ = load_sections(raw, source=str(path), lines=lines, partial=True)
    problems = file_problems(
        backend=parts.get("backend", "local"),
        model=parts.get("model"),
        data=parts.get("data", DataSection() if "data" not in raw else None),
        finetune=parts.get("finetune"),
        local=parts.get("local"),
        evaluate=parts.get("evaluate"),
        base_dir=path.parent,
        source=str(path),
        lines=lines,
    )
    spec = parts.get("finetune")
    if isinstance(spec, FinetunePipelineSpec):
        finetune_lines = {k.removeprefix("finetune."): v for k, v in lines.items() if k.startswith("finetune.")}
        try:
            use = schema if schema is not None else spec.schema()
            spec.decoded(use).encoded(use, source=str(path), lines=finetune_lines)
        except ValidationError as exc:
            problems.extend(exc.problems)
    return problems
