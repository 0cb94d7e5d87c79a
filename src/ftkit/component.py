"""The declared inputs of a registry pipeline component, and parameter checks against them.

ftkit validates finetune parameters against what the component *declares* (type, enum, bounds, optional),
never against a hand-copied list. Three sources give a :class:`ComponentSchema`:

* :meth:`ComponentSchema.bundled`: the snapshot shipped in ``ftkit/components/`` for offline checks
  (generated from the real spec by ``scripts/snapshot_component.py``);
* :meth:`ComponentSchema.from_spec_file`: a component ``spec.yaml`` on disk (``--component-spec``);
* :meth:`ComponentSchema.from_input_dicts`: the live registry component, as the azureml backend reads it at
  submit time, which is the final authority.

The component encodes booleans as the strings ``"true"``/``"false"`` and small enums such as
``deepspeed_stage`` as ``"2"``/``"3"``; :func:`encode_parameters` accepts Python values (``True``, ``2``) and
returns the component's encoding.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import attrs
import yaml

from .convert import BAD, INT_LIMIT, convert_value
from .exceptions import ParameterError, Problem, closest

__all__ = [
    "DEFAULT_COMPONENT",
    "DEFAULT_COMPONENT_VERSION",
    "ComponentInput",
    "ComponentSchema",
    "encode_parameters",
]

DEFAULT_COMPONENT = "chat_completion_pipeline"
DEFAULT_COMPONENT_VERSION = "0.0.82"

# Input ports (not literals): passed as azure-ai-ml ``Input(type=..., path=...)``.
PORT_TYPES = frozenset({"uri_file", "uri_folder", "mltable", "mlflow_model", "custom_model", "triton_model"})


@attrs.frozen
class ComponentInput:
    """One declared input of a component.

    Attributes:
        name: The input's name.
        type: ``string``, ``integer``, ``number``, ``boolean`` or a port type such as ``uri_file``.
        optional: Whether the input may be left unset.
        default: The component's default (already in the component's encoding), if any.
        enum: The allowed values, if the input is an enum.
        min: The smallest allowed value, if bounded.
        max: The largest allowed value, if bounded.
    """

    name: str
    type: str
    optional: bool = True
    default: Any = None
    enum: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None

    @property
    def is_port(self) -> bool:
        """Whether this input is a data/model port rather than a literal parameter."""
        return self.type in PORT_TYPES

    @property
    def is_boolean_enum(self) -> bool:
        """Whether this is a string input with enum ``true``/``false`` (the component's booleans)."""
        return self.enum is not None and set(self.enum) == {"true", "false"}


@attrs.frozen
class ComponentSchema:
    """The name, version, inputs and outputs a component declares.

    Attributes:
        name: The component's name, e.g. ``chat_completion_pipeline``.
        version: Its version, e.g. ``0.0.82``.
        inputs: The declared inputs by name.
        outputs: The declared outputs, name to type.
        source: Where this schema came from (a file path, ``bundled`` or a registry asset id).
    """

    name: str
    version: str
    inputs: Mapping[str, ComponentInput]
    outputs: Mapping[str, str] = attrs.field(factory=dict)
    source: str = "bundled"

    @classmethod
    def from_input_dicts(
        cls,
        name: str,
        version: str,
        inputs: Mapping[str, Mapping[str, Any]],
        outputs: Mapping[str, str] | None = None,
        source: str = "registry",
    ) -> ComponentSchema:
        """Build a schema from the inputs as azure-ai-ml or a spec file serialise them.

        Args:
            name: The component's name.
            version: Its version.
            inputs: Input name to a mapping with ``type`` and optionally ``optional``, ``default``, ``enum``,
                ``min``, ``max``.
            outputs: Output name to type.
            source: Where the schema came from, for messages.

        Returns:
            The schema.

        Raises:
            ParameterError: A default, minimum or maximum that is not a number where one is declared.
        """
        parsed = {}
        problems: list[Problem] = []
        for key, raw in inputs.items():
            kind = str(raw.get("type", "string"))
            default = raw.get("default")
            # PyYAML (YAML 1.1) reads an unquoted 1e-8 as a string; the declared type decides.
            if kind == "number" and isinstance(default, str):
                default, reason = convert_value(default, float)
                if reason is not None:
                    problems.append(Problem(f"inputs.{key}.default", reason, source=source))
            bounds: dict[str, float | None] = {}
            for bound in ("min", "max"):
                value, reason = (None, None) if raw.get(bound) is None else convert_value(raw[bound], float)
                if reason is not None:
                    problems.append(Problem(f"inputs.{key}.{bound}", reason, source=source))
                bounds[bound] = None if value is BAD else value
            enum = raw.get("enum")
            parsed[key] = ComponentInput(
                name=key,
                type=kind,
                optional=bool(raw.get("optional", False)),
                default=None if default is BAD else default,
                enum=tuple(str(e) for e in enum) if enum is not None else None,
                min=bounds["min"],
                max=bounds["max"],
            )
        if problems:
            raise ParameterError(problems, f"malformed inputs in component {name} {version}")
        return cls(name=name, version=str(version), inputs=parsed, outputs=dict(outputs or {}), source=source)

    @classmethod
    def from_spec_file(cls, path: str | Path) -> ComponentSchema:
        """Read a component ``spec.yaml`` (as in Azure/azureml-assets).

        Args:
            path: The spec file.

        Returns:
            The schema.

        Raises:
            ParameterError: The file is missing or is not a component spec.
        """
        path = Path(path)
        try:
            body = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ParameterError([Problem("", f"cannot read component spec: {exc}", source=str(path))]) from exc
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), dict) or "name" not in body:
            raise ParameterError(
                [Problem("", "not a component spec (needs name, version and a mapping of inputs)", source=str(path))]
            )
        try:
            outputs = {k: str(v.get("type", "")) for k, v in (body.get("outputs") or {}).items()}
            return cls.from_input_dicts(
                body["name"], str(body.get("version", "")), body["inputs"], outputs, source=str(path)
            )
        except (AttributeError, TypeError, ValueError) as exc:
            # An input or output that is not a mapping, or a min/max/default that is not a number.
            raise ParameterError(
                [Problem("", f"malformed component spec: {exc}", source=str(path))], "cannot read the component spec"
            ) from None

    @classmethod
    def bundled(cls, name: str = DEFAULT_COMPONENT, version: str = DEFAULT_COMPONENT_VERSION) -> ComponentSchema:
        """Load the snapshot shipped with ftkit.

        Args:
            name: The component's name.
            version: The pinned version.

        Returns:
            The schema.

        Raises:
            ParameterError: ftkit ships no snapshot of that version; names the ones it has.
        """
        files = resources.files("ftkit") / "components"
        target = files / f"{name}-{version}.json"
        if not target.is_file():
            have = sorted(p.name.removesuffix(".json") for p in files.iterdir() if p.name.endswith(".json"))
            raise ParameterError(
                [
                    Problem(
                        "finetune.component_version",
                        f"ftkit has no bundled schema for {name} {version}",
                        f"bundled: {', '.join(have)}; pass --component-spec SPEC.yaml for another version",
                    )
                ]
            )
        body = json.loads(target.read_text(encoding="utf-8"))
        return cls.from_input_dicts(body["name"], body["version"], body["inputs"], body["outputs"], "bundled")

    def decode(self, name: str, value: object) -> tuple[object, str | None]:
        """Decode one parameter from the component's encoding (or a YAML spelling) to a Python value.

        ``"true"`` becomes ``True`` for the component's boolean enums, ``"2"`` becomes ``2`` for integers,
        ``"2e-5"`` becomes ``2e-05`` for numbers; bounds are checked. Other enums and strings stay strings.

        Args:
            name: A declared input.
            value: Its value.

        Returns:
            The decoded value and ``None``, or the value as given and why it cannot be decoded.
        """
        declared = self.inputs[name]
        if declared.is_boolean_enum or declared.type == "boolean":
            hint: Any = bool
        elif declared.type == "integer" and declared.enum is None:
            hint = int
        elif declared.type == "number" and declared.enum is None:
            hint = float
        else:
            return value, None
        meta = {k: v for k, v in (("minimum", declared.min), ("maximum", declared.max)) if v is not None}
        decoded, reason = convert_value(value, hint, meta)
        return (value, reason) if decoded is BAD else (decoded, None)

    @property
    def registry_asset_id(self) -> str:
        """The asset id of this exact version in the ``azureml`` registry."""
        return f"azureml://registries/azureml/components/{self.name}/versions/{self.version}"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _encode_one(spec: ComponentInput, value: object, where: str) -> tuple[object, Problem | None]:
    """Strictly private: check one value against its declared input; return its component encoding."""
    kind = spec.type
    if spec.is_port:
        if isinstance(value, str) and value:
            return value, None
        return None, Problem(where, f"expected a path or URI for this {kind} input, got {value!r}")
    if spec.enum is not None:
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            text = str(int(value))
        elif isinstance(value, str):
            text = value.lower() if spec.is_boolean_enum else value
        else:
            text = repr(value)
        if text not in spec.enum:
            near = closest(text, spec.enum)
            hint = f"did you mean {near[0]}? " if near else ""
            return None, Problem(where, f"{value!r} is not allowed", f"{hint}choose one of: {', '.join(spec.enum)}")
        return text, None
    if kind == "integer":
        number: object = value
        if isinstance(value, str):
            try:
                number = int(value)
            except ValueError:
                number = value
        if isinstance(number, float) and number.is_integer():
            number = int(number)
        if not isinstance(number, int) or isinstance(number, bool):
            return None, Problem(where, f"expected an integer, got {type(value).__name__} {value!r}")
        return _check_bounds(spec, number, where)
    if kind == "number":
        number = value
        if isinstance(value, str):  # YAML 1.1 reads 5e-6 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                number = value
        if not _is_number(number) or not math.isfinite(float(number)):  # type: ignore[arg-type]
            return None, Problem(where, f"expected a number, got {type(value).__name__} {value!r}")
        return _check_bounds(spec, number, where)
    if kind == "boolean":
        if isinstance(value, bool):
            return value, None
        return None, Problem(where, f"expected true or false, got {value!r}")
    # a free string
    if isinstance(value, str):
        return value, None
    return None, Problem(where, f"expected a string, got {type(value).__name__} {value!r}")


