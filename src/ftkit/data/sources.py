"""Where chat rows come from: local parquet, local JSON Lines, in-memory rows, a Hugging Face dataset.

Every source yields the rows of one split in order, as :class:`Chunk` values of bounded size: Arrow batches
where the source is columnar (parquet, Hugging Face, Arrow tables), Python values otherwise (JSONL, lists).
:func:`open_source` picks the source for a ``data.source`` string.
"""

from __future__ import annotations

import abc
import codecs
import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import pyarrow as pa
import pyarrow.parquet as pq

from ..exceptions import DatasetValidationError, MissingDependencyError, Problem
from .reasons import Reason

__all__ = [
    "MAX_ROW_DEPTH",
    "ChatSource",
    "Chunk",
    "DataSourceError",
    "HubSource",
    "JsonlSource",
    "ParquetSource",
    "RowsSource",
    "Undecodable",
    "open_source",
]

_COLUMNS = ("prompt", "prompt_id", "messages")
MAX_ROW_DEPTH = 64
"""The deepest nesting of arrays and objects in one JSONL row (a chat row has three levels); deeper is rejected."""


class DataSourceError(DatasetValidationError):
    """The data source cannot be read: a missing file or split, a corrupt file, a dataset not in the cache."""


def _fail(source: str, message: str, suggestion: str | None = None) -> DataSourceError:
    return DataSourceError([Problem("", message, suggestion, source=source)], f"cannot read {source}")


@attrs.frozen
class Undecodable:
    """A JSONL line that is not a JSON value (it is rejected under ``reason``).

    Attributes:
        reason: ``invalid_utf8``, ``invalid_json`` or ``row_too_deep``.
        detail: The decoder's message.
        text: The start of the line.
    """

    reason: Reason
    detail: str
    text: str


@attrs.frozen
class Chunk:
    """Consecutive rows of one split.

    Attributes:
        start: The split's row number (0-based) of the first row.
        arrow: The rows as an Arrow batch, or ``None``.
        rows: The rows as Python values (an :class:`Undecodable` for a line that could not be decoded), or ``None``.
        lines: For JSONL, the 1-based line number of each row.
    """

    start: int
    arrow: pa.RecordBatch | None = None
    rows: Sequence[object] | None = None
    lines: Sequence[int] | None = None

    def __len__(self) -> int:
        if self.arrow is not None:
            return int(self.arrow.num_rows)
        return len(self.rows or ())


class ChatSource(abc.ABC):
    """Rows of named splits, read in bounded chunks."""

    #: Says what the source is, for reports and messages.
    description: str

    @abc.abstractmethod
    def splits(self) -> tuple[str, ...]:
        """The split names this source has."""

    @abc.abstractmethod
    def num_rows(self, split: str) -> int:
        """The number of rows of ``split``."""

    @abc.abstractmethod
    def chunks(self, split: str, batch_size: int) -> Iterator[Chunk]:
        """Yield the rows of ``split`` in order, at most ``batch_size`` per chunk."""

    def check_splits(self, wanted: Sequence[str]) -> None:
        """Raise :class:`DataSourceError` naming every split of ``wanted`` the source lacks."""
        have = self.splits()
        missing = [s for s in wanted if s not in have]
        if missing:
            raise DataSourceError(
                [
                    Problem(
                        s,
                        "no such split in the source",
                        f"available: {', '.join(have) or 'none'}; choose with --splits "
                        f"{','.join(have) or 'NAME'} (ftkit data build) or data.train_split / data.test_split / "
                        "data.score_split in the job file",
                    )
                    for s in missing
                ],
                f"{self.description} lacks {len(missing)} split(s)",
            )


