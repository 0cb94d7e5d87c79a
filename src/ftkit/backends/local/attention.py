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

import itertools
import math
from collections.abc import Iterable
from typing import Any

from ...flash_varlen import varlen_kernel

__all__ = ["IMPLEMENTATION", "register", "varlen_kernel"]

IMPLEMENTATION = "ftkit_varlen"


def _repeat_kv(x: Any, times: int) -> Any:
    return x if times == 1 else x.repeat_interleave(times, dim=1)


def _per_example(
    torch: Any,
    query: Any,
    key: Any,
    value: Any,
    bounds: tuple[int, ...],
    scaling: float,
    dropout: float,
    window: int | None,
) -> Any:
    """Strictly private: attention of each example's slice on its own (query/key/value as (1, heads, T, dim))."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    key = _repeat_kv(key, query.shape[1] // key.shape[1])
    value = _repeat_kv(value, query.shape[1] // value.shape[1])
    sizes = [b - a for a, b in itertools.pairwise(bounds)]
    parts: Iterable[tuple[Any, Any, Any]]
    if bounds[0] == 0 and bounds[-1] == query.shape[2]:
        # split, not slices: its backward is one concatenation, where each slice's backward fills a zero tensor
        # of the whole row and adds them up (measured on a CPU: 6% of a step in zero fills alone)
        parts = zip(query.split(sizes, dim=2), key.split(sizes, dim=2), value.split(sizes, dim=2), strict=True)
    else:
        parts = ((query[:, :, a:b], key[:, :, a:b], value[:, :, a:b]) for a, b in itertools.pairwise(bounds))
    outs = []
    for q, k, v in parts:
        n = q.shape[2]
        if window is not None and n > window:
            i = torch.arange(n, device=query.device)
            # causal, and at most `window` tokens back (the key itself included), as transformers' own mask
            allowed = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)
            outs.append(sdpa(q, k, v, attn_mask=allowed, dropout_p=dropout, scale=scaling))
        else:
            outs.append(sdpa(q, k, v, is_causal=True, dropout_p=dropout, scale=scaling))
    return torch.cat(outs, dim=2).transpose(1, 2)


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
    import torch

    del attention_mask  # none is built: the boundaries say everything
    if query.shape[0] != 1:
        raise ValueError(f"{IMPLEMENTATION} attends over one packed row, got a batch of {query.shape[0]}")
    tokens, head_dim = query.shape[2], query.shape[3]
    scale = scaling if scaling is not None else 1 / math.sqrt(head_dim)
    bounds = kwargs.get("ftkit_bounds") or (0, tokens)
    max_len = int(kwargs.get("max_length_q") or max(b - a for a, b in itertools.pairwise(bounds)))
    window = sliding_window if sliding_window and sliding_window < max_len else None
    kernel = varlen_kernel() if query.is_cuda and query.dtype in (torch.bfloat16, torch.float16) else None
    if kernel is not None and not kernel[2] and not math.isclose(scale, 1 / math.sqrt(head_dim)):
        kernel = None  # an older varlen_attn without `scale` cannot do this layer's scale
    if kernel is not None and window is not None and "window_size" not in kernel[1]:
        kernel = None  # an older varlen_attn has no sliding window
    if kernel is None or dropout > 0:
        return _per_example(torch, query, key, value, tuple(bounds), scale, dropout, window), None
    fn, causal, has_scale, has_gqa = kernel
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        cu = torch.tensor(bounds, dtype=torch.int32, device=query.device)
    extra: dict[str, Any] = dict(causal)
    if window is not None:
        extra["window_size"] = (window - 1, 0)  # the key itself and window - 1 before it, as transformers' mask
    if has_scale:
        extra["scale"] = scale
    q = query[0].transpose(0, 1)  # (tokens, heads, dim); the projections' layout, so usually no copy
    k, v = key[0].transpose(0, 1), value[0].transpose(0, 1)
    if k.shape[1] != q.shape[1]:
        if has_gqa:
            extra["enable_gqa"] = True
        else:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    out = fn(q.contiguous(), k.contiguous(), v.contiguous(), cu, cu, max_len, max_len, **extra)
    return out.unsqueeze(0), None


def register() -> str:
    """Register :func:`varlen_attention_forward` with transformers (idempotent) and return its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(IMPLEMENTATION, varlen_attention_forward)
    return IMPLEMENTATION
