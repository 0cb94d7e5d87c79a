"""Prefill of several prompts packed into one row of tokens: no padding, each prompt attending to itself only.

A padded prefill computes ``prompts x longest`` positions; at chat lengths (a median near 700 tokens and a tail to
the context) most of that is padding: a prefill of a 3,000-token prompt with seven of 700 computes 24,000 positions
for 7,900 real ones. Packed, the positions are the prompts' own, end to end, with their boundaries
(``cu_seqlens``); the attention is :func:`ftkit.flash_varlen.varlen_attention`, training's own: flash attention
over those boundaries on CUDA in half precision, elsewhere each prompt's slice through
``scaled_dot_product_attention`` on its own (the reference the tests compare with the padded prefill).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import attrs
import torch

from ....flash_varlen import varlen_attention

__all__ = ["Packing", "attend", "pack"]


@attrs.frozen
class Packing:
    """Where a packed prefill's tokens come from and go (every tensor on the decoder's device).

    Attributes:
        ids: The prompts' tokens end to end, ``[tokens]``.
        positions: Each token's position in its own prompt, ``[tokens]``.
        blocks: The KV block each token's keys and values are written to, ``[tokens]``.
        offsets: Its offset in that block, ``[tokens]``.
        last: Each prompt's last token in the row, ``[prompts]`` (its logits choose the first answer token).
        cu_seqlens: The prompts' boundaries, ``[prompts + 1]`` int32.
        bounds: The same boundaries on the host.
    """

    ids: torch.Tensor
    positions: torch.Tensor
    blocks: torch.Tensor
    offsets: torch.Tensor
    last: torch.Tensor
    cu_seqlens: torch.Tensor
    bounds: tuple[int, ...]

    @property
    def longest(self) -> int:
        """The longest prompt's length."""
        return max(b - a for a, b in itertools.pairwise(self.bounds))


def pack(
    prompts: Sequence[Sequence[int]],
    tables: torch.Tensor,
    block_size: int,
    upload: Callable[[torch.Tensor], torch.Tensor],
) -> Packing:
    """Lay prompts end to end with the cache cell of each of their positions.

    Args:
        prompts: Token ids of each prompt.
        tables: Each prompt's block table on the host (``[prompts, table width]``); it must cover the prompt.
        block_size: Positions per block.
        upload: Puts a host tensor on the decoder's device (:meth:`.slots.SlotDecoder.upload`: queued, not
            waiting for a decode step in flight).
    """
    lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    bounds = (0, *itertools.accumulate(int(n) for n in lengths))
    ids = torch.tensor([t for p in prompts for t in p], dtype=torch.long)
    row = torch.repeat_interleave(torch.arange(len(prompts)), lengths)
    positions = torch.arange(bounds[-1]) - torch.tensor(bounds[:-1], dtype=torch.long)[row]
    blocks = tables[row, positions // block_size].long()
    cu = torch.tensor(bounds, dtype=torch.int32)
    return Packing(
        ids=upload(ids),
        positions=upload(positions),
        blocks=upload(blocks),
        offsets=upload(positions % block_size),
        last=upload(torch.tensor(bounds[1:], dtype=torch.long) - 1),
        cu_seqlens=upload(cu),
        bounds=bounds,
    )


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing, scale: float) -> torch.Tensor:
    """Causal attention of each packed prompt to itself: ``q`` ``[tokens, heads, dim]``, ``k``/``v`` with KV heads.

    Returns:
        ``[tokens, heads * dim]``.
    """
    out = varlen_attention(q, k, v, packing.bounds, packing.cu_seqlens, packing.longest, scale)
    return out.reshape(q.shape[0], -1)  # type: ignore[no-any-return]
