"""The pieces one split's streaming build is made of (see :class:`~ftkit.data.builder.ChatDatasetBuilder`).

:func:`prefetch` decodes the next batch on a reader thread, :class:`FileWriter` writes (and hashes) the previous
one on a writer thread, and :class:`SplitRun` gathers one split's counts, rejections and distributions while
the builder's main thread checks the current batch; :func:`select_rows` and :func:`conform` shape a batch,
:func:`strict_error` turns a strict build's rejections into one error.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from ..exceptions import DatasetValidationError, Problem
from .reasons import REASON_ORDER, Reason
from .report import DatasetReport, Distribution, RejectedRow, SplitReport
from .selection import SplitSpec
from .sources import Chunk
from .validate import (
    OUTPUT_SCHEMA,
)

__all__ = [
    "FileWriter",
    "SplitRun",
    "TokenCounter",
    "conform",
    "empty_table",
    "prefetch",
    "select_rows",
    "strict_error",
    "token_counter",
]

#: Counts the tokens of one conversation (a list of ``{role, content}`` dicts).
TokenCounter = Callable[[list[dict[str, str]]], int]
T = TypeVar("T")


def token_counter(tokenizer: Any) -> TokenCounter:
    """Wrap a Hugging Face tokenizer (its chat template) or accept a counting function as is."""
    if hasattr(tokenizer, "apply_chat_template"):

        def count(messages: list[dict[str, str]]) -> int:
            ids = tokenizer.apply_chat_template(messages, tokenize=True)
            if isinstance(ids, Mapping):  # transformers 5 may return a BatchEncoding
                ids = ids["input_ids"]
            return len(ids)

        return count
    if callable(tokenizer):
        return tokenizer  # type: ignore[no-any-return]
    raise TypeError("tokenizer must be a Hugging Face tokenizer or a function messages -> token count")


def prefetch(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Iterate ``items`` in a background thread, ``depth`` items ahead (pyarrow decodes without the GIL)."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def run() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("done", None))
        except BaseException as exc:  # handed to the consumer, raised there
            q.put(("error", exc))

    thread = threading.Thread(target=run, name="ftkit-data-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                q.get_nowait()
        thread.join(timeout=5)


class FileWriter:
    """Write and hash byte chunks in a background thread (file writes and SHA-256 release the GIL)."""

    def __init__(self, path: Path) -> None:
        self.sha = hashlib.sha256()
        self.bytes = 0
        self._file = path.open("wb")
        self._q: queue.Queue[memoryview | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ftkit-data-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            data = self._q.get()
            if data is None:
                return
            if self._error is None:
                try:
                    self._file.write(data)
                    self.sha.update(data)
                    self.bytes += len(data)
                except OSError as exc:  # a write() error names no file: name the one that filled
                    self._error = OSError(exc.errno, exc.strerror, exc.filename or self._file.name)
                    self._error.__cause__ = exc
                except BaseException as exc:
                    self._error = exc

    def write(self, data: memoryview) -> None:
        """Queue ``data`` for the writer thread (raising what an earlier write raised, such as a full disk)."""
        if self._error is not None:
            raise self._error
        if len(data):
            self._q.put(data)

    def close(self) -> None:
        """Write what is queued, then stop the writer thread."""
        self._q.put(None)
        self._thread.join()
        try:
            self._file.close()  # the buffered rest is written here, and a full disk may say so only now
        except OSError as exc:
            if self._error is None:
                raise OSError(exc.errno, exc.strerror, exc.filename or self._file.name) from exc
        if self._error is not None:
            raise self._error


class SplitRun:
    """The running counts and statistics of one split."""

    def __init__(self, spec: SplitSpec, sample_size: int, counter: TokenCounter | None, max_seq: int | None):
        self.spec = spec
        self.sample_size = sample_size
        self.counter = counter
        self.max_seq = max_seq
        self.rows_in = 0
        self.written = 0
        self.reasons: dict[Reason, int] = {}
        self.samples: list[RejectedRow] = []
        self.turns: list[Any] = []
        self.conv_chars: list[Any] = []
        self.msg_chars: list[Any] = []
        self.tokens: list[int] = []
        self.over_max = 0
        self.columns: tuple[str, ...] | None = None
        # Hashes of the written lines, to count rows identical to an earlier one (here or in an earlier split).
        self.seen: set[int] = set()
        self.duplicates = 0
        self.in_earlier: dict[str, int] = {}

    def note_lines(self, encoded: memoryview, earlier: Mapping[str, set[int]]) -> None:
        """Count written rows identical to an earlier row of this split, or to a row of an earlier split."""
        for line in bytes(encoded).split(b"\n")[:-1]:
            key = hash(line)
            if key in self.seen:
                self.duplicates += 1
            else:
                self.seen.add(key)
            for name, keys in earlier.items():
                if key in keys:
                    self.in_earlier[name] = self.in_earlier.get(name, 0) + 1

    def reject(self, row: int, reason: Reason, detail: str, line: int | None, value: object) -> None:
        """Count a rejected row under ``reason``, keeping the first ``sample_size`` of each as samples."""
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if self.reasons[reason] <= self.sample_size:
            text = value if isinstance(value, str) else _excerpt(value)
            self.samples.append(RejectedRow(self.spec.name, row, reason, detail, line, text[:300]))

    def accept(self, out: pa.RecordBatch, turns: Any, conv_chars: Any, msg_chars: Any) -> None:
        """Count a batch of kept rows and their turns, characters and (with a tokenizer) tokens."""
        self.written += out.num_rows
        self.turns.append(np.asarray(turns, np.int32))
        self.conv_chars.append(np.asarray(conv_chars, np.int64))
        self.msg_chars.append(np.asarray(msg_chars, np.int32))
        if self.counter is not None:
            for messages in out.column("messages").to_pylist():
                n = self.counter(messages)
                self.tokens.append(n)
                if self.max_seq is not None and n > self.max_seq:
                    self.over_max += 1

    def report(
        self, available: int, file: Path | None, parquet: Path | None, sha: str | None, size: int
    ) -> SplitReport:
        """The split's report, from what was counted."""

        def cat(parts: list[Any]) -> Any:
            return np.concatenate(parts) if parts else np.zeros(0, np.int64)

        order = {r: i for i, r in enumerate(REASON_ORDER)}
        reasons = {r.value: n for r, n in sorted(self.reasons.items(), key=lambda kv: order[kv[0]])}
        return SplitReport(
            name=self.spec.name,
            purpose=self.spec.purpose,
            rows_available=available,
            rows_in=self.rows_in,
            rows_written=self.written,
            rows_rejected=self.rows_in - self.written,
            reasons=reasons,
            samples=tuple(sorted(self.samples, key=lambda r: (order[r.reason], r.row))),
            turns=Distribution.of(cat(self.turns)),
            conversation_chars=Distribution.of(cat(self.conv_chars)),
            message_chars=Distribution.of(cat(self.msg_chars)),
            tokens=Distribution.of(np.asarray(self.tokens)) if self.counter is not None else None,
            rows_over_max_seq_length=self.over_max if self.counter is not None and self.max_seq else None,
            file=file,
            parquet_file=parquet,
            sha256=sha,
            bytes=size,
        )


