"""What a build did: counts that reconcile, rejection reasons with samples, and statistics (values, no I/O)."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from ..exceptions import Problem
from .reasons import Reason
from .selection import Purpose, SplitSelection

__all__ = ["DatasetBuild", "DatasetReport", "Distribution", "RejectedRow", "SplitReport"]


@attrs.frozen
class Distribution:
    """Summary of a count per conversation or per message.

    Attributes:
        count: How many values.
        total: Their sum.
        min: The smallest.
        mean: The mean.
        p50: The median.
        p90: The 90th percentile.
        p99: The 99th percentile.
        max: The largest.
    """

    count: int = 0
    total: int = 0
    min: int = 0
    mean: float = 0.0
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    max: int = 0

    @classmethod
    def of(cls, values: Any) -> Distribution:
        """Summarise an array of numbers (empty gives all zeros)."""
        v = np.asarray(values)
        if v.size == 0:
            return cls()
        p50, p90, p99 = (float(x) for x in np.percentile(v, [50, 90, 99]))
        return cls(
            count=int(v.size),
            total=int(v.sum()),
            min=int(v.min()),
            mean=round(float(v.mean()), 2),
            p50=p50,
            p90=p90,
            p99=p99,
            max=int(v.max()),
        )


@attrs.frozen
class RejectedRow:
    """One rejected row, kept as a sample for the report.

    Attributes:
        split: The split.
        row: Its 0-based row number in the split, as stored in the source.
        reason: Why it was rejected.
        detail: Where in the row (``messages[1].role is 'bot'``).
        line: The 1-based line in the JSONL file, for JSONL sources.
        excerpt: The start of the row as JSON.
    """

    split: str
    row: int
    reason: Reason
    detail: str
    line: int | None = None
    excerpt: str = ""

    @property
    def where(self) -> str:
        """Where the row is, as a person looks for it: the file's own 1-based line for JSONL, else the row."""
        return f"line {self.line}" if self.line is not None else f"row {self.row}"

    def __str__(self) -> str:
        return f"{self.split} {self.where}: {self.reason.value}: {self.detail}"


@attrs.frozen(kw_only=True)
class SplitReport:
    """The outcome for one split; ``rows_in == rows_written + rows_rejected`` always holds.

    Attributes:
        name: The split.
        purpose: ``train``, ``test`` or ``score``.
        rows_available: Rows of the split in the source.
        rows_in: Rows selected (the percent / row count / sample) and checked.
        rows_written: Rows that passed and were written.
        rows_rejected: Rows rejected.
        reasons: Rejected rows per reason (only reasons that occurred).
        samples: The first few rejected rows of each reason.
        turns: Messages per written conversation.
        conversation_chars: Characters of content per written conversation.
        message_chars: Characters of content per written message.
        tokens: Tokens per written conversation, when a tokenizer was given.
        rows_over_max_seq_length: Written rows longer than ``max_seq_length`` tokens (truncated by the trainer).
        file: The JSONL file written (``None`` for a check without writing).
        parquet_file: The parquet file written, if asked for.
        sha256: The JSONL file's SHA-256.
        bytes: The JSONL file's size.
    """

    name: str
    purpose: Purpose
    rows_available: int
    rows_in: int
    rows_written: int
    rows_rejected: int
    reasons: Mapping[str, int] = attrs.field(factory=dict)
    samples: tuple[RejectedRow, ...] = ()
    turns: Distribution = attrs.field(factory=Distribution)
    conversation_chars: Distribution = attrs.field(factory=Distribution)
    message_chars: Distribution = attrs.field(factory=Distribution)
    tokens: Distribution | None = None
    rows_over_max_seq_length: int | None = None
    file: Path | None = None
    parquet_file: Path | None = None
    sha256: str | None = None
    bytes: int = 0

    def __attrs_post_init__(self) -> None:
        if self.rows_in != self.rows_written + self.rows_rejected or sum(self.reasons.values()) != self.rows_rejected:
            raise ValueError(f"split {self.name}: counts do not reconcile")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Reason):
        return value.value
    if attrs.has(type(value)):
        return {k: _jsonable(v) for k, v in attrs.asdict(value, recurse=False).items()}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


