"""From YAML to the job file's sections: every key converted to its field's type, every problem found at once.

:func:`parse_yaml` reads the text once (within :mod:`ftkit.yamlsafe`'s limits) and keeps each key's line;
:func:`load_sections` converts the top-level mapping section by section, reporting each bad key or value with
its line and the nearest valid key, and keeps the sections that loaded (``ftkit validate`` checks the rest of the
file with them). :meth:`JobFile.from_mapping <ftkit.jobfile.JobFile.from_mapping>` builds the job from them.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs
import yaml

from .convert import BAD, NAME, convert_value, describe_type
from .evaluation.spec import load_evaluate_section
from .exceptions import Problem, closest
from .finetune import FinetunePipelineSpec
from .job_sections import SECTIONS, TOP_LEVEL_KEYS, BackendName, ComputeSection, DataSection
from .yamlsafe import load_yaml

__all__ = ["load_sections", "parse_yaml"]

S = TypeVar("S")


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
        if key not in TOP_LEVEL_KEYS:
            near = closest(str(key), TOP_LEVEL_KEYS)
            problem(
                str(key),
                "unknown top-level key",
                f"did you mean {near[0]}?" if near else f"valid keys: {', '.join(TOP_LEVEL_KEYS)}",
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
    for key, section_cls in SECTIONS.items():
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
