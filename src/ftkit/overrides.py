"""Overrides of job-file keys: ``ftkit run JOB.yaml --set finetune.learning_rate=1e-4`` and ``overrides={...}``.

An override replaces one key of the job file's *raw* mapping before the typed loader reads it, so an
overridden value is typed and checked exactly like a value in the file, and a bad one is reported under the
name it was given (``--set finetune.learning_rate: expected a number``) instead of a line of the file.

Keys are dotted paths (``data.percent``, ``deploy.keep``, ``backend``). On the command line the value is
read as YAML, as it would be in the file (``true``, ``5``, ``2.0e-4``, ``null``, ``{percent: 5}``). A
mapping given as a value is merged into the mapping already there rather than replacing the whole section.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import yaml

from .exceptions import JobFileError, Problem

__all__ = ["Overrides", "parse_assignment"]

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*")


def parse_assignment(text: str) -> tuple[str, object]:
    """Split ``KEY=VALUE`` and read ``VALUE`` as a YAML scalar or flow mapping, as the job file would.

    Args:
        text: The assignment, e.g. ``finetune.learning_rate=1e-4``.

    Returns:
        The dotted key and the value (``None`` for an empty value or ``null``).

    Raises:
        ValueError: No ``=``, a key that is not a dotted name, or a value that is not YAML.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep:
        raise ValueError(f"expected KEY=VALUE, got {text!r} (e.g. finetune.learning_rate=1e-4)")
    if not _KEY.fullmatch(key):
        raise ValueError(f"{key!r} is not a dotted key such as finetune.learning_rate")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        reason = getattr(exc, "problem", None) or str(exc)
        raise ValueError(f"the value of {key} is not valid YAML: {reason}") from None
    return key, value


@attrs.frozen
class Overrides:
    """Job-file keys replaced from outside the file, and how the user gave them (for messages).

    Attributes:
        values: Dotted key to value, in the order given (``{"finetune.learning_rate": 1e-4}``).
        origin: How they were given, the prefix of their messages: ``--set`` or ``overrides``.
    """

    values: Mapping[str, object] = attrs.field(factory=dict)
    origin: str = "overrides"

    def __bool__(self) -> bool:
        return bool(self.values)

    def merged(self, other: Overrides) -> Overrides:
        """Return these overrides followed by ``other``'s (later ones win); ``other``'s origin names them."""
        return Overrides({**self.values, **other.values}, other.origin if other else self.origin)

    def apply(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """Return a copy of the raw job mapping with every override applied.

        Args:
            data: The job file's top-level mapping, as parsed.

        Returns:
            The new mapping (``data`` is not changed).

        Raises:
            JobFileError: A key goes through a value that is not a mapping (``--set name.x=1``).
        """
        out: dict[str, Any] = copy.deepcopy(dict(data))
        problems: list[Problem] = []
        for key, value in self.values.items():
            if not isinstance(key, str) or not _KEY.fullmatch(key):
                problems.append(Problem(f"{self.origin} {key}", "is not a dotted key such as finetune.learning_rate"))
                continue
            parts = key.split(".")
            node: dict[str, Any] = out
            for depth, part in enumerate(parts[:-1]):
                child = node.get(part)
                if child is None:
                    child = node[part] = {}
                if not isinstance(child, dict):
                    where = ".".join(parts[: depth + 1])
                    problems.append(
                        Problem(
                            f"{self.origin} {key}",
                            f"{where} is {type(child).__name__} {child!r}, not a mapping of keys",
                        )
                    )
                    break
                node = child
            else:
                last = parts[-1]
                if isinstance(value, Mapping) and isinstance(node.get(last), dict):
                    node[last] = _deep_merge(node[last], value)
                else:
                    node[last] = copy.deepcopy(value)
        if problems:
            raise JobFileError(problems, f"{len(problems)} problem(s) in the overrides")
        return out

    def covers(self, where: str) -> str | None:
        """Return the override that set the key ``where`` (itself or a section above it), if any."""
        for key, value in self.values.items():
            # A merged mapping value sets only the keys it names: `--set data={percent: 5}` sets data.percent.
            for leaf in _leaves(key, value):
                if where == leaf or where.startswith(f"{leaf}."):
                    return key
        return None

    def drop_lines(self, lines: Mapping[str, int]) -> dict[str, int]:
        """Return ``lines`` without the keys the overrides replaced: those lines no longer hold the value."""
        return {k: v for k, v in lines.items() if self.covers(k) is None}

    def relocate(self, problems: Iterable[Problem]) -> list[Problem]:
        """Name overridden keys by their origin (``--set finetune.learning_rate``) instead of a file and line.

        Args:
            problems: Problems found in the job with the overrides applied.

        Returns:
            The same problems; those about an overridden key point at the override.
        """
        out: list[Problem] = []
        for p in problems:
            if p.where and not p.where.startswith(f"{self.origin} ") and self.covers(p.where) is not None:
                p = attrs.evolve(p, where=f"{self.origin} {p.where}", source=None, line=None)
            out.append(p)
        return out

    def as_record(self) -> dict[str, object]:
        """Return the overrides for ``run.json``: dotted key to value."""
        return dict(self.values)


def _deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _leaves(key: str, value: object) -> list[str]:
    if isinstance(value, Mapping) and value:
        return [leaf for k, v in value.items() for leaf in _leaves(f"{key}.{k}", v)]
    return [key]