class ParquetSource(ChatSource):
    """Local parquet files, one or more per split (read with ``pre_buffer=False`` to keep memory at a batch).

    Args:
        files: Split name -> its parquet files, in order.
    """

    def __init__(self, files: Mapping[str, Sequence[Path]]) -> None:
        self.files = {k: [Path(p) for p in v] for k, v in files.items()}
        self.description = ", ".join(str(p) for v in self.files.values() for p in v)

    def splits(self) -> tuple[str, ...]:  # noqa: D102 - documented on the base class
        return tuple(self.files)

    def _open(self, path: Path) -> pq.ParquetFile:
        try:
            # pre_buffer would read the whole file into memory before the first batch.
            return pq.ParquetFile(path, pre_buffer=False)
        except (OSError, pa.ArrowException) as exc:
            raise _fail(str(path), f"not a readable parquet file ({exc})") from exc

    def num_rows(self, split: str) -> int:  # noqa: D102
        return sum(self._open(p).metadata.num_rows for p in self.files[split])

    def chunks(self, split: str, batch_size: int) -> Iterator[Chunk]:  # noqa: D102
        start = 0
        for path in self.files[split]:
            pf = self._open(path)
            columns = [c for c in _COLUMNS if c in pf.schema_arrow.names]
            try:
                for batch in pf.iter_batches(batch_size=batch_size, columns=columns or None):
                    yield Chunk(start, arrow=batch)
                    start += batch.num_rows
            except (OSError, pa.ArrowException) as exc:
                raise _fail(str(path), f"reading failed near row {start} ({exc})") from exc


class JsonlSource(ChatSource):
    """Local JSON Lines files, one or more per split; every non-blank line is a row, decoded on its own.

    A line that is not valid UTF-8 or not valid JSON is a rejected row (not a failed build).

    Args:
        files: Split name -> its JSONL files, in order.
    """

    def __init__(self, files: Mapping[str, Sequence[Path]]) -> None:
        self.files = {k: [Path(p) for p in v] for k, v in files.items()}
        self.description = ", ".join(str(p) for v in self.files.values() for p in v)

    def splits(self) -> tuple[str, ...]:  # noqa: D102
        return tuple(self.files)

    def _lines(self, path: Path) -> Iterator[tuple[int, bytes]]:
        try:
            with path.open("rb") as f:
                for number, raw in enumerate(f, 1):
                    if number == 1:
                        raw = raw.removeprefix(codecs.BOM_UTF8)  # files saved on Windows often start with one
                    if raw.strip():
                        yield number, raw
        except OSError as exc:
            raise _fail(str(path), f"cannot read ({exc.strerror or exc})") from exc

    def num_rows(self, split: str) -> int:  # noqa: D102
        return sum(1 for p in self.files[split] for _ in self._lines(p))

    def chunks(self, split: str, batch_size: int) -> Iterator[Chunk]:  # noqa: D102
        start = 0
        for path in self.files[split]:
            rows: list[object] = []
            lines: list[int] = []
            for number, raw in self._lines(path):
                rows.append(_decode(raw))
                lines.append(number)
                if len(rows) == batch_size:
                    yield Chunk(start, rows=rows, lines=lines)
                    start += len(rows)
                    rows, lines = [], []
            if rows:
                yield Chunk(start, rows=rows, lines=lines)
                start += len(rows)


def _decode(raw: bytes) -> object:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Undecodable(Reason.INVALID_UTF8, str(exc), raw[:200].decode("utf-8", "replace"))
    try:
        row = json.loads(text)
    except ValueError as exc:
        return Undecodable(Reason.INVALID_JSON, str(exc), text[:200])
    except RecursionError:  # json recurses once per level: ~1,000 levels exhaust the stack
        return Undecodable(Reason.ROW_TOO_DEEP, "nested deeper than Python's recursion limit", text[:200])
    # A chat row nests three levels (row, messages, message); only a line with many brackets can go deep.
    if text.count("[") + text.count("{") > MAX_ROW_DEPTH and _depth(row) > MAX_ROW_DEPTH:
        return Undecodable(Reason.ROW_TOO_DEEP, f"nested more than {MAX_ROW_DEPTH} levels deep", text[:200])
    return row


