"""The training loss from hidden states: cross-entropy of the output head at the label positions only.

The stock path computes logits for every token of a row, casts them to float32 and then ignores the ones
without a label: for a 32k vocabulary that is 128 KB of float32 per token (a 16k-token micro-batch: 2 GiB, and
again for its gradient). Here only the positions whose next token is a label go through the head, a chunk at a
time, and each chunk's logits are recomputed in the backward pass instead of being kept (or, with liger-kernel on
CUDA, a fused kernel computes loss and gradients without materialising the logits at all). The value is the same
sum of float32 cross-entropies as the stock path's.

torch is imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CHUNK_ROWS", "fused_kernel", "label_cross_entropy"]

# Rows of logits computed at once: 4096 x a 32k vocabulary is 512 MiB of float32.
CHUNK_ROWS = 4096
# Below this many logits, keeping them costs less than recomputing them.
_RECOMPUTE_ABOVE = 1 << 24


def fused_kernel() -> Any:
    """liger-kernel's fused linear cross-entropy, or ``None`` when liger-kernel is not installed."""
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError:
        return None
    return liger_fused_linear_cross_entropy


def _chunk_loss(hidden: Any, weight: Any, bias: Any, targets: Any) -> Any:
    import torch

    logits = torch.nn.functional.linear(hidden, weight, bias)
    return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")


def label_cross_entropy(hidden: Any, head: Any, targets: Any, *, fused: bool = False) -> Any:
    """Summed cross-entropy of ``head(hidden)`` against ``targets``.

    Args:
        hidden: Hidden states at the label positions, (labels, hidden size).
        head: The output head (a ``torch.nn.Linear``; its weight may be frozen or trained).
        targets: The labels, (labels,).
        fused: Use liger-kernel's fused kernel (CUDA, liger-kernel installed).

    Returns:
        A float32 scalar: the sum over the labels (divide by the step's label count for the mean).
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    weight, bias = head.weight, head.bias
    if fused:
        kernel = fused_kernel()
        if kernel is not None:
            return kernel(hidden, weight, targets, bias, reduction="sum").float()
    rows = hidden.shape[0]
    if rows == 0:
        return hidden.sum() * 0.0  # keeps the graph: a micro-batch without labels still backpropagates
    recompute = torch.is_grad_enabled() and rows * weight.shape[0] > _RECOMPUTE_ABOVE
    total = None
    for a in range(0, rows, CHUNK_ROWS):
        h, t = hidden[a : a + CHUNK_ROWS], targets[a : a + CHUNK_ROWS]
        part = (
            checkpoint(_chunk_loss, h, weight, bias, t, use_reentrant=False)
            if recompute
            else _chunk_loss(h, weight, bias, t)
        )
        total = part if total is None else total + part
    return total
