"""The YAML job file: one run, end to end, as typed values.

``JobFile.load(path)`` reads the file and reports every problem at once (file, line, key, reason, the nearest
valid key); it does no other I/O and checks nothing that needs a service. See ``examples/phi3-ultrachat.yaml``
and docs/jobfile.md for every key.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import attrs
import yaml

from .backends.traits import backend_traits
from .convert import BAD, NAME, SEED_MAX, bounds, convert_value, describe_type
from .deployment_settings import DeploymentSettings, ServerSettings
from .display import html_table, set_fields, short
from .evaluation.spec import EvaluateSection, load_evaluate_section
from .exceptions import JobFileError, Problem, closest
from .finetune import FinetunePipelineSpec
from .model import FoundationModelRef
from .overrides import Overrides
from .yamlsafe import load_yaml, read_text

__all__ = [
    "ComputeSection",
    "DataSection",
    "DeploySection",
    "JobFile",
    "LocalSection",
    "ModelSection",
    "RegisterSection",
    "ScoreSection",
    "load_sections",
    "parse_yaml",
]

BackendName = Literal["azureml", "local"]
S = TypeVar("S")


@attrs.frozen(kw_only=True)
class ModelSection:
    """``model:`` which foundation model to fine-tune.

    Attributes:
        name: The registry model's name (azureml), or a local registry entry / label for the local backend.
        registry: The registry to read it from.
        version: A pinned version; ``latest`` (or unset) means the label ``latest``.
        label: A label to resolve when no version is pinned.
        path: A local Hugging Face model directory (local backend); nothing is ever downloaded.
    """

    name: str
    registry: str = "azureml"
    version: str | None = None
    label: str | None = None
    path: str | None = None

    def ref(self) -> FoundationModelRef:
        """Return the :class:`~ftkit.model.FoundationModelRef` this section names."""
        version = self.version
        label = self.label
        if version is not None and version.lower() == "latest":
            version, label = None, "latest"
        return FoundationModelRef(name=self.name, registry=self.registry, version=version, label=label)


@attrs.frozen(kw_only=True)
class ComputeSection:
    """``compute:`` the training cluster (azureml) or device (local).

    Attributes:
        cluster: The Azure ML compute cluster's name.
        size: Its VM size, used when ftkit creates the cluster.
        max_instances: Node ceiling when ftkit creates the cluster.
        min_instances: Node floor when ftkit creates the cluster (0 scales to zero when idle).
        tier: ``dedicated`` or ``low_priority``.
        low_priority_fallback: Retry creation as low priority when dedicated fails (as the notebook does).
        gpus_per_node: GPUs per node; checked against the SKU list when given, required for offline render.
    """

    cluster: str = "gpu-cluster-big"
    size: str | None = None
    max_instances: int = attrs.field(default=2, metadata=bounds(1, 10_000))
    min_instances: int = attrs.field(default=0, metadata=bounds(0, 10_000))
    tier: Literal["dedicated", "low_priority"] = "dedicated"
    low_priority_fallback: bool = True
    gpus_per_node: int | None = attrs.field(default=None, metadata=bounds(1, 64))


@attrs.frozen(kw_only=True)
class DataSection:
    """``data:`` where the chat data comes from and how much of it to use.

    Attributes:
        source: A Hugging Face dataset id (its local cache only), a local parquet/JSONL file or directory.
        train_split: The split to train on.
        test_split: The split to evaluate on.
        score_split: The split the sample scoring request is drawn from (``None``: none).
        percent: Percent of each split to keep (the notebook uses 5).
        rows: Rows of each split to keep (instead of ``percent``).
        sample: ``first`` (the notebook's behaviour) or a seeded ``random`` sample.
        seed: Seed of the random sample.
        strict: Fail on the first rejected row instead of dropping and reporting.
        out_dir: Where the built JSONL files go, relative to the job file.
        train_file: An already-built train file (local path or ``azureml://`` / ``name:version``), skipping the build.
        test_file: An already-built test file, as ``train_file``.
    """

    source: str | None = None
    train_split: str = "train_sft"
    test_split: str = "test_sft"
    score_split: str | None = "test_gen"
    percent: float | None = attrs.field(default=None, metadata=bounds(maximum=100, exclusive_minimum=0))
    rows: int | None = attrs.field(default=None, metadata=bounds(1, 1_000_000_000))
    sample: Literal["first", "random"] = "first"
    seed: int = attrs.field(default=0, metadata=bounds(0, SEED_MAX))
    strict: bool = False
    out_dir: str = "data"
    train_file: str | None = None
    test_file: str | None = None


@attrs.frozen(kw_only=True)
class RegisterSection:
    """``register:`` how the fine-tuned model is registered.

    Attributes:
        name: The registered model's name (default: ``{model}-ultrachat-200k`` as in the notebook).
        version: Its version (default: a timestamp).
        description: Its description.
    """

    name: str | None = attrs.field(default=None, metadata=NAME)
    version: str | None = attrs.field(default=None, metadata=NAME)
    description: str | None = None


@attrs.frozen(kw_only=True)
class DeploySection(DeploymentSettings):
    """``deploy:`` the online endpoint and its deployment.

    Every :class:`~ftkit.deployment_settings.DeploymentSettings` field (instance type and count, request
    timeout, liveness delay, concurrency, ``max_queue``, ``max_batch_size``) is a key of this section; these
    are the endpoint's own.

    Attributes:
        endpoint_name: The endpoint's name (default: ``{job name}-{timestamp}``).
        deployment_name: The deployment's name.
        keep: Keep the endpoint after the run (it costs money while it exists).
        server: The local endpoint server's settings (``deploy.server:``; the local backend only; ``None``:
            the backend's own).
    """

    endpoint_name: str | None = attrs.field(default=None, metadata=NAME)
    deployment_name: str = attrs.field(default="demo", metadata=NAME)
    keep: bool = False
    server: ServerSettings | None = None


@attrs.frozen(kw_only=True)
class ScoreSection:
    """``score:`` the sample scoring request sent to the deployed endpoint.

    Attributes:
        temperature: Sampling temperature.
        top_p: Nucleus sampling mass.
        do_sample: Sample (true) or decode greedily (false).
        max_new_tokens: Longest answer.
    """

    temperature: float = attrs.field(default=0.6, metadata=bounds(0, 100))
    top_p: float = attrs.field(default=0.9, metadata=bounds(maximum=1, exclusive_minimum=0))
    do_sample: bool = True
    max_new_tokens: int = attrs.field(default=200, metadata=bounds(1, 1_048_576))


@attrs.frozen(kw_only=True)
class LocalSection:
    """``local:`` settings of the local backend.

    Attributes:
        home: ftkit's state directory (MLflow store, registry, endpoints); default ``$FTKIT_HOME`` or ``~/.ftkit``.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        save_steps: Steps between checkpoints (one is also written at each epoch's end).
        lora_target_modules: Comma-separated module names to adapt (default: every linear layer but the head).
        max_eval_examples: Evaluate on at most this many test conversations.
        processes: Training processes on this host (torchrun ranks). Default: ``compute.gpus_per_node`` (what
            Azure ML passes as ``number_of_gpu_to_use_finetuning``) when this machine has several GPUs, else 1.
            With ``device: cpu``, N gloo processes (to test the multi-GPU path without GPUs).
        max_tokens_per_micro_batch: Token budget of one micro-batch (a step's conversations are split into
            micro-batches of at most this many tokens; results do not depend on it). Default: planned from the
            GPU's memory (or ``gpu_memory_gib``), 16384 on a CPU.
        gradient_checkpointing: Recompute activations in the backward pass (default: only when the budget
            needs it).
        gpu_memory_gib: GPU memory to plan for (default: the card's), e.g. 22 for a 24 GB card.
        torch_compile: ``torch.compile`` each decoder layer on CUDA (pays off on runs of more than a few minutes).
        quantize: ``4bit``: QLoRA, the frozen base model held in 4-bit NF4 (double quantization, bfloat16
            compute) so that a 7-8B model trains on a 24 GB card; needs a CUDA GPU, LoRA and ``ftkit[qlora]``.
            Default ``none``: the base in bfloat16.
    """

    home: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Training settings the Azure component does not declare, so they cannot go under `finetune:`.
    save_steps: int | None = attrs.field(default=None, metadata=bounds(1, 100_000_000))
    lora_target_modules: str | None = None
    max_eval_examples: int | None = attrs.field(default=None, metadata=bounds(1))
    processes: int | None = attrs.field(default=None, metadata=bounds(1, 64))
    max_tokens_per_micro_batch: int | None = attrs.field(default=None, metadata=bounds(1, 16_777_216))
    gradient_checkpointing: bool | None = None
    gpu_memory_gib: float | None = attrs.field(default=None, metadata=bounds(maximum=4_096, exclusive_minimum=0))
    torch_compile: bool | None = None
    quantize: Literal["none", "4bit"] | None = None

    def target_modules(self) -> tuple[str, ...] | None:
        """``lora_target_modules`` as module names (``None``: every linear layer but the head)."""
        if self.lora_target_modules is None:
            return None
        return tuple(m.strip() for m in self.lora_target_modules.split(",") if m.strip())


_SECTIONS: Mapping[str, type] = {
    "model": ModelSection,
    "compute": ComputeSection,
    "data": DataSection,
    "register": RegisterSection,
    "deploy": DeploySection,
    "score": ScoreSection,
    "local": LocalSection,
}
_TOP_LEVEL = ("name", "backend", "experiment_name", *_SECTIONS, "finetune", "evaluate")


@attrs.frozen(kw_only=True)
class JobFile:
    """A whole run: model, compute, data, fine-tuning, registration, deployment, scoring.

    Attributes:
        name: The run's name (used for the experiment, endpoint and output names).
        backend: ``azureml`` or ``local``.
        experiment_name: The experiment to file the job under (default: ``chat_completion_{model}``).
        model: See :class:`ModelSection`.
        compute: See :class:`ComputeSection`.
        data: See :class:`DataSection`.
        finetune: See :class:`~ftkit.finetune.FinetunePipelineSpec`.
        register: See :class:`RegisterSection`.
        deploy: See :class:`DeploySection`.
        score: See :class:`ScoreSection`.
        local: See :class:`LocalSection`.
        evaluate: See :class:`~ftkit.evaluation.EvaluateSection` (``None``: no evaluation; an empty
            ``evaluate:`` runs one with every default).
        source: The file it was loaded from, if any.
        lines: Line numbers of keys in ``source`` (``finetune.learning_rate`` -> 14).
        overrides: Keys replaced from outside the file (``--set``, ``overrides=``), recorded in ``run.json``.
    """

    name: str
    backend: BackendName = "local"
    experiment_name: str | None = None
    model: ModelSection
    compute: ComputeSection = attrs.field(factory=ComputeSection)
    data: DataSection = attrs.field(factory=DataSection)
    finetune: FinetunePipelineSpec = attrs.field(factory=FinetunePipelineSpec)
    register: RegisterSection = attrs.field(factory=RegisterSection)
    deploy: DeploySection = attrs.field(factory=DeploySection)
    score: ScoreSection = attrs.field(factory=ScoreSection)
    local: LocalSection = attrs.field(factory=LocalSection)
    evaluate: EvaluateSection | None = None
    source: Path | None = attrs.field(default=None, eq=False)
    lines: Mapping[str, int] = attrs.field(factory=dict, eq=False, repr=False)
    overrides: Overrides = attrs.field(factory=Overrides, eq=False, repr=False)

    @classmethod
    def load(cls, path: str | Path, *, overrides: Overrides | Mapping[str, object] | None = None) -> JobFile:
        """Read and check a YAML job file.

        Args:
            path: The file.
            overrides: Keys to replace before the file is checked (``{"finetune.learning_rate": 1e-4}``);
                see :mod:`ftkit.overrides`.

        Returns:
            The job.

        Raises:
            JobFileError: The file is missing or unreadable, is not YAML, or has bad keys or values (all listed).
        """
        path = Path(path)
        text = read_text(path)  # size, encoding and file-type limits (see ftkit.yamlsafe)
        return cls.from_yaml(text, source=str(path), overrides=overrides)

    @classmethod
    def from_yaml(
        cls, text: str, *, source: str = "<string>", overrides: Overrides | Mapping[str, object] | None = None
    ) -> JobFile:
        """Parse a job file's text (see :meth:`load`).

        Args:
            text: The YAML.
            source: A name for messages.
            overrides: Keys to replace before the text is checked (see :meth:`load`).

        Returns:
            The job.

        Raises:
            JobFileError: The text is not YAML or has bad keys or values.
        """
        data, lines = parse_yaml(text, source=source)
        if not isinstance(data, dict):
            raise JobFileError(
                [Problem("", "expected a mapping of sections at the top level", source=source, line=1)],
                "invalid job file",
            )
        job = cls._from_raw(data, source=source, lines=lines, overrides=_as_overrides(overrides))
        return attrs.evolve(job, source=Path(source) if source != "<string>" else None)

    @classmethod
    def _from_raw(
        cls, data: Mapping[str, Any], *, source: str | None, lines: Mapping[str, int], overrides: Overrides
    ) -> JobFile:
        """Apply ``overrides`` to the raw mapping, then load it; problems with overridden keys name the override."""
        if not overrides:
            return cls.from_mapping(data, source=source, lines=lines)
        try:
            job = cls.from_mapping(overrides.apply(data), source=source, lines=overrides.drop_lines(lines))
        except JobFileError as exc:
            problems = overrides.relocate(exc.problems)
            raise JobFileError(problems, f"{len(problems)} problem(s) in {source or 'the job file'}") from None
        return attrs.evolve(job, overrides=overrides)

    def evolve(self, overrides: Mapping[str, object] | None = None, /, **sections: Any) -> JobFile:
        """Return this job with keys replaced, checked again exactly as if the file had said so.

        ``job.evolve({"finetune.learning_rate": 1e-4, "deploy.keep": True})`` or, section by section,
        ``job.evolve(data={"percent": 1})``. The replaced keys are recorded in :attr:`overrides` (and in
        ``run.json``); bad values raise the loader's errors, named by their key.

        Args:
            overrides: Dotted key to value (see :mod:`ftkit.overrides`).
            **sections: Top-level keys to replace (a mapping is merged into the section).

        Returns:
            The new job.

        Raises:
            JobFileError: An overridden value is not allowed where it goes.
        """
        given = Overrides({**(overrides or {}), **sections}, "overrides")
        combined = self.overrides.merged(given) if self.overrides else given
        source = str(self.source) if self.source is not None else None
        # Start from this job's own values (not the file again), so earlier evolve() calls are kept.
        job = type(self)._from_raw(
            self.to_mapping(), source=source, lines=combined.drop_lines(self.lines), overrides=given
        )
        return attrs.evolve(job, source=self.source, overrides=combined)

    def to_mapping(self) -> dict[str, Any]:
        """Return the job as a job file's mapping (every key, defaults included); ``from_mapping`` reads it back."""
        out: dict[str, Any] = {}
        for field in attrs.fields(type(self)):
            if field.name in ("source", "lines", "overrides"):
                continue
            value = getattr(self, field.name)
            if field.name == "evaluate" and value is None:
                continue  # an `evaluate:` key, even empty, turns the evaluation on
            out[field.name] = _plain(value)
        return out

    def __repr__(self) -> str:
        # The generated repr (every section, every default) runs to ~1,800 characters on one line.
        parts = [repr(self.name), f"backend={self.backend!r}", f"model={self.model.path or self.model.name!r}"]
        if backend_traits(self.backend).trains_on_cluster:
            parts.append(f"compute={self.compute.cluster!r}")
        parts.append(f"data={self.data.train_file or self.data.source!r}")
        changed = set_fields(self.finetune)
        if changed:
            shown = ", ".join(f"{k}={short(v, 24)}" for k, v in changed[:4])
            parts.append(f"finetune={{{shown}{', …' if len(changed) > 4 else ''}}}")
        if self.overrides:
            parts.append(f"overrides={dict(self.overrides.values)!r}")
        if self.source is not None:
            parts.append(f"source={str(self.source)!r}")
        return f"JobFile({', '.join(parts)})"

    def _repr_html_(self) -> str:
        rows: list[tuple[str, str]] = [("backend", self.backend)]
        if self.experiment_name:
            rows.append(("experiment", self.experiment_name))
        for name in (*_SECTIONS, "finetune"):
            section = getattr(self, name)
            changed = set_fields(section)
            if name == "model" or changed:
                rows.append((name, ", ".join(f"{k}={v!r}" for k, v in set_fields(section)) or "defaults"))
        for key, value in self.overrides.values.items():
            rows.append((f"{self.overrides.origin} {key}", repr(value)))
        caption = f"JobFile {self.name}" + (f" ({self.source})" if self.source is not None else "")
        return html_table(rows, caption)

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], *, source: str | None = None, lines: Mapping[str, int] | None = None
    ) -> JobFile:
        """Build a job from already-parsed data (see :meth:`load`).

        Args:
            data: The top-level mapping.
            source: The file it came from, for messages.
            lines: Line numbers of keys.

        Returns:
            The job.

        Raises:
            JobFileError: Every bad key or value.
        """
        lines = dict(lines or {})
        kwargs, problems = load_sections(data, source=source, lines=lines)
        if problems:
            raise JobFileError(problems, f"{len(problems)} problem(s) in {source or 'the job file'}")
        return cls(**kwargs, source=Path(source) if source else None, lines=lines)

    @property
    def base_dir(self) -> Path:
        """The directory relative paths in the job file are resolved against."""
        return self.source.parent if self.source is not None else Path.cwd()

    def finetune_lines(self) -> dict[str, int]:
        """Line numbers of the ``finetune`` keys, by parameter name."""
        prefix = "finetune."
        return {k.removeprefix(prefix): v for k, v in self.lines.items() if k.startswith(prefix)}

    def resolve_path(self, path: str) -> Path:
        """Resolve a path from the job file against :attr:`base_dir`."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p


def _as_overrides(value: Overrides | Mapping[str, object] | None) -> Overrides:
    if value is None:
        return Overrides()
    return value if isinstance(value, Overrides) else Overrides(dict(value), "overrides")


def _plain(value: object) -> Any:
    """An attrs section as the job file's mapping (``extra`` parameters flattened in, as the file writes them)."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if not attrs.has(type(value)):
        return dict(value) if isinstance(value, Mapping) else value
    out: dict[str, Any] = {}
    for field in attrs.fields(type(value)):  # type: ignore[arg-type]
        if not field.init:
            continue
        item = getattr(value, field.name)
        if field.name == "extra" and isinstance(item, Mapping):
            out.update({str(k): _plain(v) for k, v in item.items()})
        else:
            out[field.name.lstrip("_")] = _plain(item)
    return out


