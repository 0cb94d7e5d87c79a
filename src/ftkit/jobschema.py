"""A JSON Schema of the YAML job file, generated from its attrs classes (and the bundled component's inputs).

Editors that speak the YAML language server complete and check a job file that starts with::

    # yaml-language-server: $schema=../docs/jobfile.schema.json

The schema is written to ``docs/jobfile.schema.json`` (published with the documentation; a test keeps it equal
to what this module generates) and printed by ``ftkit schema``. It accepts every file the loader accepts;
what only the loader can check (a parameter against another component version, files on disk) stays with
``ftkit validate``.

Regenerate after changing a job-file class: ``python -m ftkit.jobschema > docs/jobfile.schema.json``.
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from .component import ComponentInput, ComponentSchema
from .finetune import RESERVED_INPUTS, FinetunePipelineSpec
from .jobfile import JobFile

__all__ = ["attribute_docs", "job_file_schema", "main"]

# Fields of JobFile that are not keys of the file.
_NOT_IN_FILE = frozenset({"source", "lines", "overrides"})
# A number written as a string: YAML 1.1 (PyYAML) reads 5e-6, without a dot, as a string, and the loader takes it.
_NUMERIC = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
_BOOL_TEXT = r"^\s*([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])\s*$"


def job_file_schema(component: ComponentSchema | None = None) -> dict[str, Any]:
    """Return the JSON Schema (draft 2020-12) of the job file.

    Args:
        component: The component whose inputs the ``finetune`` section lists (default: the bundled snapshot).

    Returns:
        The schema, ready for ``json.dumps``.
    """
    component = component if component is not None else ComponentSchema.bundled()
    top = _object_schema(JobFile, skip=_NOT_IN_FILE)
    top["properties"]["finetune"] = _finetune_schema(component)
    top["properties"]["evaluate"] = _evaluate_schema(top["properties"]["evaluate"])
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "ftkit job file",
        **top,
    }


def _object_schema(cls: type, *, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    docs = attribute_docs(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in attrs.fields(cls):
        if field.name in skip or not field.init:
            continue
        hint = hints[field.name]
        section = _unoptional(hint)
        prop = _object_schema(section) if attrs.has(section) else _value_schema(hint, field.metadata)
        prop = {"description": docs[field.name], **prop} if field.name in docs else prop
        if field.default is attrs.NOTHING:
            required.append(field.name)
        elif not isinstance(field.default, attrs.Factory) and _jsonable(field.default):  # type: ignore[arg-type]
            prop["default"] = field.default
        properties[field.name] = prop
    summary = _plain_text((cls.__doc__ or "").strip().splitlines()[0]) if cls.__doc__ else ""
    out: dict[str, Any] = {"type": "object", "description": summary, "properties": properties}
    if required:
        out["required"] = required
    out["additionalProperties"] = False  # the loader rejects unknown keys (with the nearest valid one)
    if cls is not JobFile:
        out = {"type": ["object", "null"], **{k: v for k, v in out.items() if k != "type"}}
    return out


def _evaluate_schema(section: dict[str, Any]) -> dict[str, Any]:
    """The ``evaluate`` section: its scalar keys as generated, its lists (metrics, checks, gates) spelled out."""
    from .evaluation.spec import BUILTIN_METRICS, Check, Requirement

    props = section["properties"]
    props["metrics"] = {
        **props["metrics"],
        "anyOf": [
            {"type": "array", "items": {"enum": list(BUILTIN_METRICS)}},
            {"type": "string"},  # comma-separated
        ],
    }
    for key, cls in (("checks", Check), ("require", Requirement)):
        item = _object_schema(cls)
        item["type"] = "object"
        props[key] = {**props[key], "anyOf": [{"type": "array", "items": item}, item]}
    return {**section, "type": ["object", "null", "boolean"]}


def _finetune_schema(component: ComponentSchema) -> dict[str, Any]:
    hints = typing.get_type_hints(FinetunePipelineSpec)
    docs = attribute_docs(FinetunePipelineSpec)
    properties: dict[str, Any] = {}
    for field in attrs.fields(FinetunePipelineSpec):
        if field.name == "extra":
            continue
        declared = component.inputs.get(field.name)
        hint, metadata = hints[field.name], field.metadata
        prop = _input_schema(declared) if declared is not None else _value_schema(hint, metadata)
        if declared is not None and declared.type in ("integer", "number") and declared.enum is None:
            # ftkit's own sensible range where the component declares none (it declares no maximum at all).
            prop["anyOf"][0] = {**_limits(metadata), **prop["anyOf"][0]}
        if field.name in docs:
            prop = {"description": docs[field.name], **prop}
        if _jsonable(field.default) and field.default is not None:
            prop["default"] = field.default
        properties[field.name] = prop
    for name, declared in sorted(component.inputs.items()):
        if name in properties or name in RESERVED_INPUTS or declared.is_port:
            continue
        default = f" (component default: {declared.default})" if declared.default is not None else ""
        properties[name] = {"description": f"{component.name} input `{name}`{default}", **_input_schema(declared)}
    return {
        "type": ["object", "null"],
        "description": f"Fine-tuning parameters: any input of {component.name} (listed: {component.version}).",
        "properties": properties,
        # Another component version may declare inputs this snapshot does not know: `ftkit validate` checks them.
        "additionalProperties": True,
    }


def _input_schema(declared: ComponentInput) -> dict[str, Any]:
    """Schema of one component input, in every form the loader encodes (true or "true", 2 or "2")."""
    if declared.is_boolean_enum:
        return {"type": ["boolean", "string", "null"], "enum": [True, False, "true", "false", None]}
    if declared.enum is not None:
        values: list[Any] = list(declared.enum)
        values += [_number(v) for v in declared.enum if _number(v) is not None]
        return {"enum": [*values, None]}
    if declared.type in ("integer", "number"):
        number: dict[str, Any] = {"type": "integer" if declared.type == "integer" else "number"}
        if declared.min is not None:
            number["minimum"] = declared.min
        if declared.max is not None:
            number["maximum"] = declared.max
        return {"anyOf": [number, {"type": "string", "pattern": _NUMERIC}, {"type": "null"}]}
    if declared.type == "boolean":
        return {"type": ["boolean", "null"]}
    return {"type": ["string", "number", "null"]}


def _value_schema(hint: Any, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Schema of a simple annotation, accepting what :func:`ftkit.convert.convert_value` accepts."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    limits = _limits(metadata)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        schema = _value_schema(inner[0], metadata)
        if type(None) in args:
            schema = _nullable(schema)
        return schema
    if origin is Literal:
        # The loader also takes a choice's text (2 for "2", "2" for 2).
        values: list[Any] = list(args)
        values += [str(a) for a in args if not isinstance(a, str) and str(a) not in values]
        values += [n for a in args if isinstance(a, str) and (n := _number(a)) is not None and n not in values]
        return {"enum": values}
    if hint is bool:
        return {"anyOf": [{"type": "boolean"}, {"type": "string", "pattern": _BOOL_TEXT}]}
    if hint is int:
        return {"anyOf": [{"type": "integer", **limits}, {"type": "string", "pattern": _NUMERIC}]}
    if hint is float:
        return {"anyOf": [{"type": "number", **limits}, {"type": "string", "pattern": _NUMERIC}]}
    if hint is str:
        # Versions such as 0.0.82 or 7 may be written as numbers.
        return {"anyOf": [{"type": "string", "minLength": 1}, {"type": "number"}]}
    return {}


def _limits(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """JSON Schema bounds from a field's :func:`ftkit.convert.bounds` metadata."""
    names = {"minimum": "minimum", "maximum": "maximum", "exclusive_minimum": "exclusiveMinimum"}
    return {names[k]: v for k, v in (metadata or {}).items() if k in names}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "anyOf" in schema:
        return {**schema, "anyOf": [*schema["anyOf"], {"type": "null"}]}
    if "enum" in schema:
        return {**schema, "enum": [*schema["enum"], None]}
    if isinstance(schema.get("type"), str):
        return {**schema, "type": [schema["type"], "null"]}
    return schema


