"""The YAML job file: one run, end to end, as typed values.

``JobFile.load(path)`` reads the file and reports every problem at once (file, line, key, reason, the nearest
valid key); it does no other I/O and checks nothing that needs a service. See ``examples/phi3-ultrachat.yaml``
and docs/jobfile.md for every key.

The job's sections are in :mod:`ftkit.job_sections` and the YAML loader in :mod:`ftkit.job_loading`; their
public names are importable from here as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from .backends.traits import backend_traits
from .display import html_table, set_fields, short
from .evaluation.spec import EvaluateSection
from .exceptions import JobFileError, Problem
from .finetune import FinetunePipelineSpec

# The sections and the loader live in modules of their own; their names are this module's too, as documented.
from .job_loading import load_sections, parse_yaml
from .job_sections import (
    SECTIONS,
    BackendName,
    ComputeSection,
    DataSection,
    DeploySection,
    LocalSection,
    ModelSection,
    RegisterSection,
    ScoreSection,
)
from .overrides import Overrides
from .yamlsafe import read_text

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
        for name in (*SECTIONS, "finetune"):
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