def load_sections(
    data: Mapping[str, Any],
    *,
    source: str | None = None,
    lines: Mapping[str, int] | None = None,
    partial: bool = False,
) -> tuple[dict[str, Any], list[Problem]]:
    """Convert a job file's top-level mapping section by section, keeping the sections that loaded.

    :meth:`JobFile.from_mapping` raises when any problem was found; ``ftkit validate`` uses the sections that
    did load to check the rest of the file in the same run (a bad ``percent`` does not hide a missing model).

    Args:
        data: The top-level mapping.
        source: The file it came from, for messages.
        lines: Line numbers of keys.
        partial: Keep a section whose values partly failed, built from the values that converted (the
            others at their defaults), so that what it points at can still be checked.

    Returns:
        The :class:`JobFile` keyword arguments that converted, and every problem found.
    """
    lines = dict(lines or {})
    problems: list[Problem] = []

    def problem(where: str, message: str, suggestion: str | None = None) -> None:
        problems.append(Problem(where, message, suggestion, source, lines.get(where)))

    for key in data:
        if key not in _TOP_LEVEL:
            near = closest(str(key), _TOP_LEVEL)
            problem(
                str(key),
                "unknown top-level key",
                f"did you mean {near[0]}?" if near else f"valid keys: {', '.join(_TOP_LEVEL)}",
            )
    kwargs: dict[str, Any] = {}
    for key, hint in (("name", str), ("experiment_name", str | None), ("backend", BackendName)):
        if key in data:
            value, reason = convert_value(data[key], hint, NAME if key != "backend" else None)
            if value is BAD:
                problem(key, reason or f"expected {describe_type(hint)}")
            else:
                kwargs[key] = value
    if "name" not in data:
        problem("name", "is required", "name the run, e.g. name: phi3-ultrachat")
    for key, section_cls in _SECTIONS.items():
        if key in data:
            kwargs[key] = _build_section(section_cls, data[key], key, problem, partial=partial)
    if "model" not in data:
        problem(
            "model",
            "is required",
            "e.g. model: {name: Phi-3-mini-4k-instruct, registry: azureml, version: latest}",
        )
    raw_data = data.get("data")
    given: Mapping[str, Any] = raw_data if isinstance(raw_data, dict) else {}
    if bool(given.get("train_file")) != bool(given.get("test_file")):
        # With only one of them, the other would silently come from the builder's output instead.
        problem("data", "train_file and test_file go together", "set both, or neither to build them from source")
    section = kwargs.get("data")
    if isinstance(section, DataSection) and section.percent is not None and section.rows is not None:
        problem("data.rows", "is set together with data.percent", "keep one of percent and rows")
    compute = kwargs.get("compute")
    if isinstance(compute, ComputeSection) and compute.min_instances > compute.max_instances:
        problem(
            "compute.min_instances",
            f"{compute.min_instances} is above compute.max_instances ({compute.max_instances})",
            "lower min_instances or raise max_instances",
        )
    if "finetune" in data:
        section = data["finetune"]
        if isinstance(section, dict):
            kwargs["finetune"] = FinetunePipelineSpec.from_mapping(
                {str(k): v for k, v in section.items()},
                on_problem=lambda key, reason: problem(f"finetune.{key}", reason),
            )
        elif section is not None:
            problem("finetune", "expected a mapping of parameters")
    if "evaluate" in data:

        def located(where: str, message: str, suggestion: str | None = None) -> None:
            # A missing key has no line of its own: point at the list item or section that lacks it.
            near = where
            while near not in lines and ("." in near or "[" in near):
                near = near[: max(near.rfind("."), near.rfind("["))]
            problems.append(Problem(where, message, suggestion, source, lines.get(near)))

        evaluate = load_evaluate_section(data["evaluate"], located)
        if evaluate is not None:
            kwargs["evaluate"] = evaluate if evaluate.enabled else None
    return kwargs, problems


