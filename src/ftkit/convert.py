"""Converting one YAML value to a field's declared type, with the field's bounds: the job file's single rule.

YAML 1.1 (PyYAML) reads ``5e-6`` as a string (only ``5.0e-6`` is a float), and the Azure component encodes
booleans as ``"true"``/``"false"`` and small enums as ``"2"``; every section of the job file, the ``finetune``
parameters and the model's ``model_specific_defaults`` tag go through :func:`convert_value`, so a value is
typed once, when it is loaded, and a value that cannot be converted is reported with the type expected.

Bounds come from the field's attrs metadata (:func:`bounds`), so they stay introspectable (a JSON Schema can
be generated from the same classes).
"""

from __future__ import annotations

import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from .exceptions import closest

__all__ = ["BAD", "INT_LIMIT", "NAME", "SEED_MAX", "bounds", "convert_value", "describe_type", "name_problem"]

# A marker for "reported, no value": distinct from None, which is a valid value of optional fields.
BAD: Any = object()

INT_LIMIT = 2**31 - 1
"""The range of an integer whose field declares no bound of its own (no setting of ftkit's needs more; a
value such as 2**70 would otherwise validate and fail deep inside torch or a service)."""

SEED_MAX = 2**32 - 1
"""The largest seed: numpy's generators take at most 32 bits (torch would take 64)."""

NAME: dict[str, Any] = {"name": True}
"""Field metadata of a string that becomes a file or folder name (an endpoint, a registered model, a run)."""

# YAML 1.1 leaves these as strings; YAML 1.2 and people read them as numbers.
_INT_TEXT = re.compile(r"[-+]?\d+")
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def bounds(
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    exclusive_minimum: float | None = None,
) -> dict[str, float]:
    """Return attrs field metadata that bounds a number (read by :func:`convert_value`).

    Args:
        minimum: The smallest allowed value.
        maximum: The largest allowed value.
        exclusive_minimum: Values must be above this.

    Returns:
        Metadata with the keys ``minimum``, ``maximum`` and ``exclusive_minimum`` (JSON Schema's names).
    """
    out: dict[str, float] = {}
    if minimum is not None:
        out["minimum"] = minimum
    if maximum is not None:
        out["maximum"] = maximum
    if exclusive_minimum is not None:
        out["exclusive_minimum"] = exclusive_minimum
    return out


def describe_type(hint: Any) -> str:
    """Return a field's type as a user reads it (``a number``, ``true or false``, ``one of: a, b``)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        return describe_type(inner[0]) if len(inner) == 1 else " or ".join(describe_type(a) for a in inner)
    if origin is Literal:
        return f"one of: {', '.join(map(str, args))}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a non-empty string"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def convert_value(value: object, hint: Any, metadata: Mapping[str, Any] | None = None) -> tuple[Any, str | None]:
    """Convert ``value`` to the annotation ``hint`` and check it against the field's bounds.

    Accepts what a job file's author writes: ``5e-6`` and ``2E-5`` (strings in YAML 1.1) for numbers,
    ``"true"``/``"false"`` for booleans, ``"2"`` or ``2.0`` for integers, numbers for strings (versions such as
    ``0.0.82`` are fine unquoted).

    Args:
        value: The value as YAML parsed it.
        hint: The field's annotation (``int``, ``float | None``, ``Literal[...]``...).
        metadata: The field's metadata, with the bounds of :func:`bounds`.

    Returns:
        The converted value and ``None``, or :data:`BAD` and the reason (with the closest choice for enums).
    """
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None, None
        inner = [a for a in args if a is not type(None)]
        return convert_value(value, inner[0], metadata)
    if origin is Literal:
        for choice in args:
            if value == choice or (isinstance(value, str | int | float) and str(value) == str(choice)):
                return choice, None
        near = closest(str(value), [str(a) for a in args])
        hint_text = f"did you mean {near[0]}? " if near else ""
        return BAD, f"{value!r} is not allowed; {hint_text}choose one of: {', '.join(map(str, args))}"
    if hint is bool:
        if isinstance(value, bool):
            return value, None
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true", None
        return BAD, f"expected true or false, got {_shown(value)}"
    if hint is int:
        number = _as_int(value)
        if number is None:
            return BAD, f"expected an integer, got {_shown(value)}"
        return _check_bounds(number, metadata)
    if hint is float:
        real = _as_float(value)
        if real is None:
            return BAD, f"expected a number, got {_shown(value)}"
        return _check_bounds(real, metadata)
    if hint is str:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value:
            return BAD, f"expected a non-empty string, got {value!r}"
        if (metadata or {}).get("name"):
            bad_name = name_problem(value)
            if bad_name is not None:
                return BAD, bad_name
        pattern = (metadata or {}).get("pattern")
        if pattern is not None and not re.fullmatch(pattern, value.strip().lower()):
            return BAD, f"{value!r} is not allowed; use {(metadata or {}).get('choices', pattern)}"
        return value, None
    return value, None


def name_problem(value: str) -> str | None:
    """Why ``value`` cannot be a name that ftkit turns into a file or folder name (``None``: it can).

    Args:
        value: The name.

    Returns:
        The reason, or ``None``.
    """
    if value.strip() in (".", ".."):
        return f"{value!r} is not a name"
    bad = sorted({c for c in value if c in "/\\" or ord(c) < 32 or ord(c) == 127})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        return f"{value[:60]!r} cannot be a name: it contains {shown} (use letters, digits, '-', '_' and '.')"
    if len(value) > 200:
        return f"a name of {len(value)} characters is too long (at most 200)"
    return None


def _shown(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
        if len(value.strip().lstrip("+-").lstrip("0")) > 30:  # int() of 4,300+ digits would raise
            return None  # reported as not an integer ftkit can use (it is far out of any range anyway)
        return int(value.strip())
    real = _as_float(value)  # 5e3 and 1.0e+4 are whole numbers too
    return int(real) if real is not None and real.is_integer() else None


def _as_float(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            real = float(value)
        except OverflowError:  # an integer beyond 1e308
            return None
    elif isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        real = float(value.strip())  # inf beyond 1e308, refused below
    else:
        return None
    return real if math.isfinite(real) else None


def _num(value: float) -> str:
    """Strictly private: a bound or value as a person writes it (4294967295, not 4.29497e+09; 1e-08 stays short)."""
    if isinstance(value, int) or (value.is_integer() and abs(value) < 1e15):
        return str(int(value))
    return f"{value:g}"


def _check_bounds(number: float, metadata: Mapping[str, Any] | None) -> tuple[Any, str | None]:
    meta = metadata or {}
    low = meta.get("minimum")
    high = meta.get("maximum")
    if isinstance(number, int):  # integers are bounded even where the field declares no bound
        low = -INT_LIMIT - 1 if low is None and meta.get("exclusive_minimum") is None else low
        high = INT_LIMIT if high is None else high
    above = meta.get("exclusive_minimum")
    if above is not None and number <= above:
        return BAD, f"{_num(number)} is out of range: must be above {_num(above)}" + (
            f" and at most {_num(high)}" if high is not None else ""
        )
    if low is not None and number < low:
        return BAD, f"{_num(number)} is below the minimum {_num(low)}"
    if high is not None and number > high:
        return BAD, f"{_num(number)} is above the maximum {_num(high)}"
    return number, None