@attrs.frozen(kw_only=True)
class DatasetReport:
    """Everything a build did, as written to ``report.json``.

    Attributes:
        source: What the rows came from.
        selection: Which rows of each split were kept.
        splits: One report per split, in build order.
        warnings: Problems that do not stop the build but would hurt the job (e.g. too few train rows).
        strict: Whether the build ran in strict mode.
        seconds: Wall time of the build.
    """

    source: str
    selection: SplitSelection
    splits: tuple[SplitReport, ...]
    warnings: tuple[Problem, ...] = ()
    strict: bool = False
    seconds: float = 0.0

    @property
    def rows_in(self) -> int:
        """Rows checked, over all splits."""
        return sum(s.rows_in for s in self.splits)

    @property
    def rows_written(self) -> int:
        """Rows written, over all splits."""
        return sum(s.rows_written for s in self.splits)

    @property
    def rows_rejected(self) -> int:
        """Rows rejected, over all splits."""
        return sum(s.rows_rejected for s in self.splits)

    @property
    def reasons(self) -> dict[str, int]:
        """Rejected rows per reason, over all splits."""
        out: dict[str, int] = {}
        for s in self.splits:
            for k, v in s.reasons.items():
                out[k] = out.get(k, 0) + v
        return out

    def split(self, name: str) -> SplitReport:
        """The report of split ``name``."""
        for s in self.splits:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (what ``report.json`` holds)."""
        data: dict[str, Any] = _jsonable(self)
        data["warnings"] = [str(w) for w in self.warnings]
        data["totals"] = {
            "rows_in": self.rows_in,
            "rows_written": self.rows_written,
            "rows_rejected": self.rows_rejected,
            "reasons": self.reasons,
        }
        return data

    def to_json(self) -> str:
        """The report as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False)

    def summary_line(self) -> str:
        """One line: rows written / checked per split, rejected, warnings."""
        parts = [f"{s.name} {s.rows_written:,}/{s.rows_in:,}" for s in self.splits]
        text = f"{', '.join(parts)} rows written ({self.rows_rejected:,} rejected)"
        if self.warnings:
            text += f"; {len(self.warnings)} warning(s)"
        return text

    def summary(self) -> str:
        """A short plain-text summary: one line per split, the reasons, the warnings."""
        lines = [f"source: {self.source}"]
        for s in self.splits:
            lines.append(
                f"  {s.name:<12} {s.rows_in:>9,} in  {s.rows_written:>9,} written  {s.rows_rejected:>7,} rejected"
                f"  turns p50 {s.turns.p50:g}  chars/conv p50 {s.conversation_chars.p50:g}"
                + (f"  tokens p50 {s.tokens.p50:g}" if s.tokens else "")
            )
            for reason, count in sorted(s.reasons.items(), key=lambda kv: -kv[1]):
                sample = next((r for r in s.samples if r.reason.value == reason), None)
                hint = f"  e.g. {sample.where}: {sample.detail}" if sample else ""
                lines.append(f"      {reason:<24} {count:>7,}{hint}")
        for w in self.warnings:
            lines.append(f"warning: {w}")
        lines.append(
            f"{self.rows_written:,} of {self.rows_in:,} rows written, {self.rows_rejected:,} rejected"
            f" in {self.seconds:.1f}s"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        # The generated repr holds every distribution and rejected sample: pages of text in a notebook.
        splits = ", ".join(f"{s.name}={s.rows_written}/{s.rows_in}" for s in self.splits)
        warnings = f", warnings={len(self.warnings)}" if self.warnings else ""
        return f"DatasetReport(source={self.source!r}, {splits}, rejected={self.rows_rejected}{warnings})"

    def _repr_html_(self) -> str:
        columns = ("split", "purpose", "in", "written", "rejected", "top reasons", "turns p50", "chars/conv p50")
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        rows = []
        for s in self.splits:
            top = ", ".join(f"{k} {v:,}" for k, v in sorted(s.reasons.items(), key=lambda kv: -kv[1])[:3])
            cells = (
                s.name,
                s.purpose,
                f"{s.rows_in:,}",
                f"{s.rows_written:,}",
                f"{s.rows_rejected:,}",
                top or "-",
                f"{s.turns.p50:g}",
                f"{s.conversation_chars.p50:g}",
            )
            rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
        warnings = "".join(f"<li>{html.escape(str(w))}</li>" for w in self.warnings)
        caption = f"ftkit data: {self.source} ({self.rows_written:,} of {self.rows_in:,} rows written)"
        return (
            f"<table><caption style='text-align:left'><b>{html.escape(caption)}</b></caption>"
            f"<tr>{head}</tr>{''.join(rows)}</table>" + (f"<ul>{warnings}</ul>" if warnings else "")
        )

    def __rich__(self) -> Any:
        """A rich table (for notebooks and terminals with rich installed)."""
        from rich.table import Table

        table = Table(title=f"ftkit data: {self.source}")
        for col in ("split", "in", "written", "rejected", "top reasons", "turns p50", "chars/conv p50"):
            table.add_column(col, justify="left" if col in ("split", "top reasons") else "right")
        for s in self.splits:
            top = ", ".join(f"{k} {v:,}" for k, v in sorted(s.reasons.items(), key=lambda kv: -kv[1])[:3])
            table.add_row(
                s.name,
                f"{s.rows_in:,}",
                f"{s.rows_written:,}",
                f"{s.rows_rejected:,}",
                top or "-",
                f"{s.turns.p50:g}",
                f"{s.conversation_chars.p50:g}",
            )
        if self.warnings:
            table.caption = "\n".join(f"warning: {w}" for w in self.warnings)
        return table


@attrs.frozen(kw_only=True)
class DatasetBuild:
    """The result of :meth:`ChatDatasetBuilder.build`: where the files are, and the report.

    Attributes:
        out_dir: The output directory.
        files: Split name -> its JSONL file (``files["train_sft"]``).
        parquet_files: Split name -> its parquet file, when parquet output was asked for.
        purposes: Split name -> ``train`` / ``test`` / ``score``.
        report_path: The ``report.json`` written.
        report: The report.
    """

    out_dir: Path
    files: Mapping[str, Path]
    parquet_files: Mapping[str, Path] = attrs.field(factory=dict)
    purposes: Mapping[str, Purpose] = attrs.field(factory=dict)
    report_path: Path
    report: DatasetReport

    def _by_purpose(self, purpose: Purpose) -> Path | None:
        return next((self.files[s] for s, p in self.purposes.items() if p == purpose and s in self.files), None)

    @property
    def train_file(self) -> Path | None:
        """The JSONL file of the train split."""
        return self._by_purpose("train")

    @property
    def test_file(self) -> Path | None:
        """The JSONL file of the test split."""
        return self._by_purpose("test")

    @property
    def score_file(self) -> Path | None:
        """The JSONL file of the scoring split."""
        return self._by_purpose("score")
