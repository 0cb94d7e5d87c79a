"""A data file's tokens kept compactly, cached on disk, and packed straight from its arrays.

:func:`encode_file` keeps a file's tokens compactly (:class:`EncodedSet`: one int32 array of tokens, one byte of
assistant mask per token and the examples' offsets, about 5 bytes a token), tokenises in parallel on all cores
for large files, and caches the result on disk keyed by the tokenizer, its chat template, the data file's hash
and the maximum length (:func:`cache_key`), so a repeated or resumed run reads arrays instead of tokenising
again. :func:`pack_arrays` packs chosen examples of a set straight from those arrays, with the document
boundaries the variable-length attention path needs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, overload

import attrs
import numpy as np

from ....exceptions import Problem, ValidationError
from ....hashing import sha256_file
from .conversations import IGNORE_INDEX, EncodeReport, Example, encode_conversation, line_chunks, parse_line

__all__ = ["EncodedSet", "PackedArrays", "cache_key", "encode_file", "pack_arrays"]

_ENCODER_VERSION = 1
# Below this many rows, tokenising in worker processes costs more than it saves.
_PARALLEL_MIN_ROWS = 2048
_CHUNK_ROWS = 512


class EncodedSet:
    """A file's tokenised conversations, stored compactly as arrays (about 5 bytes a token).

    Indexing gives an :class:`Example`; :func:`pack_arrays` packs straight from the arrays.

    Attributes:
        tokens: Every example's tokens, concatenated (int32).
        assistant: 1 where a token is an assistant token (it carries loss), else 0 (uint8, beside ``tokens``).
        offsets: Where each example starts in ``tokens``, and the end (int64, one longer than the set).
    """

    def __init__(self, tokens: np.ndarray, assistant: np.ndarray, offsets: np.ndarray) -> None:
        self.tokens = tokens
        self.assistant = assistant
        self.offsets = offsets

    @classmethod
    def from_examples(cls, examples: Iterable[Example]) -> EncodedSet:
        """Store examples as arrays."""
        items = list(examples)
        lengths = np.array([len(e.input_ids) for e in items], dtype=np.int64)
        offsets = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = np.fromiter((t for e in items for t in e.input_ids), dtype=np.int32, count=int(offsets[-1]))
        mask = np.fromiter((x != IGNORE_INDEX for e in items for x in e.labels), dtype=np.uint8, count=int(offsets[-1]))
        return cls(tokens, mask, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Tokens of each example."""
        return np.diff(self.offsets)

    @property
    def nbytes(self) -> int:
        """Bytes the arrays take."""
        return int(self.tokens.nbytes + self.assistant.nbytes + self.offsets.nbytes)

    def example(self, i: int) -> Example:
        """The ``i``-th example as tuples."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        ids = self.tokens[a:b].tolist()
        keep = self.assistant[a:b].tolist()
        return Example(tuple(ids), tuple(t if m else IGNORE_INDEX for t, m in zip(ids, keep, strict=True)))

    @overload
    def __getitem__(self, index: int) -> Example: ...

    @overload
    def __getitem__(self, index: slice) -> list[Example]: ...

    def __getitem__(self, index: int | slice) -> Example | list[Example]:
        if isinstance(index, slice):
            return [self.example(i) for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return self.example(index % len(self))

    def __iter__(self) -> Iterator[Example]:
        return (self.example(i) for i in range(len(self)))

    def select(self, indices: Sequence[int]) -> EncodedSet:
        """A new set of the chosen examples, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        lengths = self.lengths[idx]
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        spans = [np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx]
        where = np.concatenate(spans) if spans else np.zeros(0, dtype=np.int64)
        return EncodedSet(self.tokens[where], self.assistant[where], offsets)


@attrs.frozen(eq=False)
class PackedArrays:
    """Examples packed into one row, as numpy arrays, with what the loss and the attention kernels need.

    Attributes:
        input_ids: The row's tokens (int64).
        position_ids: Positions, restarting at 0 at every example (int64).
        loss_positions: Indices ``t`` whose next token ``t + 1`` is a label (int64): the loss reads the hidden
            state at ``t`` and predicts ``targets``. An example's first token is never a target.
        targets: The label at ``t + 1`` for each loss position (int64).
        cu_seqlens: Example boundaries (0, end of the first, ..., total) (int32), for variable-length attention.
        max_seqlen: The longest example in the row.
        num_examples: Examples in the row.
    """

    input_ids: np.ndarray
    position_ids: np.ndarray
    loss_positions: np.ndarray
    targets: np.ndarray
    cu_seqlens: np.ndarray
    max_seqlen: int
    num_examples: int

    @property
    def num_tokens(self) -> int:
        """Tokens in the row."""
        return len(self.input_ids)

    @property
    def num_labels(self) -> int:
        """Tokens that carry loss."""
        return len(self.targets)


