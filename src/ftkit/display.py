"""Notebook display helpers: small HTML tables and compact one-line summaries of attrs values (no I/O)."""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

import attrs

__all__ = ["html_table", "set_fields", "short"]


def short(value: object, limit: int = 60) -> str:
    """Return ``repr(value)`` cut to ``limit`` characters (an ellipsis marks the cut)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def set_fields(value: Any) -> list[tuple[str, object]]:
    """Return ``(name, value)`` of an attrs value's fields that differ from their defaults, in field order.

    Fields holding a mapping of extras (``extra``) are flattened into the list, as they are in the job file.
    """
    out: list[tuple[str, object]] = []
    for field in attrs.fields(type(value)):
        if not field.init or not field.repr or field.name.startswith("_"):
            continue
        current = getattr(value, field.name)
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        if current == default:
            continue
        if field.name == "extra" and isinstance(current, dict):
            out.extend(sorted(current.items()))
        else:
            out.append((field.name, current))
    return out


def html_table(rows: Iterable[tuple[str, str]], caption: str | None = None) -> str:
    """Return a two-column HTML table (label, value); both are escaped.

    Args:
        rows: ``(label, value)`` pairs.
        caption: The table's caption.

    Returns:
        The HTML.
    """
    body = "".join(
        f"<tr><th style='text-align:left;vertical-align:top'>{html.escape(label)}</th>"
        f"<td style='text-align:left'><code>{html.escape(text)}</code></td></tr>"
        for label, text in rows
    )
    head = f"<caption style='text-align:left'><b>{html.escape(caption)}</b></caption>" if caption else ""
    return f"<table>{head}{body}</table>"
