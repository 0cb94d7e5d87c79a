"""Chat rows to training tokens: assistant-only labels, packing without cross-example attention, a token cache.

- :mod:`.conversations`: one conversation to an :class:`Example` (labels on the assistant's tokens only),
  :func:`pack` (examples into one row, positions restarting per example), reading a JSONL file's rows;
- :mod:`.token_sets`: a whole file to an :class:`EncodedSet` (compact arrays, tokenised in parallel, cached on
  disk), and :func:`pack_arrays` (chosen examples straight from those arrays, with their boundaries).
"""

from __future__ import annotations

from .conversations import IGNORE_INDEX, EncodeReport, Example, PackedBatch, encode_conversation, pack, read_rows
from .token_sets import EncodedSet, PackedArrays, cache_key, encode_file, pack_arrays

__all__ = [
    "IGNORE_INDEX",
    "EncodeReport",
    "EncodedSet",
    "Example",
    "PackedArrays",
    "PackedBatch",
    "cache_key",
    "encode_conversation",
    "encode_file",
    "pack",
    "pack_arrays",
    "read_rows",
]
