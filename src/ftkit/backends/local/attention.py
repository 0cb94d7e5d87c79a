"""Variable-length attention over packed rows: each example attends to itself only, with no mask built.

Registered with transformers as the attention implementation ``ftkit_varlen`` (:func:`register`). A packed row's
example boundaries come in through the forward call's keyword arguments (transformers passes them down to every
attention layer): ``cu_seq_lens_q`` (a device tensor of boundaries), ``max_length_q`` (the longest example, a
host int, so no kernel launch has to wait for the device) and ``ftkit_bounds`` (the same boundaries as a tuple).

On CUDA the kernel is PyTorch's own ``torch.nn.attention.varlen.varlen_attn`` (:mod:`ftkit.flash_varlen`:
flash attention over ``cu_seqlens``): no block-diagonal mask, no compute on pairs of tokens from different
examples. Elsewhere, or where that kernel cannot do what the layer asks (attention dropout, a sliding window
shorter than an example, an older torch), each example runs through ``scaled_dot_product_attention`` on its own
slice: the same function, slower. Without boundaries (a plain forward call: generation, a test) the row is one
causal sequence.

torch is imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

from typing import Any

from ...flash_varlen import varlen_attention, varlen_kernel

__all__ = ["IMPLEMENTATION", "register", "varlen_attention", "varlen_kernel"]

IMPLEMENTATION = "ftkit_varlen"


def varlen_attention_forward(
    module: Any,  # noqa: ARG001 - part of that signature
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """The attention function transformers calls per layer (its ``AttentionInterface`` signature).

    Args:
        module: The attention layer.
        query: (1, heads, tokens, head dim).
        key: (1, kv heads, tokens, head dim).
        value: (1, kv heads, tokens, head dim).
        attention_mask: Ignored (transformers builds none for this implementation).
        dropout: Attention dropout probability.
        scaling: Softmax scale (default: 1/sqrt(head dim)).
        sliding_window: The model's sliding window, if any.
        **kwargs: ``cu_seq_lens_q``, ``max_length_q`` and ``ftkit_bounds`` for a packed row.

    Returns:
        The attention output as (1, tokens, heads, head dim), and no weights.
    """
    del attention_mask  # none is built: the boundaries say everything
    if query.shape[0] != 1:
        raise ValueError(f"{IMPLEMENTATION} attends over one packed row, got a batch of {query.shape[0]}")
    # (tokens, heads, dim): the projections' layout, so usually no copy
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))
    out = varlen_attention(
        q,
        k,
        v,
        kwargs.get("ftkit_bounds"),
        kwargs.get("cu_seq_lens_q"),
        kwargs.get("max_length_q"),
        scaling,
        dropout,
        sliding_window,
    )
    return out.unsqueeze(0), None


def register() -> str:
    """Register :func:`varlen_attention_forward` with transformers (idempotent) and return its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(IMPLEMENTATION, varlen_attention_forward)
    return IMPLEMENTATION
