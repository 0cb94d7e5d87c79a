"""Pure checks of chat rows against the schema the chat-completion component consumes.

Two implementations of one set of rules (see :mod:`ftkit.data.reasons` for the reasons and their order):

- :func:`check_arrow` checks a whole Arrow batch at once with pyarrow compute and numpy, when the batch already
  has the canonical types (``messages: list<struct<role: string, content: string, ...>>``) — the parquet and
  Hugging Face case, where per-row Python would dominate the build time;
- :func:`check_row` checks one Python object (JSONL lines, in-memory rows, and Arrow batches of any other shape).

Both give the same reason for the same row (the test suite checks it on generated rows). Accepted rows come out in
the canonical shape (:data:`OUTPUT_SCHEMA`): extra keys per message and extra columns are dropped, so that every
line of a written file has the same keys and types and ``datasets.load_dataset("json")`` can load it whole.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .reasons import REASON_ORDER, Reason

__all__ = [
    "KEPT_COLUMNS",
    "MESSAGE_TYPE",
    "OUTPUT_SCHEMA",
    "ROLES",
    "ArrowCheck",
    "RowRules",
    "check_arrow",
    "check_row",
    "is_canonical",
    "to_output_batch",
]

ROLES: tuple[str, ...] = ("system", "user", "assistant")
_SYSTEM, _USER, _ASSISTANT = 0, 1, 2
#: Top-level columns kept besides ``messages`` (when the source has them); anything else is dropped.
KEPT_COLUMNS: tuple[str, ...] = ("prompt", "prompt_id")
MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
OUTPUT_SCHEMA = pa.schema([("prompt", pa.string()), ("prompt_id", pa.string()), ("messages", pa.list_(MESSAGE_TYPE))])

_RANK: dict[Reason, int] = {r: i for i, r in enumerate(REASON_ORDER)}
#: The rank of an accepted row (past every reason).
OK = len(REASON_ORDER)
_ROLE_SET = pa.array(ROLES, pa.string())
_STRING_TYPES = (pa.types.is_string, pa.types.is_large_string)


@attrs.frozen
class RowRules:
    """What a row of one split must satisfy.

    Attributes:
        require_last_assistant: The conversation must end with an assistant turn (SFT splits); the scoring split
            only needs well-formed turns.
        max_row_chars: Reject conversations with more characters of content than this (garbage or runaway rows).
    """

    require_last_assistant: bool = True
    max_row_chars: int = 1_000_000


def _is_string(t: pa.DataType) -> bool:
    return any(f(t) for f in _STRING_TYPES)


def is_canonical(schema: pa.Schema) -> bool:
    """Whether :func:`check_arrow` can check batches of ``schema`` (else use :func:`check_row` per row)."""
    if "messages" not in schema.names:
        return False
    t = schema.field("messages").type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
        return False
    item = t.value_type
    if not pa.types.is_struct(item):
        return False
    names = [item.field(i).name for i in range(item.num_fields)]
    for key in ("role", "content"):
        if key not in names or not _is_string(item.field(names.index(key)).type):
            return False
    return all(
        _is_string(schema.field(c).type) or pa.types.is_null(schema.field(c).type)
        for c in KEPT_COLUMNS
        if c in schema.names
    )


def _np(arr: pa.Array) -> Any:
    return arr.to_numpy(zero_copy_only=False)


@attrs.frozen
class ArrowCheck:
    """The outcome of :func:`check_arrow` on one batch.

    Attributes:
        rank: Per row, the index in ``REASON_ORDER`` of its reason, or ``OK`` (= ``len(REASON_ORDER)``).
        turns: Per row, the number of messages.
        chars: Per row, the characters of content.
        message_chars: Per message (flattened, all rows), the characters of content.
        parent: Per message, the row it belongs to.
    """

    rank: Any
    turns: Any
    chars: Any
    message_chars: Any
    parent: Any

    @property
    def ok(self) -> Any:
        """Boolean mask of accepted rows."""
        return self.rank == OK


def check_arrow(batch: pa.RecordBatch, rules: RowRules) -> ArrowCheck:
    """Check every row of a canonical batch (see :func:`is_canonical`) with vectorised operations.

    Args:
        batch: The rows.
        rules: The split's rules.

    Returns:
        Each row's reason rank and its statistics.
    """
    n = batch.num_rows
    msgs = batch.column("messages")
    rank = np.full(n, OK, np.int16)

    def hit(mask: Any, reason: Reason) -> None:
        np.minimum(rank, np.where(mask, _RANK[reason], OK).astype(np.int16), out=rank)

    row_null = _np(msgs.is_null())
    turns = _np(pc.list_value_length(msgs).fill_null(0)).astype(np.int64)
    hit(row_null, Reason.MESSAGES_MISSING)
    hit(~row_null & (turns == 0), Reason.MESSAGES_EMPTY)
    flat = pc.list_flatten(msgs)
    parent = _np(pc.list_parent_indices(msgs)).astype(np.int64)
    m = len(flat)
    if m == 0:
        empty = np.zeros(0, np.int64)
        return ArrowCheck(rank, turns, np.zeros(n, np.int64), empty, empty)
    counts = np.bincount(parent, minlength=n)
    starts = np.cumsum(counts) - counts
    pos = np.arange(m) - starts[parent]
    msg_null = _np(flat.is_null())
    role = pc.struct_field(flat, "role")
    content = pc.struct_field(flat, "content")
    code = _np(pc.index_in(role, value_set=_ROLE_SET).fill_null(-1)).astype(np.int64)
    role_null = _np(role.is_null())
    content_null = _np(content.is_null())
    clen = _np(pc.utf8_length(content).fill_null(0)).astype(np.int64)
    blank = (clen == 0) | _np(pc.utf8_is_space(content).fill_null(False))

    mrank = np.full(m, OK, np.int16)

    def mhit(mask: Any, reason: Reason) -> None:
        np.minimum(mrank, np.where(mask, _RANK[reason], OK).astype(np.int16), out=mrank)

    mhit(msg_null, Reason.MESSAGE_NOT_OBJECT)
    mhit(~msg_null & role_null, Reason.ROLE_MISSING)
    mhit(~role_null & (code < 0), Reason.ROLE_UNKNOWN)
    mhit(~msg_null & content_null, Reason.CONTENT_MISSING)
    mhit(~content_null & blank, Reason.CONTENT_EMPTY)
    first = pos == 0
    lead = np.zeros(n, bool)
    lead[parent[first]] = code[first] == _SYSTEM
    lead_m = lead[parent]
    late_system = (code == _SYSTEM) & (pos > 0)
    mhit(late_system & lead_m, Reason.SYSTEM_DUPLICATE)
    mhit(late_system & ~lead_m, Reason.SYSTEM_NOT_FIRST)
    q = pos - lead_m
    expected = np.where(q % 2 == 0, _USER, _ASSISTANT)
    wrong = (code > 0) & (code != expected)
    mhit(wrong & (q == 0), Reason.FIRST_TURN_NOT_USER)
    mhit(wrong & (q > 0), Reason.TURNS_NOT_ALTERNATING)
    bad = mrank < OK
    if bad.any():
        np.minimum.at(rank, parent[bad], mrank[bad])

    has_msgs = counts > 0
    users = np.bincount(parent, weights=(code == _USER), minlength=n)
    hit(has_msgs & (users == 0), Reason.NO_USER_TURN)
    if rules.require_last_assistant:
        last = np.where(has_msgs, starts + counts - 1, 0)
        hit(has_msgs & (code[last] != _ASSISTANT), Reason.LAST_TURN_NOT_ASSISTANT)
    chars = np.bincount(parent, weights=clen, minlength=n).astype(np.int64)
    hit(chars > rules.max_row_chars, Reason.ROW_TOO_LARGE)
    return ArrowCheck(rank, turns, chars, clen, parent)


def to_output_batch(batch: pa.RecordBatch, keep: Any | None = None) -> pa.RecordBatch:
    """Return the accepted rows of a canonical batch in the output shape (``OUTPUT_SCHEMA``'s columns).

    Args:
        batch: A canonical batch (see :func:`is_canonical`).
        keep: Boolean mask of the rows to keep (all when ``None``).

    Returns:
        A batch with ``prompt``/``prompt_id`` (those the source has) and ``messages`` of exactly
        ``list<struct<role: string, content: string>>``.
    """
    if keep is not None and not keep.all():
        batch = batch.filter(pa.array(keep))
    msgs = batch.column("messages")
    flat = pc.list_flatten(msgs)
    role = pc.struct_field(flat, "role").cast(pa.string())
    content = pc.struct_field(flat, "content").cast(pa.string())
    lengths = _np(pc.list_value_length(msgs).fill_null(0))
    offsets = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    structs = pa.StructArray.from_arrays([role, content], fields=list(MESSAGE_TYPE))
    arrays: list[pa.Array] = []
    fields: list[pa.Field] = []
    for name in KEPT_COLUMNS:
        if name in batch.schema.names:
            arrays.append(batch.column(name).cast(pa.string()))
            fields.append(OUTPUT_SCHEMA.field(name))
    arrays.append(pa.ListArray.from_arrays(pa.array(offsets), structs))
    fields.append(OUTPUT_SCHEMA.field("messages"))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def _is_blank(text: str) -> bool:
    return not text or text.isspace()


def check_row(row: object, rules: RowRules) -> tuple[Reason, str] | dict[str, Any]:
    """Check one row given as Python values.

    Args:
        row: A decoded JSON object / mapping.
        rules: The split's rules.

    Returns:
        ``(reason, detail)`` for a rejected row, else the row in the output shape (a dict with ``messages``
        of ``{role, content}`` dicts, plus ``prompt``/``prompt_id`` when present).
    """
    if not isinstance(row, Mapping):
        return Reason.ROW_NOT_OBJECT, f"got {type(row).__name__}"
    found: list[tuple[int, Reason, str]] = []

    def add(reason: Reason, detail: str) -> None:
        found.append((_RANK[reason], reason, detail))

    out: dict[str, Any] = {}
    for name in KEPT_COLUMNS:
        if name in row:
            value = row[name]
            if value is not None and not isinstance(value, str):
                bad = Reason.PROMPT_NOT_STRING if name == "prompt" else Reason.PROMPT_ID_NOT_STRING
                add(bad, f"{name} is {_kind(value)}")
            out[name] = value
    msgs = row.get("messages")
    if msgs is None:
        add(Reason.MESSAGES_MISSING, "no 'messages'")
    elif isinstance(msgs, str):
        add(*_string_messages(msgs))
    elif not isinstance(msgs, Sequence):
        add(Reason.MESSAGES_NOT_LIST, f"messages is {_kind(msgs)}")
    elif len(msgs) == 0:
        add(Reason.MESSAGES_EMPTY, "messages is []")
    else:
        out["messages"] = _check_messages(msgs, rules, add)
    if found:
        _, reason, detail = min(found, key=lambda f: f[0])
        return reason, detail
    return out


def _kind(value: object) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return type(value).__name__


def _string_messages(text: str) -> tuple[Reason, str]:
    try:
        decoded = json.loads(text)
    except ValueError:
        decoded = None
    if isinstance(decoded, list):
        return Reason.MESSAGES_JSON_STRING, "messages is a string holding JSON; decode it first"
    return Reason.MESSAGES_NOT_LIST, "messages is str"


def _check_messages(msgs: Sequence[Any], rules: RowRules, add: Any) -> list[dict[str, Any]]:
    codes: list[int] = []
    chars = 0
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(msgs):
        code = -1
        if not isinstance(msg, Mapping):
            add(Reason.MESSAGE_NOT_OBJECT, f"messages[{i}] is {_kind(msg)}")
            codes.append(code)
            continue
        role = msg.get("role")
        content = msg.get("content")
        if role is None:
            add(Reason.ROLE_MISSING, f"messages[{i}].role is missing")
        elif not isinstance(role, str):
            add(Reason.ROLE_NOT_STRING, f"messages[{i}].role is {_kind(role)}")
        elif role not in ROLES:
            add(Reason.ROLE_UNKNOWN, f"messages[{i}].role is {role[:40]!r}")
        else:
            code = ROLES.index(role)
        if content is None:
            add(Reason.CONTENT_MISSING, f"messages[{i}].content is missing")
        elif not isinstance(content, str):
            add(Reason.CONTENT_NOT_STRING, f"messages[{i}].content is {_kind(content)}")
        else:
            chars += len(content)
            if _is_blank(content):
                add(Reason.CONTENT_EMPTY, f"messages[{i}].content is blank")
        codes.append(code)
        out.append({"role": role, "content": content})
    lead = codes[0] == _SYSTEM
    for i, code in enumerate(codes):
        if code == _SYSTEM and i > 0:
            add(Reason.SYSTEM_DUPLICATE if lead else Reason.SYSTEM_NOT_FIRST, f"messages[{i}] is a system message")
        elif code > 0:
            q = i - lead
            expected = _USER if q % 2 == 0 else _ASSISTANT
            if code != expected:
                reason = Reason.FIRST_TURN_NOT_USER if q == 0 else Reason.TURNS_NOT_ALTERNATING
                add(reason, f"messages[{i}] is {ROLES[code]}, expected {ROLES[expected]}")
    if _USER not in codes:
        add(Reason.NO_USER_TURN, "no user message")
    if rules.require_last_assistant and codes[-1] != _ASSISTANT:
        add(Reason.LAST_TURN_NOT_ASSISTANT, f"last message ({len(codes) - 1}) is not from the assistant")
    if chars > rules.max_row_chars:
        add(Reason.ROW_TOO_LARGE, f"{chars} characters > {rules.max_row_chars}")
    return out