def select_rows(chunk: Chunk, positions: Any) -> Chunk:
    """The rows at ``positions`` (sorted, relative to the chunk) of ``chunk``."""
    n = len(chunk)
    if len(positions) == n:
        return chunk
    contiguous = len(positions) and positions[-1] - positions[0] + 1 == len(positions)
    if chunk.arrow is not None:
        if contiguous:
            return Chunk(chunk.start, arrow=chunk.arrow.slice(int(positions[0]), len(positions)))
        return Chunk(chunk.start, arrow=chunk.arrow.take(pa.array(positions)))
    rows = chunk.rows or ()
    lines = chunk.lines
    return Chunk(
        chunk.start,
        rows=[rows[int(i)] for i in positions],
        lines=[lines[int(i)] for i in positions] if lines is not None else None,
    )


def conform(out: pa.RecordBatch, columns: tuple[str, ...] | None) -> pa.RecordBatch:
    """Give ``out`` exactly the split's output columns (a uniform schema in every line)."""
    if columns is None or tuple(out.schema.names) == columns:
        return out
    arrays = [
        out.column(c) if c in out.schema.names else pa.nulls(out.num_rows, OUTPUT_SCHEMA.field(c).type) for c in columns
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema([OUTPUT_SCHEMA.field(c) for c in columns]))


def empty_table(columns: tuple[str, ...] | None) -> pa.Table:
    """A table with the split's output columns and no rows (an empty split's Parquet file)."""
    return pa.schema([OUTPUT_SCHEMA.field(c) for c in columns or ("messages",)]).empty_table()


def _excerpt(value: object) -> str:
    import json

    try:
        return json.dumps(value, ensure_ascii=False, default=repr)[:300]
    except ValueError:
        return repr(value)[:300]


def strict_error(report: DatasetReport) -> DatasetValidationError:
    """The error of a strict build that rejected rows: one problem per split and reason, with an example."""
    problems: list[Problem] = []
    for s in report.splits:
        for reason, count in s.reasons.items():
            sample = next((r for r in s.samples if r.reason.value == reason), None)
            problems.append(
                Problem(
                    s.name,
                    f"{count} row(s) rejected: {reason} ({Reason(reason).description})",
                    f"e.g. {sample.where}: {sample.detail}" if sample else None,
                    line=sample.line if sample else None,
                )
            )
    problems.extend(report.warnings)
    error = DatasetValidationError(problems, f"strict: {report.rows_rejected} of {report.rows_in} rows rejected")
    error.report = report  # type: ignore[attr-defined]
    return error
