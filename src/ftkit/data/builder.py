"""``ChatDatasetBuilder``: read, select, check and write the chat splits of a fine-tuning job, streaming.

One batch at a time flows source -> selection -> checks -> encoder -> file; a reader thread decodes the next batch
and a writer thread writes (and hashes) the previous one while the main thread checks the current one, so memory
stays at a few batches whatever the dataset's size.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..exceptions import DatasetValidationError, Problem, ValidationError
from .reasons import REASON_ORDER, Reason
from .report import DatasetBuild, DatasetReport, SplitReport
from .selection import SplitSelection, SplitSpec
from .sources import ChatSource, Chunk, Undecodable, open_source
from .split_run import (
    FileWriter,
    SplitRun,
    TokenCounter,
    conform,
    empty_table,
    prefetch,
    select_rows,
    strict_error,
    token_counter,
)
from .validate import (
    KEPT_COLUMNS,
    OUTPUT_SCHEMA,
    RowRules,
    check_arrow,
    check_row,
    is_canonical,
    to_output_batch,
)
from .writer import atomic_path, encode_jsonl

if TYPE_CHECKING:
    from ..jobfile import JobFile

__all__ = ["ChatDatasetBuilder", "TokenCounter"]


#: Azure ML fails a job with fewer train rows than this after its own filtering.
MIN_TRAIN_ROWS = 10
#: With no validation file, Azure ML trains on this fraction of the train file.
AZURE_TRAIN_FRACTION = 0.8


class ChatDatasetBuilder:
    """Build the JSONL chat files of a fine-tuning job: selected, checked row by row, written atomically.

    Every selected row is checked against the chat schema the chat-completion component consumes (see
    docs/data.md for the rules and the rejection reasons). By default a bad row is dropped and counted under its
    reason; with ``strict=True`` the build fails instead, listing every reason, and writes nothing.

    Example::

        build = ChatDatasetBuilder("train.parquet", splits=["train_sft"], selection=SplitSelection(percent=5)).build()
        build.files["train_sft"], build.report.rows_rejected

    Args:
        source: A Hugging Face dataset id (read through ``datasets``, its local cache when offline), a local
            parquet/JSONL file or directory, a mapping of split name -> rows (dicts or an Arrow table), or a
            :class:`~ftkit.data.sources.ChatSource`.
        splits: The splits to build, by name (purpose guessed: ``*gen*`` -> score, ``*train*`` -> train, else
            test) or as :class:`SplitSpec`.
        selection: How many rows of each split, and which.
        out_dir: Where ``{split}.jsonl`` (and ``{split}.parquet``, ``report.json``) go.
        strict: Fail (:class:`~ftkit.DatasetValidationError`) when any row is rejected, and write nothing.
        parquet: Also write ``{split}.parquet``.
        tokenizer: A Hugging Face tokenizer (its chat template) or a function messages -> token count; adds token
            statistics to the report.
        max_seq_length: With a tokenizer, count rows longer than this (the trainer truncates them).
        max_row_chars: Reject conversations with more characters of content than this.
        batch_size: Rows per batch; memory grows with it, not with the dataset.
        sample_size: Rejected rows kept per reason and split for the report.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | Mapping[str, Sequence[object] | pa.Table] | ChatSource,
        *,
        splits: Sequence[str | SplitSpec] = ("train_sft", "test_sft", "test_gen"),
        selection: SplitSelection | None = None,
        out_dir: str | os.PathLike[str] = "data",
        strict: bool = False,
        parquet: bool = False,
        tokenizer: Any = None,
        max_seq_length: int | None = None,
        max_row_chars: int = 1_000_000,
        batch_size: int = 2048,
        sample_size: int = 5,
    ) -> None:
        self.source = source
        self.splits = tuple(s if isinstance(s, SplitSpec) else SplitSpec.infer(s) for s in splits)
        if not self.splits:
            raise ValidationError(
                [Problem("splits", "no splits to build", "name at least one split (--splits NAME)")], "nothing to build"
            )
        self.selection = selection or SplitSelection()
        self.out_dir = Path(out_dir)
        self.strict = strict
        self.parquet = parquet
        self.token_counter = token_counter(tokenizer) if tokenizer is not None else None
        self.max_seq_length = max_seq_length
        self.max_row_chars = max_row_chars
        self.batch_size = batch_size
        self.sample_size = sample_size

    @classmethod
    def from_job(cls, job: JobFile, **overrides: Any) -> ChatDatasetBuilder:
        """The builder for a job file's ``data:`` section (``out_dir`` resolved against the job file).

        Args:
            job: The job.
            **overrides: Keyword arguments of the constructor that replace the job's values.

        Returns:
            The builder; call :meth:`build`.

        Raises:
            DatasetValidationError: ``data.source`` is not set.
        """
        data = job.data
        if data.source is None:
            raise DatasetValidationError(
                [Problem("data.source", "is not set", "name a dataset id or a local parquet/JSONL file or dir")],
                "nothing to build",
            )
        splits = [SplitSpec(data.train_split, "train"), SplitSpec(data.test_split, "test")]
        if data.score_split:
            splits.append(SplitSpec(data.score_split, "score"))
        source: str = data.source
        local = job.resolve_path(source)
        if local.exists():
            source = str(local)
        kwargs: dict[str, Any] = {
            "splits": splits,
            "selection": SplitSelection(percent=data.percent, rows=data.rows, sample=data.sample, seed=data.seed),
            "out_dir": job.resolve_path(data.out_dir),
            "strict": data.strict,
        }
        kwargs.update(overrides)
        return cls(source, **kwargs)

    def check(self) -> DatasetReport:
        """Check the selected rows and return the report, writing nothing.

        Raises:
            DatasetValidationError: In strict mode, when a row is rejected; or the source cannot be read.
        """
        return self._run(write=False)[1]

    def build(self) -> DatasetBuild:
        """Select, check and write every split, then ``report.json``; files appear only when all succeed.

        Returns:
            The files written and the report.

        Raises:
            DatasetValidationError: In strict mode, when a row is rejected (nothing is written); or the source
                cannot be read (a :class:`~ftkit.data.sources.DataSourceError`).
        """
        build, _ = self._run(write=True)
        assert build is not None
        return build

    def _run(self, *, write: bool) -> tuple[DatasetBuild | None, DatasetReport]:
        started = time.perf_counter()
        names = [s.name for s in self.splits]
        source = open_source(self.source, names)
        reports: list[SplitReport] = []
        seen: dict[str, set[int]] = {}  # each split's written lines (hashes), for the duplicate checks
        duplicates: list[Problem] = []
        files: dict[str, Path] = {}
        parquet_files: dict[str, Path] = {}
        with contextlib.ExitStack() as stage:
            for spec in self.splits:
                jsonl = parquet = None
                if write:
                    jsonl = stage.enter_context(atomic_path(self.out_dir / f"{spec.name}.jsonl"))
                    files[spec.name] = self.out_dir / f"{spec.name}.jsonl"
                    if self.parquet:
                        parquet = stage.enter_context(atomic_path(self.out_dir / f"{spec.name}.parquet"))
                        parquet_files[spec.name] = self.out_dir / f"{spec.name}.parquet"
                reports.append(
                    self._build_split(
                        source, spec, jsonl, parquet, files.get(spec.name), parquet_files, seen, duplicates
                    )
                )
            report = DatasetReport(
                source=source.description,
                selection=self.selection,
                splits=tuple(reports),
                warnings=(*self._warnings(reports), *duplicates),
                strict=self.strict,
                seconds=round(time.perf_counter() - started, 3),
            )
            if self.strict and (report.rows_rejected or report.warnings):
                raise strict_error(report)
            if not write:
                return None, report
            report_path = self.out_dir / "report.json"
            with atomic_path(report_path) as tmp:
                tmp.write_text(report.to_json() + "\n", encoding="utf-8")
        return (
            DatasetBuild(
                out_dir=self.out_dir,
                files=files,
                parquet_files=parquet_files,
                purposes={s.name: s.purpose for s in self.splits},
                report_path=report_path,
                report=report,
            ),
            report,
        )

    def _warnings(self, reports: Sequence[SplitReport]) -> tuple[Problem, ...]:
        out: list[Problem] = []
        for r in reports:
            if r.purpose == "train" and round(r.rows_written * AZURE_TRAIN_FRACTION) < MIN_TRAIN_ROWS:
                out.append(
                    Problem(
                        r.name,
                        f"only {r.rows_written} train row(s): Azure ML trains on 80% of them when no validation "
                        f"file is given and fails with fewer than {MIN_TRAIN_ROWS}",
                        "select more rows",
                    )
                )
            elif r.rows_written == 0:
                out.append(Problem(r.name, "no rows written", "select more rows or fix the source"))
            if r.rows_over_max_seq_length:
                out.append(
                    Problem(
                        r.name,
                        f"{r.rows_over_max_seq_length} row(s) exceed max_seq_length={self.max_seq_length} tokens "
                        "and will be truncated (dropped when no assistant token is left)",
                    )
                )
        return tuple(out)

    def _build_split(
        self,
        source: ChatSource,
        spec: SplitSpec,
        jsonl: Path | None,
        parquet: Path | None,
        final: Path | None,
        parquet_files: Mapping[str, Path],
        seen: dict[str, set[int]],
        duplicates: list[Problem],
    ) -> SplitReport:
        available = source.num_rows(spec.name)
        keep = self.selection.count(available)
        indices = self.selection.indices(spec.name, available)
        rules = RowRules(require_last_assistant=spec.purpose != "score", max_row_chars=self.max_row_chars)
        run = SplitRun(spec, self.sample_size, self.token_counter, self.max_seq_length)
        writer = FileWriter(jsonl) if jsonl is not None else None
        pq_writer: Any = None
        try:
            for chunk in prefetch(source.chunks(spec.name, self.batch_size)):
                lo, hi = chunk.start, chunk.start + len(chunk)
                if indices is None:
                    if lo >= keep:
                        break
                    rows = np.arange(lo, min(hi, keep))
                else:
                    rows = indices[np.searchsorted(indices, lo) : np.searchsorted(indices, hi)]
                    if len(rows) == 0:
                        if len(indices) == 0 or lo > indices[-1]:
                            break
                        continue
                out = self._process(select_rows(chunk, rows - lo), rows, rules, run)
                if out.num_rows == 0:
                    continue
                encoded = encode_jsonl(out)
                run.note_lines(encoded, seen)
                if writer is not None:
                    writer.write(encoded)
                if parquet is not None:
                    if pq_writer is None:
                        import pyarrow.parquet as pq

                        pq_writer = pq.ParquetWriter(parquet, out.schema)
                    pq_writer.write_batch(out)
            if parquet is not None and pq_writer is None:
                import pyarrow.parquet as pq

                pq.write_table(empty_table(run.columns), parquet)
        finally:
            if writer is not None:
                writer.close()
            if pq_writer is not None:
                pq_writer.close()
        seen[spec.name] = run.seen
        if run.duplicates:
            duplicates.append(
                Problem(
                    spec.name,
                    f"{run.duplicates} row(s) identical to an earlier row of the split (kept: each copy is trained "
                    "on, so it weighs double)",
                    "remove the copies from the source if they are not meant to weigh more",
                )
            )
        for name, count in run.in_earlier.items():
            duplicates.append(
                Problem(
                    spec.name,
                    f"{count} row(s) identical to rows of {name} (kept: a {spec.purpose} row that is also a "
                    f"{name} row measures what was memorised)",
                    f"keep {spec.name} and {name} apart in the source",
                )
            )
        return run.report(
            available,
            final,
            parquet_files.get(spec.name),
            writer.sha.hexdigest() if writer is not None else None,
            writer.bytes if writer is not None else 0,
        )

    def _process(self, selected: Chunk, rows: Any, rules: RowRules, run: SplitRun) -> pa.RecordBatch:
        run.rows_in += len(rows)
        batch = selected.arrow
        if batch is not None and is_canonical(batch.schema):
            if run.columns is None:
                run.columns = (*tuple(c for c in KEPT_COLUMNS if c in batch.schema.names), "messages")
            check = check_arrow(batch, rules)
            ok = check.ok
            if not ok.all():
                for i in np.flatnonzero(~ok):
                    reason = REASON_ORDER[check.rank[i]]
                    if run.reasons.get(reason, 0) < self.sample_size:
                        value = batch.slice(int(i), 1).to_pylist()[0]
                        found = check_row(value, rules)
                        detail = found[1] if isinstance(found, tuple) and found[0] == reason else reason.description
                        run.reject(int(rows[i]), reason, detail, None, value)
                    else:
                        run.reasons[reason] = run.reasons.get(reason, 0) + 1
            out = conform(to_output_batch(batch, ok), run.columns)
            run.accept(out, check.turns[ok], check.chars[ok], check.message_chars[ok[check.parent]])
            return out
        values = selected.rows if selected.rows is not None else (batch.to_pylist() if batch is not None else [])
        lines = selected.lines
        good: list[dict[str, Any]] = []
        good_rows: list[int] = []
        for j, value in enumerate(values):
            line = lines[j] if lines is not None else None
            if isinstance(value, Undecodable):
                run.reject(int(rows[j]), value.reason, value.detail, line, value.text)
                continue
            found = check_row(value, rules)
            if isinstance(found, tuple):
                run.reject(int(rows[j]), found[0], found[1], line, value)
            else:
                if run.columns is None:
                    run.columns = (*tuple(c for c in KEPT_COLUMNS if c in found), "messages")
                good.append(found)
                good_rows.append(int(rows[j]))
        out = self._from_python(good, good_rows, run)
        msgs = out.column("messages")
        flat_len = pc.utf8_length(pc.struct_field(pc.list_flatten(msgs), "content")).to_numpy()
        parent = pc.list_parent_indices(msgs).to_numpy()
        conv = np.bincount(parent, weights=flat_len, minlength=out.num_rows) if len(flat_len) else np.zeros(0)
        run.accept(out, pc.list_value_length(msgs).to_numpy(zero_copy_only=False), conv, flat_len)
        return out

    def _from_python(self, good: list[dict[str, Any]], good_rows: list[int], run: SplitRun) -> pa.RecordBatch:
        columns = run.columns or ("messages",)
        schema = pa.schema([OUTPUT_SCHEMA.field(c) for c in columns])
        try:
            return pa.RecordBatch.from_pylist(good, schema=schema)
        except (pa.ArrowException, UnicodeEncodeError):
            pass
        # Rare: text with lone surrogates (valid JSON escapes, not encodable as UTF-8). Find them one by one.
        kept = []
        for value, row in zip(good, good_rows, strict=True):
            try:
                pa.RecordBatch.from_pylist([value], schema=schema)
            except (pa.ArrowException, UnicodeEncodeError) as exc:
                run.reject(row, Reason.INVALID_UTF8, f"text not encodable as UTF-8 ({exc})", None, "")
                continue
            kept.append(value)
        return pa.RecordBatch.from_pylist(kept, schema=schema)
