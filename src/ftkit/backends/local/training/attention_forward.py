"""ftkit's own attention-layer forward for training on the Llama family: split, not sliced, and no layout copies.

transformers' ``Phi3Attention`` slices its fused qkv projection's output (``qkv[..., :query_pos]`` and so on):
each slice's backward fills a zero tensor of the whole projection output and the three are summed (on
Phi-3-mini's shape, part of the 17% of GPU time spent in copies). :func:`install` gives each eligible attention
layer a forward that splits with ``torch.split`` (backward: one concatenation), rotates q and k with the model's
``apply_rotary_pos_emb`` as the stock forward does (liger-kernel's when it patched it), and calls
:func:`..attention.varlen_attention` directly in the (tokens, heads, dim) layout the projections produce, without
copying key and value to contiguous tensors first (the flash kernel reads strided rows). Separate q/k/v
projections (Llama, Mistral, Qwen2, Qwen3 with its per-head q/k norms) get the same direct call. With
``fused_rope`` (on CUDA with Triton), a fused qkv output is split and its q and k rotated by one kernel
(:mod:`.qkv_rope`), whose backward writes the projection's gradient directly.

The same function as the stock forward (the tests compare outputs and gradients): it runs for training forwards
of a packed row only (module in training mode, the ``ftkit_varlen`` implementation, the row's boundaries in
``ftkit_bounds`` or ``cu_seq_lens_q``, no KV cache); every other call (generation, evaluation, a plain forward)
runs transformers' own.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

from .. import attention
from . import qkv_rope

__all__ = ["SUPPORTED", "install"]

# model type -> (its attention class, where the layer's sliding window comes from)
SUPPORTED: dict[str, tuple[str, str]] = {
    "phi3": ("Phi3Attention", "config"),
    "llama": ("LlamaAttention", "none"),
    "mistral": ("MistralAttention", "config"),
    "qwen2": ("Qwen2Attention", "module"),
    "qwen3": ("Qwen3Attention", "module"),
}


def _window(module: Any, source: str) -> int | None:
    """Strictly private: the sliding window the stock forward passes to the attention function."""
    if source == "module":
        return getattr(module, "sliding_window", None)
    if source == "config":
        return getattr(module.config, "sliding_window", None)
    return None


def _projections(module: Any, hidden: Any, heads: int, kv_heads: int, dim: int) -> tuple[Any, Any, Any]:
    """Strictly private: q, k and v as (1, tokens, heads, dim) views of the projections' outputs."""
    shape = (*hidden.shape[:-1], -1, dim)
    if hasattr(module, "qkv_proj"):
        # split: its backward is one concatenation (a slice's fills a zero tensor of the whole output)
        q, k, v = module.qkv_proj(hidden).split((heads * dim, kv_heads * dim, kv_heads * dim), dim=-1)
        return q.view(shape), k.view(shape), v.view(shape)
    q = module.q_proj(hidden).view(shape)
    k = module.k_proj(hidden).view(shape)
    if hasattr(module, "q_norm"):  # Qwen3: RMSNorm over each head, before the rotation
        q, k = module.q_norm(q), module.k_norm(k)
    return q, k, module.v_proj(hidden).view(shape)


def _applies(module: Any, hidden: Any, kwargs: dict[str, Any]) -> bool:
    """Strictly private: whether this call is a training forward of a packed row (else the stock forward runs)."""
    if not module.training or module.config._attn_implementation != attention.IMPLEMENTATION:
        return False
    if kwargs.get("past_key_values") is not None or kwargs.get("cache") is not None:
        return False
    if kwargs.get("position_embeddings") is None or hidden.shape[0] != 1:
        return False
    return kwargs.get("ftkit_bounds") is not None or kwargs.get("cu_seq_lens_q") is not None


def _rotated(
    module: Any,
    hidden: Any,
    rope_module: Any,
    split_rope: qkv_rope.SplitRopeKernel | None,
    position_embeddings: tuple[Any, Any],
) -> tuple[Any, Any, Any]:
    """Strictly private: q and k rotated and v, each (tokens, heads, dim), from the layer's projections."""
    config = module.config
    dim = module.head_dim
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    cos, sin = position_embeddings
    if split_rope is not None and hasattr(module, "qkv_proj"):
        # one kernel from the projection's output to rotated, contiguous q and k (see .qkv_rope)
        return split_rope(module.qkv_proj(hidden)[0], cos[0], sin[0], heads, kv_heads, dim)
    q, k, v = _projections(module, hidden, heads, kv_heads, dim)
    # looked up at each call: liger-kernel replaces the modeling module's function with its own kernel
    q, k = rope_module.apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    # (tokens, heads, dim); v a view of the projection's output: no copy (see attention.varlen_attention's copy_kv)
    return q[0].transpose(0, 1), k[0].transpose(0, 1), v[0]


def _make_forward(
    rope_module: Any, window_source: str, split_rope: qkv_rope.SplitRopeKernel | None
) -> Callable[..., Any]:
    """Strictly private: the forward of one model type's attention layers.

    Everything it calls is resolved here, not at each call: a compiled layer traces this forward, and a check or
    a cached builder inside it would run in the graph.
    """

    def forward(module: Any, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        if args or not _applies(module, hidden_states, kwargs):
            return type(module).forward(module, hidden_states, *args, **kwargs)
        q, k, v = _rotated(module, hidden_states, rope_module, split_rope, kwargs["position_embeddings"])
        out = attention.varlen_attention(
            q,
            k,
            v,
            kwargs.get("ftkit_bounds"),
            kwargs.get("cu_seq_lens_q"),
            kwargs.get("max_length_q"),
            module.scaling,
            module.attention_dropout,  # training mode only (see _applies), where the stock forward uses it too
            _window(module, window_source),
            copy_kv=False,
        )
        return module.o_proj(out.reshape(*hidden_states.shape[:-1], -1)), None

    return forward


def install(model: Any, fused_rope: bool = False) -> int:
    """Give the attention layers of a supported model this forward; return how many got it.

    Supported: the model types of :data:`SUPPORTED`, with their own attention classes (an attention layer of
    another class, or whose forward someone already replaced, keeps its own).

    Args:
        model: The model (or its peft wrapper).
        fused_rope: On CUDA with Triton, split a fused qkv projection's output and rotate q and k in one kernel
            each way (:mod:`.qkv_rope`) instead of the model's ``apply_rotary_pos_emb`` on copies, where the
            kernel checks out on the model's device (decided here, once).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    spec = SUPPORTED.get(str(getattr(base.config, "model_type", "")))
    if spec is None:
        return 0
    split_rope = qkv_rope.kernel(next(base.parameters()).device) if fused_rope else None
    class_name, window_source = spec
    count = 0
    forward: Callable[..., Any] | None = None
    for module in base.modules():
        if type(module).__name__ != class_name or "forward" in vars(module):
            continue
        if forward is None:
            forward = _make_forward(sys.modules[type(module).__module__], window_source, split_rope)
        module.forward = types.MethodType(forward, module)
        count += 1
    return count