def pack_arrays(data: EncodedSet, indices: Sequence[int]) -> PackedArrays:
    """Pack the chosen examples of ``data`` into one row (no padding), straight from the arrays.

    Args:
        data: The encoded set.
        indices: Which examples, in order.

    Returns:
        The packed row; it carries the same tokens, positions and labels as :func:`pack` of those examples.
    """
    idx = np.asarray(indices, dtype=np.int64)
    starts, ends = data.offsets[idx], data.offsets[idx + 1]
    lengths = ends - starts
    cu = np.zeros(len(idx) + 1, dtype=np.int64)
    np.cumsum(lengths, out=cu[1:])
    total = int(cu[-1])
    # Gather each example's span: index = its start in the set + (position in the row - its start in the row).
    owner = np.repeat(np.arange(len(idx)), lengths)
    row_pos = np.arange(total, dtype=np.int64) - cu[:-1][owner]
    where = starts[owner] + row_pos
    ids = data.tokens[where].astype(np.int64)
    is_label = data.assistant[where].astype(bool)
    is_label[cu[:-1]] = False  # never predict an example's first token from the example before
    loss_positions = np.flatnonzero(is_label[1:])
    return PackedArrays(
        input_ids=ids,
        position_ids=row_pos,
        loss_positions=loss_positions,
        targets=ids[loss_positions + 1],
        cu_seqlens=cu.astype(np.int32),
        max_seqlen=int(lengths.max()) if len(lengths) else 0,
        num_examples=len(idx),
    )


@attrs.frozen
class _Part:
    """Strictly private: one chunk's encoding and counts."""

    tokens: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray
    rows: int
    bad: int
    empty: int
    truncated: int


def _encode_lines(tokenizer: Any, lines: Sequence[str], max_seq_length: int) -> _Part:
    """Strictly private: parse and tokenise raw JSONL lines into arrays."""
    ids: list[int] = []
    mask: list[bool] = []
    lengths: list[int] = []
    bad = empty = truncated = 0
    for line in lines:
        messages = parse_line(line)
        if messages is None:
            bad += 1
            continue
        ex = encode_conversation(tokenizer, messages, max_seq_length)
        if ex is None:
            empty += 1
            continue
        if len(ex.input_ids) == max_seq_length:
            truncated += 1
        ids.extend(ex.input_ids)
        mask.extend(x != IGNORE_INDEX for x in ex.labels)
        lengths.append(len(ex.input_ids))
    return _Part(
        np.asarray(ids, dtype=np.int32),
        np.asarray(mask, dtype=np.uint8),
        np.asarray(lengths, dtype=np.int64),
        len(lines),
        bad,
        empty,
        truncated,
    )


_WORKER_TOKENIZER: Any = None


def _init_worker(tokenizer: Any) -> None:
    global _WORKER_TOKENIZER  # one tokenizer per worker process, set once at its start
    _WORKER_TOKENIZER = tokenizer


def _encode_chunk(lines: Sequence[str], max_seq_length: int) -> _Part:
    return _encode_lines(_WORKER_TOKENIZER, lines, max_seq_length)


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _parallel_parts(tokenizer: Any, chunks: Iterator[list[str]], max_seq_length: int, workers: int) -> list[_Part]:
    import multiprocessing

    # fork: the workers inherit the loaded tokenizer instead of importing transformers and loading it each.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    parts: list[_Part] = []
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context(method),
        initializer=_init_worker,
        initargs=(tokenizer,),
    ) as pool:
        # A bounded window of chunks in flight, results taken in order: memory stays at a few chunks of lines
        # plus the arrays, never the whole file as Python objects.
        pending: deque[Future[_Part]] = deque()
        for chunk in chunks:
            pending.append(pool.submit(_encode_chunk, chunk, max_seq_length))
            if len(pending) >= 2 * workers:
                parts.append(pending.popleft().result())
        parts.extend(f.result() for f in pending)
    return parts