def _unoptional(hint: Any) -> Any:
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return inner[0] if len(inner) == 1 else hint
    return hint


def _number(text: str) -> int | float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else value


def _jsonable(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def attribute_docs(cls: type) -> dict[str, str]:
    """Return the ``Attributes:`` of a Google-style class docstring and its bases', by name (one line each)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is not object:
            out.update(_own_attribute_docs(klass))
    return out


def _own_attribute_docs(cls: type) -> dict[str, str]:
    doc = cls.__dict__.get("__doc__") or ""
    lines = doc.expandtabs().splitlines()
    out: dict[str, str] = {}
    inside = False
    current: str | None = None
    indent = 0
    for line in lines:
        stripped = line.strip()
        if stripped == "Attributes:":
            inside, indent = True, len(line) - len(line.lstrip())
            continue
        if not inside:
            continue
        if not stripped:
            current = None
            continue
        depth = len(line) - len(line.lstrip())
        if depth <= indent:
            break
        match = re.match(r"(\w+)(?: \([^)]*\))?: (.*)", stripped)
        if match and (current is None or depth <= indent + 4):
            current = match.group(1)
            out[current] = match.group(2)
        elif current is not None:
            out[current] += f" {stripped}"
    return {k: _plain_text(v) for k, v in out.items()}


def _plain_text(text: str) -> str:
    """Sphinx roles and double backticks read badly in an editor's hover: keep the words."""
    text = re.sub(r":\w+:`~?([^`<]*?)(?: <[^>]*>)?`", lambda m: m.group(1).split(".")[-1], text)
    return text.replace("``", "`")


def main(argv: list[str] | None = None) -> int:
    """Print the schema (``python -m ftkit.jobschema > docs/jobfile.schema.json``)."""
    del argv
    print(json.dumps(job_file_schema(), indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
