"""Held-out prompts: conversations whose last assistant turn is the reference answer."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from ..exceptions import Problem, ValidationError

__all__ = ["HeldOutPrompt", "load_prompts"]


@attrs.frozen(kw_only=True)
class HeldOutPrompt:
    """One held-out conversation, split into what the model is asked and what it should answer.

    Attributes:
        line: The conversation's 1-based line in its file.
        messages: The conversation up to (not including) its last assistant turn.
        reference: That last assistant turn.
    """

    line: int
    messages: tuple[Mapping[str, Any], ...]
    reference: str

    @property
    def conversation(self) -> list[dict[str, Any]]:
        """The whole conversation, reference included (what held-out loss is computed on)."""
        return [*map(dict, self.messages), {"role": "assistant", "content": self.reference}]

    @property
    def question(self) -> str:
        """The last user turn (for reports)."""
        users = [str(m.get("content", "")) for m in self.messages if m.get("role") == "user"]
        return users[-1] if users else ""


def _prompt(line_no: int, line: str) -> HeldOutPrompt | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list) or len(messages) < 2:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant" or not isinstance(last.get("content"), str):
        return None
    if not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
        return None
    head = tuple({"role": str(m.get("role")), "content": m["content"]} for m in messages[:-1])
    if not any(m["role"] == "user" for m in head):
        return None
    return HeldOutPrompt(line=line_no, messages=head, reference=last["content"])


def load_prompts(path: str | Path, count: int, *, seed: int = 0, key: str = "evaluate.prompts") -> list[HeldOutPrompt]:
    """Read ``count`` held-out prompts from a JSONL chat file, chosen reproducibly.

    Usable rows end with an assistant turn that follows a user turn; the others are skipped (counted in the
    error when too few remain).

    Args:
        path: The file (``{"messages": [...]}`` per line).
        count: How many to take.
        seed: Seed of the shuffle that picks them.
        key: The setting to name in errors.

    Returns:
        The prompts, in the shuffled order.

    Raises:
        ValidationError: The file cannot be read, or holds fewer usable conversations than ``count``.
    """
    path = Path(path)
    usable: list[HeldOutPrompt] = []
    skipped = 0
    try:
        with path.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                prompt = _prompt(i, line)
                if prompt is None:
                    skipped += 1
                else:
                    usable.append(prompt)
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError([Problem(key, f"cannot read held-out prompts from {path}: {exc}")]) from None
    if len(usable) < count:
        why = f" ({skipped} row(s) do not end with an assistant answer to a user turn)" if skipped else ""
        raise ValidationError(
            [
                Problem(
                    key,
                    f"{count} prompts requested but {path} holds {len(usable)} usable conversation(s){why}",
                    f"set {key} to at most {len(usable)}" if usable else "use a split with held-out conversations",
                )
            ],
            "not enough held-out prompts",
        )
    random.Random(seed).shuffle(usable)
    return usable[:count]
