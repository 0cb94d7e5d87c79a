"""One conversation to training tokens: assistant-only labels, and packing without cross-example attention.

:func:`encode_conversation` renders one conversation with the tokenizer's chat template and labels only the
assistant spans (everything else is ``-100``), as the component's ``CustomCollatorForCompletionOnlyLM`` does.
Templates with ``{% generation %}`` blocks give the spans directly
(``apply_chat_template(..., return_assistant_tokens_mask=True)``); for others (Phi-3's own template has none)
the spans are found by rendering growing prefixes of the conversation and mapping characters to tokens.

:func:`pack` concatenates a batch's examples into one row with ``position_ids`` restarting at 0 for each
example. Given ``position_ids`` and no attention mask, transformers builds a block-diagonal causal mask for
SDPA/eager and uses variable-length kernels for flash-attention, so no token attends across examples and no
compute goes to padding. :func:`read_rows` and :func:`line_chunks` read a JSONL data file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ....exceptions import Problem, ValidationError

__all__ = [
    "IGNORE_INDEX",
    "EncodeReport",
    "Example",
    "PackedBatch",
    "encode_conversation",
    "line_chunks",
    "pack",
    "parse_line",
    "read_rows",
]

IGNORE_INDEX = -100


@attrs.frozen
class Example:
    """One tokenised conversation.

    Attributes:
        input_ids: Its tokens.
        labels: The same tokens on assistant spans, ``-100`` elsewhere.
    """

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @property
    def num_labels(self) -> int:
        """Tokens that carry loss."""
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


@attrs.frozen
class EncodeReport:
    """What :func:`encode_file` kept and dropped.

    Attributes:
        rows: Rows read.
        kept: Examples produced.
        unreadable: Lines that were not a JSON object with a ``messages`` list of 2+ messages.
        no_assistant_tokens: Rows with no assistant token left (none, or all truncated away).
        truncated: Kept rows cut at ``max_seq_length``.
    """

    rows: int = 0
    kept: int = 0
    unreadable: int = 0
    no_assistant_tokens: int = 0
    truncated: int = 0


@attrs.frozen
class PackedBatch:
    """A batch of examples packed into rows (plain Python lists; the training loop makes tensors).

    Attributes:
        input_ids: One tuple of tokens per row.
        labels: Labels per row, ``-100`` at each example's first token (never predicted from the example before).
        position_ids: Positions per row, restarting at 0 at every example.
        num_examples: Examples in the batch.
    """

    input_ids: tuple[tuple[int, ...], ...]
    labels: tuple[tuple[int, ...], ...]
    position_ids: tuple[tuple[int, ...], ...]
    num_examples: int

    @property
    def num_tokens(self) -> int:
        """Tokens in the batch (no padding is ever added)."""
        return sum(len(r) for r in self.input_ids)

    @property
    def num_labels(self) -> int:
        """Tokens that carry loss (each is predicted from the token before it)."""
        return sum(1 for row in self.labels for x in row[1:] if x != IGNORE_INDEX)


def _clean(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    # As the component does: keys whose value is None are removed before templating.
    return [{k: v for k, v in m.items() if v is not None} for m in messages]


def _uses_generation_blocks(tokenizer: Any) -> bool:
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and "{% generation %}" in template.replace("{%- generation %}", "{% generation %}")


def _assistant_char_spans(tokenizer: Any, messages: list[dict[str, Any]], text: str) -> list[tuple[int, int]]:
    """Strictly private: character spans of assistant turns in ``text`` (the whole rendered conversation).

    A turn starts where the prompt for it (prefix + generation prompt) ends, and ends where the rendering of
    the conversation up to and including it stops agreeing with ``text`` (so it includes the end-of-turn token).
    """
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if prompt and text.startswith(prompt):
            start = len(prompt)
        else:  # a template whose prompts are not prefixes: find the answer itself
            content = str(message.get("content", ""))
            start = text.find(content, spans[-1][1] if spans else 0)
            if start < 0:
                continue
        end = start
        limit = min(len(upto), len(text))
        while end < limit and upto[end] == text[end]:
            end += 1
        while end > start and text[end - 1].isspace():  # the newline after an end-of-turn token is the template's
            end -= 1
        if end > start:
            spans.append((start, end))
    return spans


def encode_conversation(tokenizer: Any, messages: Sequence[Mapping[str, Any]], max_seq_length: int) -> Example | None:
    """Tokenise one conversation with assistant-only labels, truncated from the right.

    Args:
        tokenizer: A Hugging Face tokenizer with a chat template (a fast one, for offsets).
        messages: The conversation.
        max_seq_length: Longest sequence kept.

    Returns:
        The example, or ``None`` when no assistant token survives truncation (the component drops those too).
    """
    msgs = _clean(messages)
    if _uses_generation_blocks(tokenizer):
        out = tokenizer.apply_chat_template(msgs, return_dict=True, return_assistant_tokens_mask=True)
        ids = list(out["input_ids"])
        mask = list(out["assistant_masks"])
    else:
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        spans = _assistant_char_spans(tokenizer, msgs, text)
        mask = [int(any(s <= a and b <= e and b > a for s, e in spans)) for a, b in enc["offset_mapping"]]
    ids, mask = ids[:max_seq_length], mask[:max_seq_length]
    labels = tuple(t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True))
    if all(x == IGNORE_INDEX for x in labels[1:]):
        return None
    return Example(tuple(ids), labels)


def parse_line(line: str) -> list[dict[str, Any]] | None:
    """Strictly private: a line's ``messages``, or ``None`` if it is not a usable row (blank lines are not rows)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list) or len(messages) < 2 or not all(isinstance(m, dict) for m in messages):
        return None
    return messages


def read_rows(path: str | Path) -> tuple[list[list[dict[str, Any]]], int]:
    """Read the ``messages`` of every usable row of a JSONL chat file.

    Args:
        path: The file.

    Returns:
        The conversations, and how many lines were unusable (not JSON, no ``messages`` list of 2+ entries).

    Raises:
        ValidationError: The file cannot be read.
    """
    rows: list[list[dict[str, Any]]] = []
    bad = 0
    for chunk in line_chunks(path):
        for line in chunk:
            messages = parse_line(line)
            if messages is None:
                bad += 1
            else:
                rows.append(messages)
    return rows, bad


def line_chunks(path: str | Path, size: int = 512) -> Iterator[list[str]]:
    """Strictly private: the file's non-blank lines, ``size`` at a time."""
    try:
        with Path(path).open(encoding="utf-8") as f:
            chunk: list[str] = []
            for line in f:
                if line.strip():
                    chunk.append(line)
                    if len(chunk) == size:
                        yield chunk
                        chunk = []
            if chunk:
                yield chunk
    except OSError as exc:
        raise ValidationError(
            [Problem("data", f"cannot read {path}: {exc.strerror or exc}", "check the path")], "unreadable data file"
        ) from None


# Bumped whenever encoding changes what it produces: older cache entries are then never read.


def pack(examples: Iterable[Example]) -> PackedBatch:
    """Pack a batch's examples into one row, with positions restarting at every example.

    Args:
        examples: The batch's examples.

    Returns:
        The packed batch (one row: no padding; the attention kernels see the example boundaries).
    """
    items = list(examples)
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    for ex in items:
        ids.extend(ex.input_ids)
        labels.append(IGNORE_INDEX)  # never predict an example's first token from the one before
        labels.extend(ex.labels[1:])
        pos.extend(range(len(ex.input_ids)))
    return PackedBatch((tuple(ids),), (tuple(labels),), (tuple(pos),), len(items))
