"""A decoder layer's attention residual add and the MLP's RMSNorm in one pass (liger-kernel's fused kernel).

A Llama-family decoder layer adds the attention output to the residual stream and normalises the sum for the
MLP: an element-wise add (reading two hidden-sized tensors, writing one) and an RMSNorm that reads the sum back;
in the backward the residual stream's gradient is the sum of two more (another add). liger-kernel's fused add +
RMSNorm does both in one kernel each way (its backward adds the residual's gradient as it writes the input's), so
:func:`install` gives each eligible layer a forward that calls it where the stock one calls ``residual + hidden``
and then the norm. The layer's other add (the MLP's output into the residual) stays: fusing it needs the next
layer's norm, i.e. a forward for the whole decoder stack.

Eligible: a layer of :data:`SUPPORTED` whose ``post_attention_layernorm`` is liger-kernel's RMSNorm (installed
by the loop on CUDA, see :mod:`.model_setup`) and whose residual dropouts, where it has them (Phi-3), drop
nothing. ``TUNING["fused_add_norm"]``; tested against the stock layer on a GPU (the kernel is liger-kernel's
Triton code, which CI's CPU-only torch cannot run) and, with the reference in place of the kernel, on the CPU.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

__all__ = ["SUPPORTED", "install", "kernel", "reference"]

# decoder layers with the Llama order: norm, attention, add, norm, MLP, add
SUPPORTED = frozenset(
    {"LlamaDecoderLayer", "Phi3DecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer"}
)
# liger-kernel patches each norm instance (its forward, and the name the module reports), not its class
_NORM = "LigerRMSNorm"

# (hidden, residual, norm module) -> (normalised sum, sum)
AddNorm = Callable[[Any, Any, Any], tuple[Any, Any]]


def reference(hidden: Any, residual: Any, norm: Any) -> tuple[Any, Any]:
    """What the stock layer computes: the sum, and ``norm`` of it."""
    total = residual + hidden
    return norm(total), total


def kernel() -> AddNorm | None:
    """liger-kernel's fused add + RMSNorm as an :data:`AddNorm`, or ``None`` where liger-kernel lacks it."""
    try:
        from liger_kernel.transformers.functional import liger_fused_add_rms_norm
    except ImportError:  # not installed, or a liger-kernel from before the fused kernel
        return None

    def fused(hidden: Any, residual: Any, norm: Any) -> tuple[Any, Any]:
        # the norm's settings are the ones liger's instance patch gave it (epsilon, offset, casting, in place)
        return liger_fused_add_rms_norm(  # type: ignore[no-any-return]
            hidden, residual, norm.weight, norm.variance_epsilon, norm.offset, norm.casting_mode, norm.in_place
        )

    return fused


def _eligible(layer: Any) -> bool:
    """Strictly private: a supported layer with liger's RMSNorm after attention and no residual dropout."""
    if type(layer).__name__ not in SUPPORTED or layer.post_attention_layernorm._get_name() != _NORM:
        return False
    dropouts = [getattr(layer, name, None) for name in ("resid_attn_dropout", "resid_mlp_dropout")]
    return all(d is None or float(getattr(d, "p", 0.0)) == 0.0 for d in dropouts)


def _make_forward(add_norm: AddNorm) -> Callable[..., Any]:
    """Strictly private: the Llama-order layer forward with the first add and the second norm fused."""

    def forward(module: Any, hidden_states: Any, **kwargs: Any) -> Any:
        residual = hidden_states
        attended, _ = module.self_attn(hidden_states=module.input_layernorm(hidden_states), **kwargs)
        hidden, residual = add_norm(attended, residual, module.post_attention_layernorm)
        return residual + module.mlp(hidden)

    forward.ftkit_add_norm = True  # type: ignore[attr-defined]  # install() recognises its own forward
    return forward


def install(model: Any, add_norm: AddNorm | None = None) -> int:
    """Give each eligible decoder layer of ``model`` the fused forward; return how many.

    Args:
        model: A transformers causal LM (or a peft model around one), liger-kernel's RMSNorm already applied.
        add_norm: The fused add + norm (default: :func:`kernel`); nothing is installed where it is ``None``.
    """
    add_norm = add_norm or kernel()
    if add_norm is None:
        return 0
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    forward = _make_forward(add_norm)
    count = 0
    for layer in base.modules():
        if not _eligible(layer) or getattr(getattr(layer.forward, "__func__", None), "ftkit_add_norm", False):
            continue
        layer.forward = types.MethodType(forward, layer)
        count += 1
    return count
