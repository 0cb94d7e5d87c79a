"""Causal attention over packed sequences: each attends to itself only, with no mask built.

Training (:mod:`ftkit.backends.local.attention`) and serving (the continuous engine's prefill) both pack
examples into one row of tokens with their boundaries (``cu_seqlens``). On CUDA in half precision
:func:`varlen_attention` is PyTorch's flash attention over those boundaries (``torch.nn.attention.varlen``: no
compute on pairs of tokens from different examples; its keyword arguments moved between torch releases, and
:func:`varlen_kernel` says how this torch spells them); elsewhere, or where that kernel cannot do what is asked,
each example's slice goes through ``scaled_dot_product_attention`` on its own: the same function, slower.

torch is imported inside the function: importing this module stays light.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Iterable
from typing import Any

__all__ = ["flash_runs", "strided_ok", "varlen_attention", "varlen_kernel"]

_KERNEL: Any = None  # torch's varlen_attn and how to ask it for causal attention, once looked up


def varlen_kernel() -> tuple[Any, dict[str, Any], bool, bool] | None:
    """Return torch's ``varlen_attn`` and how to call it, or ``None`` where this torch has none.

    Returns:
        The function, the keyword arguments that make it causal (torch 2.9/2.10 spell it ``is_causal=True``,
        later versions ``window_size=(-1, 0)``), whether it takes ``scale`` and whether it takes ``enable_gqa``.
    """
    global _KERNEL  # looked up once per process
    if _KERNEL is None:
        try:
            from torch.nn.attention.varlen import varlen_attn
        except ImportError:
            _KERNEL = False
        else:
            params = inspect.signature(varlen_attn).parameters
            if "window_size" in params:
                _KERNEL = (varlen_attn, {"window_size": (-1, 0)}, "scale" in params, "enable_gqa" in params)
            elif "is_causal" in params:
                _KERNEL = (varlen_attn, {"is_causal": True}, "scale" in params, "enable_gqa" in params)
            else:
                _KERNEL = False
    return None if _KERNEL is False else _KERNEL


def flash_runs(device: Any, dtype: Any) -> bool:
    """Whether :func:`varlen_attention` runs flash attention here (else it attends example by example).

    Flash runs on CUDA in half precision, with a torch that has the kernel.
    """
    import torch

    return device.type == "cuda" and dtype in (torch.bfloat16, torch.float16) and varlen_kernel() is not None


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


def strided_ok(x: Any) -> bool:
    """Whether the flash kernel reads ``x`` (tokens, heads, dim) without a contiguous copy.

    A unit stride along the head dimension (``mha_varlen_fwd``/``bwd`` check it and take the row and head strides
    as parameters), and rows, heads and the start 16-byte aligned, as its vectorised loads need.
    """
    itemsize = x.element_size()
    aligned = (x.stride(0) * itemsize) % 16 == 0 and (x.stride(1) * itemsize) % 16 == 0
    return bool(x.stride(-1) == 1 and aligned and x.data_ptr() % 16 == 0)


def varlen_attention(
    query: Any,
    key: Any,
    value: Any,
    bounds: tuple[int, ...] | None,
    cu_seq_lens: Any,
    max_length: int | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    *,
    copy_kv: bool = True,
) -> Any:
    """Causal attention of each example of a packed row to itself, in the (tokens, heads, dim) layout.

    Args:
        query: (tokens, heads, head dim).
        key: (tokens, kv heads, head dim).
        value: (tokens, kv heads, head dim).
        bounds: The examples' boundaries on the host (``ftkit_bounds``), or ``None``.
        cu_seq_lens: The same boundaries as an int32 device tensor (``cu_seq_lens_q``), or ``None``.
        max_length: The longest example (``max_length_q``), or ``None`` to compute it from ``bounds``.
        scaling: Softmax scale (default: 1/sqrt(head dim)).
        dropout: Attention dropout probability.
        sliding_window: The layer's sliding window, if any.
        copy_kv: Make key and value contiguous before the flash kernel. The kernel reads any tensor whose last
            dimension has unit stride (its row and head strides are parameters: ``mha_varlen_fwd``/``bwd`` in
            PyTorch's ``flash_api.cpp`` check ``stride(-1) == 1`` only), so a caller that hands it views of a
            projection's output (a split of a fused qkv) passes ``False`` and saves the copies.

    Returns:
        The attention output as (tokens, heads, head dim).
    """
    import torch

    tokens, head_dim = query.shape[0], query.shape[2]
    scale = scaling if scaling is not None else 1 / math.sqrt(head_dim)
    bounds = tuple(bounds) if bounds else (0, tokens)
    max_len = int(max_length or max(b - a for a, b in itertools.pairwise(bounds)))
    window = sliding_window if sliding_window and sliding_window < max_len else None
    kernel = varlen_kernel() if flash_runs(query.device, query.dtype) else None
    if kernel is not None and not kernel[2] and not math.isclose(scale, 1 / math.sqrt(head_dim)):
        kernel = None  # an older varlen_attn without `scale` cannot do this layer's scale
    if kernel is not None and window is not None and "window_size" not in kernel[1]:
        kernel = None  # an older varlen_attn has no sliding window
    if kernel is None or dropout > 0:
        q, k, v = (x.transpose(0, 1)[None] for x in (query, key, value))  # (1, heads, tokens, dim)
        return _per_example(torch, q, k, v, bounds, scale, dropout, window)[0]
    fn, causal, has_scale, has_gqa = kernel
    cu = cu_seq_lens if cu_seq_lens is not None else torch.tensor(bounds, dtype=torch.int32, device=query.device)
    extra: dict[str, Any] = dict(causal)
    if window is not None:
        extra["window_size"] = (window - 1, 0)  # the key itself and window - 1 before it, as transformers' mask
    if has_scale:
        extra["scale"] = scale
    k, v = key, value
    if k.shape[1] != query.shape[1]:
        if has_gqa:
            extra["enable_gqa"] = True
        else:
            k = k.repeat_interleave(query.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(query.shape[1] // v.shape[1], dim=1)
    if copy_kv or not (strided_ok(k) and strided_ok(v)):
        k, v = k.contiguous(), v.contiguous()
    # the query contiguous: the kernel's output (and its gradient) takes the query's layout
    return fn(query.contiguous(), k, v, cu, cu, max_len, max_len, **extra)
