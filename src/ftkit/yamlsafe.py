"""Reading a job file's bytes and YAML with limits: hostile or broken input is one clear error, quickly.

A job file is small, hand-written UTF-8 YAML. Anything else gets a :class:`~ftkit.exceptions.JobFileError`
naming the file, the line and what to do, never a traceback or a hang:

* not a regular file (a device such as ``/dev/zero``, a FIFO), or larger than :data:`MAX_BYTES`;
* UTF-16/UTF-32 text (a byte-order mark), NUL bytes (a binary file), bytes that are not UTF-8
  (a UTF-8 byte-order mark is accepted and dropped);
* nesting deeper than :data:`MAX_DEPTH` (PyYAML's composer recurses once per level);
* aliases that expand to more than :data:`MAX_NODES` values ("billion laughs"), or an alias inside itself
  (aliases and merge keys within the cap work as YAML says);
* a key given twice in one mapping (YAML says keys are unique; PyYAML would keep the last one silently),
  including a whole section repeated at the top level: the error names both lines.
"""

from __future__ import annotations

import codecs
import stat
from pathlib import Path
from typing import Any

import yaml

from .exceptions import JobFileError, Problem

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "decode_text", "load_yaml", "read_text"]

MAX_BYTES = 1_048_576
"""The largest job file read (the example job files are about 2 KB)."""
MAX_DEPTH = 64
"""The deepest nesting of mappings and lists (a job file uses three levels)."""
MAX_NODES = 100_000
"""The most values a file may hold once its aliases are expanded."""

_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _fail(
    source: str, message: str, line: int | None = None, headline: str = "cannot read the job file"
) -> JobFileError:
    return JobFileError([Problem("", message, source=source, line=line)], headline)


def read_text(path: Path) -> str:
    """Read a job file: a regular file of at most :data:`MAX_BYTES`, decoded by :func:`decode_text`.

    Args:
        path: The file.

    Returns:
        Its text.

    Raises:
        JobFileError: Missing, unreadable, not a regular file, too large, or not UTF-8 text.
    """
    source = str(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            what = "a directory" if stat.S_ISDIR(info.st_mode) else "a device, FIFO or socket"
            raise _fail(source, f"is not a regular file ({what})", headline="cannot read the job file")
        with path.open("rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        reason = "no such file" if isinstance(exc, FileNotFoundError) else exc.strerror or str(exc)
        raise _fail(source, reason) from None
    if len(raw) > MAX_BYTES:
        raise _fail(source, f"is larger than {MAX_BYTES // 1024} KiB; a job file is a few KB of YAML")
    return decode_text(raw, source)


def decode_text(raw: bytes, source: str) -> str:
    """Decode a job file's bytes as UTF-8 (a UTF-8 byte-order mark is dropped).

    Args:
        raw: The bytes.
        source: The file, for messages.

    Returns:
        The text.

    Raises:
        JobFileError: UTF-16/UTF-32 (by its byte-order mark), a NUL byte, or bytes that are not UTF-8, with the line.
    """
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            raise _fail(
                source, f"is {encoding} text (it starts with a {encoding} byte-order mark); save it as UTF-8", 1
            )
    raw = raw.removeprefix(codecs.BOM_UTF8)
    nul = raw.find(b"\0")
    if nul >= 0:
        raise _fail(
            source,
            "contains a NUL byte: a binary file, or UTF-16/UTF-32 text? A job file is UTF-8 YAML",
            raw.count(b"\n", 0, nul) + 1,
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise _fail(
            source, f"is not UTF-8 text: byte 0x{raw[exc.start]:02x} cannot be decoded; save the file as UTF-8", line
        ) from None


def load_yaml(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    """Parse YAML within the limits, refusing duplicate keys; return the data and the document's node.

    Args:
        text: The YAML.
        source: The file, for messages.

    Returns:
        The data and the root node (``None`` for an empty document).

    Raises:
        JobFileError: Not YAML, too deep, too many values after alias expansion, or duplicate keys.
    """
    _check_depth(text, source)
    loader = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_expansion(node, source)
        duplicates = _duplicates(node, source)
        if duplicates:
            raise JobFileError(duplicates, f"{len(duplicates)} problem(s) in {source}")
        return loader.construct_document(node), node
    except JobFileError:
        raise
    except yaml.YAMLError as exc:
        raise _not_yaml(exc, text, source) from None
    except (ValueError, OverflowError) as exc:  # e.g. an integer of more than 4,300 digits
        raise _fail(
            source, f"not valid YAML: a value cannot be read ({exc})", headline="cannot parse the job file"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


def _not_yaml(exc: yaml.YAMLError, text: str, source: str) -> JobFileError:
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    reason = getattr(exc, "problem", None) or str(exc)
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        reason = f"character {exc.character!r} is not allowed in YAML ({exc.reason})"
    return _fail(source, f"not valid YAML: {reason}", line, headline="cannot parse the job file")


def _check_depth(text: str, source: str) -> None:
    """Strictly private: walk the parser's events (no recursion) and refuse nesting beyond :data:`MAX_DEPTH`."""
    loader = None
    try:
        loader = yaml.SafeLoader(text)
        depth = 0
        while loader.check_event():
            event = loader.get_event()  # type: ignore[no-untyped-call]
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise _fail(
                        source,
                        f"nested more than {MAX_DEPTH} levels deep; a job file needs three",
                        event.start_mark.line + 1 if event.start_mark is not None else None,
                        headline="cannot parse the job file",
                    )
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError as exc:
        raise _not_yaml(exc, text, source) from None
    finally:
        if loader is not None:
            loader.dispose()


def _check_expansion(root: yaml.Node, source: str) -> None:
    """Strictly private: count the values the document expands to (each shared node once per use), capped."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise _fail(source, "an alias refers to a value that contains it", node.start_mark.line + 1)
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        active.discard(key)
        if total > MAX_NODES:
            raise _fail(
                source,
                f"expands to more than {MAX_NODES:,} values (aliases repeated inside aliases); write the values out",
                node.start_mark.line + 1,
                headline="cannot parse the job file",
            )
        sizes[key] = total
        return total

    size(root)


def _duplicates(root: yaml.Node, source: str) -> list[Problem]:
    """Strictly private: every key given twice in one mapping (naming both lines), and every NUL character."""
    problems: list[Problem] = []
    seen: set[int] = set()

    def walk(node: yaml.Node, prefix: str) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode) and "\0" in str(node.value):
            # "\0" in a double-quoted string: no name, path or parameter may hold one (paths would raise).
            where = prefix.removesuffix(".")
            problems.append(
                Problem(where, "contains a NUL character (\\0)", "remove it", source, node.start_mark.line + 1)
            )
        if isinstance(node, yaml.SequenceNode):
            for index, child in enumerate(node.value):
                walk(child, f"{prefix}[{index}].")
        elif isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key_node, value_node in node.value:
                walk(key_node, prefix)
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                    name, line = str(key_node.value), key_node.start_mark.line + 1
                    if name in first:
                        problems.append(
                            Problem(
                                f"{prefix}{name}",
                                f"is given twice (lines {first[name]} and {line}); YAML keys must be unique",
                                "keep one of them",
                                source,
                                line,
                            )
                        )
                    else:
                        first[name] = line
                    walk(value_node, f"{prefix}{name}.")
                else:
                    walk(value_node, prefix)

    walk(root, "")
    return problems
