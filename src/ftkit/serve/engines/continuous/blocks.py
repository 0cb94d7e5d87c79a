"""The paged KV cache's bookkeeping: a pool of fixed-size blocks, handed to requests as they grow.

The cache of every layer is ``[blocks + 1, block_size, kv_heads, head_dim]``: a request's positions live in the
blocks of its *block table* (position ``p`` in block ``table[p // block_size]`` at offset ``p % block_size``),
taken from a free list as the request grows and given back when it ends, so the memory in use follows the real
lengths of the requests in flight rather than ``rows x context``. The block past the pool's last (index
``blocks``) is the *trash block*: rows that hold no request and a prefill's padding write there, and nobody reads
it.

:class:`BlockPool` is plain Python (no torch): the continuous engine (:mod:`.engine`) owns one and decides who
gets blocks; the decoder (:mod:`.slots`) only mirrors the tables onto the device.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

__all__ = ["BlockPool", "blocks_for"]


def blocks_for(tokens: int, block_size: int) -> int:
    """Blocks that hold ``tokens`` positions."""
    return -(-max(0, tokens) // block_size)


class BlockPool:
    """A free list of ``blocks`` KV-cache blocks of ``block_size`` positions each.

    Args:
        blocks: Blocks in the pool (the trash block is not one of them).
        block_size: Positions per block.

    Raises:
        ValueError: A pool of no blocks or a block of no positions.
    """

    def __init__(self, blocks: int, block_size: int) -> None:
        if blocks < 1 or block_size < 1:
            raise ValueError(f"a block pool needs blocks and positions per block, not {blocks} x {block_size}")
        self.blocks = blocks
        self.block_size = block_size
        self._free = list(range(blocks))  # a heap: low blocks first keeps the pages in use together
        self._taken: set[int] = set()

    @property
    def trash(self) -> int:
        """The block that padding and idle rows write into (never handed out)."""
        return self.blocks

    @property
    def free(self) -> int:
        """Blocks free now."""
        return len(self._free)

    @property
    def used(self) -> int:
        """Blocks held by requests now."""
        return len(self._taken)

    @property
    def tokens(self) -> int:
        """Positions the whole pool holds."""
        return self.blocks * self.block_size

    def needed(self, tokens: int) -> int:
        """Blocks that hold ``tokens`` positions."""
        return blocks_for(tokens, self.block_size)

    def take(self, count: int) -> list[int] | None:
        """Take ``count`` blocks, or none at all (``None``) when fewer are free."""
        if count > len(self._free):
            return None
        taken = [heapq.heappop(self._free) for _ in range(max(0, count))]
        self._taken.update(taken)
        return taken

    def give_back(self, blocks: Sequence[int]) -> None:
        """Return a request's blocks to the pool.

        Raises:
            ValueError: A block that is not held (given back twice, or never taken): the tables would be corrupt.
        """
        stray = [b for b in blocks if b not in self._taken]
        if stray or len(set(blocks)) < len(blocks):
            stray = stray or sorted({b for b in blocks if list(blocks).count(b) > 1})
            raise ValueError(f"blocks {stray} are not held by any request")
        for block in blocks:
            self._taken.discard(block)
            heapq.heappush(self._free, block)