def _encode_all(tokenizer: Any, path: str | Path, max_seq_length: int, workers: int) -> tuple[EncodedSet, _Part]:
    """Strictly private: the file's encoding, and its totals (as a part without arrays)."""
    chunks = line_chunks(path, _CHUNK_ROWS)
    first = list(itertools.islice(chunks, _PARALLEL_MIN_ROWS // _CHUNK_ROWS))
    rest = next(chunks, None)
    every = itertools.chain(first, [rest] if rest is not None else [], chunks)
    if workers > 1 and rest is not None:
        parts = _parallel_parts(tokenizer, every, max_seq_length, workers)
    else:  # a small file (or one worker): worker processes would cost more than they save
        parts = [_encode_lines(tokenizer, chunk, max_seq_length) for chunk in every]
    empty_i32, empty_u8, empty_i64 = np.zeros(0, np.int32), np.zeros(0, np.uint8), np.zeros(0, np.int64)
    tokens = np.concatenate([empty_i32, *(p.tokens for p in parts)])
    mask = np.concatenate([empty_u8, *(p.mask for p in parts)])
    lengths = np.concatenate([empty_i64, *(p.lengths for p in parts)])
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    totals = _Part(
        empty_i32,
        empty_u8,
        empty_i64,
        sum(p.rows for p in parts),
        sum(p.bad for p in parts),
        sum(p.empty for p in parts),
        sum(p.truncated for p in parts),
    )
    return EncodedSet(tokens, mask, offsets), totals


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    """Strictly private: what decides the tokens: the vocabulary/merges/normaliser, special tokens, template."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:  # a slow tokenizer: its vocabulary
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(repr(sorted(getattr(tokenizer, "special_tokens_map", {}).items())).encode())
    digest.update(str(getattr(tokenizer, "chat_template", "")).encode())
    digest.update(type(tokenizer).__name__.encode())
    return digest.hexdigest()


def cache_key(tokenizer: Any, path: str | Path, max_seq_length: int) -> str:
    """The key of a file's encoding in the token cache: tokenizer and template, data hash, max length.

    Args:
        tokenizer: The tokenizer.
        path: The data file.
        max_seq_length: Longest sequence kept.

    Returns:
        A hex digest.
    """
    parts = [str(_ENCODER_VERSION), _tokenizer_fingerprint(tokenizer), sha256_file(Path(path)), str(max_seq_length)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _load_cached(folder: Path) -> tuple[EncodedSet, EncodeReport] | None:
    if not (folder / "report.json").is_file():
        return None
    try:
        report = EncodeReport(**json.loads((folder / "report.json").read_text(encoding="utf-8")))
        # Memory-mapped: a large set costs page cache, not process memory.
        data = EncodedSet(
            np.load(folder / "tokens.npy", mmap_mode="r"),
            np.load(folder / "assistant.npy", mmap_mode="r"),
            np.load(folder / "offsets.npy"),
        )
    except (OSError, ValueError, TypeError):
        return None  # a damaged entry: tokenise again and replace it
    return data, report


def _store(folder: Path, data: EncodedSet, report: EncodeReport) -> None:
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        np.save(tmp / "tokens.npy", data.tokens)
        np.save(tmp / "assistant.npy", data.assistant)
        np.save(tmp / "offsets.npy", data.offsets)
        (tmp / "report.json").write_text(json.dumps(attrs.asdict(report)), encoding="utf-8")  # last: complete
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # a cache that cannot be written only costs the next run time


def encode_file(
    tokenizer: Any,
    path: str | Path,
    max_seq_length: int,
    *,
    workers: int | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[EncodedSet, EncodeReport]:
    """Read and tokenise a JSONL chat file, in parallel, through an on-disk cache.

    Args:
        tokenizer: The model's tokenizer.
        path: The file (the component's format: one ``{"messages": [...]}`` object per line).
        max_seq_length: Longest sequence kept.
        workers: Processes to tokenise with (default: every core this process may use); large files only.
        cache_dir: Where encodings are cached (``None``: no cache). An entry is keyed by the tokenizer and its
            chat template, the file's content hash and ``max_seq_length``.

    Returns:
        The examples (compact arrays; index it for :class:`Example` values) and a report of what was dropped.

    Raises:
        ValidationError: The file cannot be read, or no row is usable.
    """
    folder = Path(cache_dir) / cache_key(tokenizer, path, max_seq_length) if cache_dir is not None else None
    cached = _load_cached(folder) if folder is not None else None
    if cached is not None:
        data, report = cached
    else:
        data, n = _encode_all(tokenizer, path, max_seq_length, workers or _default_workers())
        report = EncodeReport(n.rows, len(data), n.bad, n.empty, n.truncated)
        if folder is not None and len(data):
            _store(folder, data, report)
    if not len(data):
        raise ValidationError(
            [
                Problem(
                    "data",
                    f"{path}: no usable conversation ({report.unreadable} unreadable, "
                    f"{report.no_assistant_tokens} without assistant tokens)",
                    "check the file is the component's JSONL format with assistant messages",
                )
            ],
            "no training data",
        )
    return data, report
