"""Writing built splits: JSON Lines encoded with Arrow compute, and files that appear whole or not at all.

:func:`encode_jsonl` turns a batch in the output shape into the bytes of its JSON Lines, byte for byte what
``json.dumps(row, ensure_ascii=False, separators=(",", ":"))`` gives per row, but without a Python object per
row: strings are escaped only where a byte needs it (found with numpy over the string data) and the lines are
joined by Arrow kernels, so the writer runs at a few hundred MB/s.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .validate import KEPT_COLUMNS

__all__ = ["atomic_path", "encode_jsonl", "escape_json_strings"]

# The escapes json.dumps writes (short forms where JSON has them, \u00XX for the other control characters).
_ESCAPES: dict[int, str] = {b: f"\\u{b:04x}" for b in range(0x20)}
_ESCAPES.update({0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r", 0x22: '\\"', 0x5C: "\\\\"})


def escape_json_strings(arr: pa.Array) -> pa.Array:
    """Return ``arr`` (strings) with each value escaped for use inside JSON double quotes.

    Args:
        arr: A ``string`` array; nulls stay null.

    Returns:
        The escaped strings (the same array when nothing needs escaping, which is the common case).
    """
    if len(arr) == 0:
        return arr
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], np.int32, count=len(arr) + 1, offset=arr.offset * 4)
    if bufs[2] is None or offsets[-1] == offsets[0]:
        return arr
    data = np.frombuffer(bufs[2], np.uint8)[offsets[0] : offsets[-1]]
    bad = data < 0x20
    bad |= data == 0x22
    bad |= data == 0x5C
    pos = np.flatnonzero(bad)
    if len(pos) == 0:
        return arr
    rows = np.unique(np.searchsorted(offsets, pos + offsets[0], side="right") - 1)
    sub = arr.take(pa.array(rows))
    present = np.unique(data[pos]).tolist()
    # The backslash goes first, or the escapes added for the other bytes would be escaped again.
    for byte in sorted(present, key=lambda b: b != 0x5C):
        sub = pc.replace_substring(sub, chr(byte), _ESCAPES[byte])
    mask = np.zeros(len(arr), bool)
    mask[rows] = True
    return pc.replace_with_mask(arr, pa.array(mask), sub)


def _quoted(arr: pa.Array) -> pa.Array:
    """JSON values of a string column: ``"escaped"`` or ``null``."""
    escaped = escape_json_strings(arr)
    quoted = pc.binary_join_element_wise('"', escaped, '"', "")
    if arr.null_count:
        quoted = pc.if_else(arr.is_null(), pa.scalar("null"), quoted)
    return quoted


def encode_jsonl(batch: pa.RecordBatch) -> memoryview:
    """Encode a batch in the output shape as JSON Lines.

    Args:
        batch: Rows with ``messages: list<struct<role: string, content: string>>`` and optionally ``prompt`` /
            ``prompt_id`` strings (see :func:`ftkit.data.validate.to_output_batch`).

    Returns:
        The UTF-8 bytes of one JSON object per row, each ending with a newline (keys in the order ``prompt``,
        ``prompt_id``, ``messages``; per message ``role``, ``content``).
    """
    if batch.num_rows == 0:
        return memoryview(b"")
    msgs = batch.column("messages")
    flat = pc.list_flatten(msgs)
    role = escape_json_strings(pc.struct_field(flat, "role"))
    content = escape_json_strings(pc.struct_field(flat, "content"))
    each = pc.binary_join_element_wise('{"role":"', role, '","content":"', content, '"}', "")
    lengths = pc.list_value_length(msgs).fill_null(0).to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), each), ",")
    parts: list[Any] = []
    sep = "{"
    for name in KEPT_COLUMNS:
        if name in batch.schema.names:
            parts += [f'{sep}"{name}":', _quoted(batch.column(name))]
            sep = ","
    parts += [f'{sep}"messages":[', joined, "]}\n"]
    lines = pc.binary_join_element_wise(*parts, "")
    if isinstance(lines, pa.ChunkedArray):  # pragma: no cover - batches give arrays
        lines = lines.combine_chunks()
    bufs = lines.buffers()
    line_offsets = np.frombuffer(bufs[1], np.int32, count=len(lines) + 1, offset=lines.offset * 4)
    # The string data of the lines, back to back, is the file's content: no join, no copy.
    return memoryview(bufs[2])[line_offsets[0] : line_offsets[-1]]


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` that replaces ``path`` only when the block ends without error.

    An interrupted or failed write leaves ``path`` as it was (absent, or the previous version) and no temporary
    file behind.

    Args:
        path: The final path.

    Yields:
        The temporary path to write to.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file 0600; give the result the mode a plain open() would have (0666 & ~umask),
        # so built data files can be shared and uploaded like any other file.
        umask = os.umask(0)
        os.umask(umask)
        tmp_path.chmod(0o666 & ~umask)
        tmp_path.replace(path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