def parse_yaml(text: str, *, source: str = "<string>") -> tuple[Any, dict[str, int]]:
    """Parse YAML once, returning the data and the 1-based line of every mapping key (``finetune.lr`` -> 14).

    Args:
        text: The YAML.
        source: A name for messages.

    Returns:
        The data, and key path to line.

    Raises:
        JobFileError: The text is not YAML (with the line of the error), nests or expands beyond the limits of
            :mod:`ftkit.yamlsafe`, or gives a key twice.
    """
    data, node = load_yaml(text, source)  # limits, duplicate keys: see ftkit.yamlsafe
    lines: dict[str, int] = {}
    if node is not None:
        _collect_lines(node, "", lines)
    return data, lines


def _collect_lines(node: yaml.Node, prefix: str, out: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            out[key] = key_node.start_mark.line + 1
            _collect_lines(value_node, f"{key}.", out)
    elif isinstance(node, yaml.SequenceNode) and prefix:
        # List items (evaluate.checks[0]) get lines too, so a problem inside one points at its line.
        base = prefix.removesuffix(".")
        for i, item in enumerate(node.value):
            out[f"{base}[{i}]"] = item.start_mark.line + 1
            _collect_lines(item, f"{base}[{i}].", out)


def _build_section(cls: type[S], raw: object, prefix: str, problem: Any, *, partial: bool = False) -> S | None:
    """Strictly private: one section's values, each converted to its field's type (sections nest: ``deploy.server``)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problem(prefix, f"expected a mapping, got {type(raw).__name__}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {a.name: a for a in attrs.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    ok = True
    for key, value in raw.items():
        where = f"{prefix}.{key}"
        if key not in fields:
            near = closest(str(key), fields)
            problem(
                where,
                "unknown key",
                f"did you mean {near[0]}?" if near else f"valid keys: {', '.join(fields)}",
            )
            ok = False
            continue
        hint = hints[key]
        nested = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        if value is not None and len(nested) == 1 and attrs.has(nested[0]):
            hint = nested[0]
        if attrs.has(hint):
            converted = _build_section(hint, value, where, problem, partial=partial)
            reason = None if converted is not None else ""
        else:
            converted, reason = convert_value(value, hint, fields[key].metadata)
        if converted is BAD or reason is not None:
            if reason:
                problem(where, reason)
            ok = False
        else:
            kwargs[key] = converted
    required = True
    for name, field in fields.items():
        if field.default is attrs.NOTHING and name not in raw:
            problem(f"{prefix}.{name}", "is required")
            ok = required = False
    if ok or (partial and required and all(n in kwargs for n, f in fields.items() if f.default is attrs.NOTHING)):
        return cls(**kwargs)
    return None