def _depth(value: object) -> int:
    """Strictly private: how deeply lists and dicts nest in ``value`` (without recursion)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_ROW_DEPTH:
            break
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


class RowsSource(ChatSource):
    """Rows already in memory: per split a sequence of mappings, or an Arrow table.

    Args:
        rows: Split name -> rows.
    """

    description = "in-memory rows"

    def __init__(self, rows: Mapping[str, Sequence[object] | pa.Table]) -> None:
        self.rows = dict(rows)

    def splits(self) -> tuple[str, ...]:  # noqa: D102
        return tuple(self.rows)

    def num_rows(self, split: str) -> int:  # noqa: D102
        data = self.rows[split]
        return int(data.num_rows) if isinstance(data, pa.Table) else len(data)

    def chunks(self, split: str, batch_size: int) -> Iterator[Chunk]:  # noqa: D102
        data = self.rows[split]
        if isinstance(data, pa.Table):
            yield from _table_chunks(data, batch_size, 0)
            return
        for start in range(0, len(data), batch_size):
            yield Chunk(start, rows=list(data[start : start + batch_size]))


def _table_chunks(table: pa.Table, batch_size: int, start: int) -> Iterator[Chunk]:
    for batch in table.to_batches(max_chunksize=batch_size):
        if batch.num_rows:
            yield Chunk(start, arrow=batch)
            start += batch.num_rows


class HubSource(ChatSource):
    """A Hugging Face dataset through ``datasets.load_dataset``, one split at a time, from the local cache.

    ftkit never downloads a dataset: the load runs in the libraries' offline mode whatever the environment says,
    so a dataset that is not in the local cache (or a mistyped folder taken for a dataset id) fails at once
    instead of after retries against an unreachable Hub. A local dataset directory that ``load_dataset``
    understands works too. Any failure to load becomes a :class:`DataSourceError` that says so.

    Args:
        dataset: The dataset id (or a local dataset directory that ``load_dataset`` understands).
        subset: The configuration name, if any.
        cache_dir: The ``datasets`` cache directory (its default when ``None``).
    """

    def __init__(self, dataset: str, subset: str | None = None, cache_dir: str | None = None) -> None:
        self.dataset = dataset
        self.subset = subset
        self.cache_dir = cache_dir
        self.description = dataset if subset is None else f"{dataset} ({subset})"
        self._loaded: dict[str, Any] = {}

    def _load(self, split: str) -> Any:
        if split not in self._loaded:
            try:
                import datasets
            except ImportError as exc:  # pragma: no cover - a core dependency
                raise MissingDependencyError("datasets", "local") from exc
            try:
                with _offline(datasets):
                    self._loaded[split] = datasets.load_dataset(
                        self.dataset, self.subset, split=split, cache_dir=self.cache_dir
                    )
            except Exception as exc:  # datasets raises many unrelated types here; all mean "cannot load"
                local = Path(self.dataset).expanduser()
                missing = "" if local.exists() else f"no file or directory {local.absolute()}, and "
                raise _fail(
                    self.description,
                    f"{missing}datasets.load_dataset found no split {split!r} in the local Hugging Face cache "
                    f"({type(exc).__name__}: {exc})",
                    "check the path, or point data.source at local parquet/JSONL files; a Hub dataset must be in "
                    "the local cache first (ftkit never downloads one: download it where there is network, or copy "
                    "its cache)",
                ) from exc
        return self._loaded[split]

    def splits(self) -> tuple[str, ...]:  # noqa: D102
        return tuple(self._loaded)

    def check_splits(self, wanted: Sequence[str]) -> None:  # noqa: D102
        for split in wanted:
            self._load(split)

    def num_rows(self, split: str) -> int:  # noqa: D102
        return len(self._load(split))

    def chunks(self, split: str, batch_size: int) -> Iterator[Chunk]:  # noqa: D102
        ds = self._load(split)
        ds = ds.select_columns([c for c in _COLUMNS if c in ds.column_names] or ds.column_names)
        start = 0
        for table in ds.with_format("arrow").iter(batch_size=batch_size):
            for chunk in _table_chunks(table, batch_size, start):
                yield chunk
                start += len(chunk)


@contextlib.contextmanager
def _offline(datasets: Any) -> Iterator[None]:
    """Strictly private: run ``datasets`` and ``huggingface_hub`` in offline mode for the block.

    Both read ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` once, at import, into module constants that their
    calls consult; the constants are set for the block and restored after it.
    """
    import huggingface_hub.constants as hub

    targets = [(datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"), (hub, "HF_HUB_OFFLINE")]
    saved = [(module, name, getattr(module, name)) for module, name in targets if hasattr(module, name)]
    for module, name, _ in saved:
        setattr(module, name, True)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


_SUFFIXES: dict[str, type[ParquetSource] | type[JsonlSource]] = {
    ".parquet": ParquetSource,
    ".jsonl": JsonlSource,
    ".json": JsonlSource,
}


def open_source(
    source: str | os.PathLike[str] | Mapping[str, Sequence[object] | pa.Table] | ChatSource,
    splits: Sequence[str],
) -> ChatSource:
    """Return the source that ``source`` names and check it has ``splits``.

    Args:
        source: A :class:`ChatSource`; a mapping of split name -> rows; a local parquet/JSONL file (its split is
            the file's stem); a directory holding ``{split}.parquet`` / ``{split}.jsonl`` files,
            ``{split}/*.parquet`` or the Hub's ``data/{split}-*.parquet`` layout; else a Hugging Face dataset id.
        splits: The splits the build needs.

    Returns:
        The source.

    Raises:
        DataSourceError: A split is missing or the source cannot be opened.
    """
    if isinstance(source, ChatSource):
        opened = source
    elif isinstance(source, Mapping):
        opened = RowsSource(source)
    else:
        path = Path(source).expanduser()
        if path.is_file():
            cls = _SUFFIXES.get(path.suffix.lower())
            if cls is None:
                raise _fail(str(path), "unknown file type", "use .parquet, .jsonl or .json (JSON Lines)")
            name = path.stem if path.stem in splits or len(splits) != 1 else splits[0]
            opened = cls({name: [path]})
        elif path.is_dir():
            opened = _from_directory(path, splits)
        elif path.exists():  # /dev/zero, a FIFO: reading one would never end, or never start
            raise _fail(str(path), "is a device, FIFO or socket, not a data file", "give a parquet/JSONL file")
        elif os.fspath(source).startswith((".", "/", "~")) or path.suffix.lower() in _SUFFIXES:
            raise _fail(str(path), "no such file or directory")
        else:
            opened = HubSource(os.fspath(source))
    opened.check_splits(splits)
    return opened


def _from_directory(path: Path, splits: Sequence[str]) -> ChatSource:
    found: dict[str, tuple[type[ParquetSource] | type[JsonlSource], list[Path]]] = {}
    for split in splits:
        for suffix, cls in _SUFFIXES.items():
            candidates = [
                sorted(path.glob(f"{split}{suffix}")),
                sorted(path.glob(f"{split}/*{suffix}")),
                sorted(path.glob(f"data/{split}-*{suffix}")),
                sorted(path.glob(f"{split}-*{suffix}")),
            ]
            hit = next((c for c in candidates if c), None)
            if hit:
                found[split] = (cls, hit)
                break
    kinds = {cls for cls, _ in found.values()}
    if len(kinds) > 1:
        raise _fail(str(path), "mixes parquet and JSONL splits", "keep one format per source directory")
    if not found:
        raise _fail(
            str(path),
            f"no data files for splits {', '.join(splits)}",
            "expected {split}.parquet, {split}.jsonl, {split}/*.parquet or data/{split}-*.parquet",
        )
    cls = kinds.pop()
    source = cls({s: files for s, (_, files) in found.items()})
    source.description = str(path)
    return source
