"""sha256_file: the right digest, read once per unchanged file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ftkit.hashing import sha256_file


def test_digest_and_change_detection(tmp_path: Path) -> None:
    """The digest is the file's SHA-256, and a changed file is hashed again."""
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"{}\n")
    assert sha256_file(path) == hashlib.sha256(b"{}\n").hexdigest()
    path.write_bytes(b'{"a": 1}\n')
    os.utime(path, ns=(1, 2))  # a distinct mtime even on coarse-grained file systems
    assert sha256_file(path) == hashlib.sha256(b'{"a": 1}\n').hexdigest()