def _check_bounds(spec: ComponentInput, value: Any, where: str) -> tuple[object, Problem | None]:
    if spec.min is not None and value < spec.min:
        return None, Problem(where, f"{value} is below the minimum {spec.min:g}")
    if spec.max is not None and value > spec.max:
        return None, Problem(where, f"{value} is above the maximum {spec.max:g}")
    if isinstance(value, int) and not -INT_LIMIT - 1 <= value <= INT_LIMIT:
        # The component declares no upper bounds; a 2**70 would pass here and fail inside the job.
        return None, Problem(where, f"{value} is out of range: integers go up to {INT_LIMIT}")
    return value, None


def encode_parameters(
    parameters: Mapping[str, object],
    schema: ComponentSchema,
    *,
    prefix: str = "finetune",
    reserved: Mapping[str, str] | None = None,
    source: str | None = None,
    lines: Mapping[str, int] | None = None,
) -> dict[str, object]:
    """Check parameters against the component's declared inputs and return them in its encoding.

    Every problem is collected before raising: unknown names (with the closest declared names), wrong types,
    values outside an enum, out-of-range numbers, and names ftkit sets itself (``reserved``).

    Args:
        parameters: Parameter name to value, in Python or component encoding.
        schema: The component's declared inputs.
        prefix: The key path prefix used in problem locations.
        reserved: Input names the caller sets itself, mapped to where the user should set them instead.
        source: The file the parameters came from, for messages.
        lines: Line numbers of the parameters in ``source``, by name.

    Returns:
        Parameter name to value in the component's encoding (``True`` -> ``"true"``, ``2`` -> ``"2"`` for
        string enums).

    Raises:
        ParameterError: With one problem per bad parameter.
    """
    problems: list[Problem] = []
    out: dict[str, object] = {}
    reserved = reserved or {}
    lines = lines or {}
    for key, value in parameters.items():
        where = f"{prefix}.{key}" if prefix else key
        line = lines.get(key)
        if key in reserved:
            problems.append(Problem(where, "is set by ftkit", f"set it with {reserved[key]} instead", source, line))
            continue
        declared = schema.inputs.get(key)
        if declared is None:
            near = closest(key, schema.inputs)
            hint = f"did you mean {' or '.join(near)}?" if near else "see `ftkit validate --list-parameters`"
            problems.append(Problem(where, f"unknown parameter for {schema.name} {schema.version}", hint, source, line))
            continue
        if value is None:
            continue
        encoded, problem = _encode_one(declared, value, where)
        if problem is not None:
            problems.append(attrs.evolve(problem, source=source, line=line))
        else:
            out[key] = encoded
    for name, declared in schema.inputs.items():
        if not declared.optional and declared.default is None and name not in out and name not in reserved:
            problems.append(Problem(f"{prefix}.{name}", "is required by the component", source=source))
    if problems:
        raise ParameterError(problems, f"{len(problems)} invalid finetune parameter(s)")
    return out
