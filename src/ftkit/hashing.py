"""Content hashes of data and model files, for lineage tags and content-addressed asset versions."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

__all__ = ["sha256_file"]


def sha256_file(path: Path) -> str:
    """Return the hex SHA-256 of a file's bytes, read in 1 MiB chunks (memory stays flat for large files).

    One run hashes the same data files in several places (the run record, the local backend's lineage tags,
    Azure's content-addressed uploads); the result is remembered per path, size and modification time, so
    each file is read once while it stays unchanged.
    """
    stat = path.stat()
    return _sha256(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:  # noqa: ARG001 - size and mtime are the cache key
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
