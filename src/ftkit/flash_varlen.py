"""PyTorch's flash attention over packed sequences (``torch.nn.attention.varlen``), looked up once.

Training (:mod:`ftkit.backends.local.attention`) and serving (the continuous engine's prefill) both pack
examples into one row of tokens with their boundaries (``cu_seqlens``) and attend each to itself only, with no
mask built and no compute on pairs of tokens from different examples. The function's keyword arguments moved
between torch releases; :func:`varlen_kernel` says how this torch spells them.

torch is imported inside the function: importing this module stays light.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["varlen_kernel"]

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
