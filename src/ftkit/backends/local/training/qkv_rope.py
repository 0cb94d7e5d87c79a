"""A fused q/k/v projection's output split and q and k rotated in one pass, and the gradient in one pass back.

On a model with one fused qkv projection (Phi-3), q and k are strided views of the projection's output. The
rotary embedding then costs, per layer: two contiguous copies of q and k and the rotation in place (liger-kernel's
RoPE needs contiguous tensors) in the forward; the rotation of the gradients in place and the split's backward,
a concatenation of the three gradients into the projection's gradient, in the backward. :func:`split_rope` does
the forward in one kernel that reads q and k where the projection wrote them and writes them rotated, contiguous,
for the flash kernel (value stays a view); its backward writes the rotated-back gradients of q and k and the
gradient of v straight into the projection's gradient, in one kernel. Half the memory traffic, two kernels a
layer instead of five.

Used by :mod:`.attention_forward` for fused-qkv models on CUDA when Triton is there and :func:`usable` (a
one-time check of the compiled kernels against plain torch on the device) says so (``TUNING["split_rope"]``);
tested against transformers' rotation, in value and gradient, on the GPU (and under Triton's interpreter).
On by default since measured on an H100 (docs/benchmarks.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from . import kernel_check

__all__ = ["SplitRopeKernel", "available", "kernel", "split_rope", "usable"]

# :func:`split_rope`'s signature: (qkv, cos, sin, heads, kv heads, head dim) -> (q, k, v)
SplitRopeKernel = Callable[[Any, Any, Any, int, int, int], tuple[Any, Any, Any]]


available = kernel_check.available


def usable(device: Any) -> bool:
    """Whether to use :func:`split_rope` on ``device``: :func:`available`, and its kernels work there.

    The compiled kernels must compute :func:`reference`'s values and gradients (checked once per device, see
    :mod:`.kernel_check`); otherwise the model's own rotation runs.
    """
    return kernel_check.usable(device, _self_check)


def _compare(torch: Any, device: str) -> bool:
    """Strictly private: whether the kernels' values and gradients are the reference's."""
    gen = torch.Generator().manual_seed(0)
    heads, kv, dim, rot, tokens = 4, 2, 32, 16, 9  # grouped heads and a partial rotation: every branch
    qkv = torch.randn(tokens, (heads + 2 * kv) * dim, generator=gen).to(device).requires_grad_(True)
    angles = torch.arange(tokens)[:, None] * torch.rand(rot // 2, generator=gen)
    emb = torch.cat([angles, angles], dim=-1).to(device)
    cos, sin = emb.cos(), emb.sin()
    got = split_rope(qkv, cos, sin, heads, kv, dim)
    expected = reference(qkv, cos, sin, heads, kv, dim)
    grads = [torch.randn(x.shape, generator=gen).to(device) for x in expected]
    (got_grad,) = torch.autograd.grad(got, qkv, grads)
    (expected_grad,) = torch.autograd.grad(expected, qkv, grads)
    pairs = [*zip(got, expected, strict=True), (got_grad, expected_grad)]
    return all(torch.allclose(a, b, atol=1e-5, rtol=1e-5) for a, b in pairs)


# the kernels against plain torch on a small float32 input, forward and backward, once per device
_self_check = kernel_check.once_per_device(_compare, "the fused split+RoPE kernel", "the model's own rotation")


def reference(qkv: Any, cos: Any, sin: Any, heads: int, kv_heads: int, dim: int) -> tuple[Any, Any, Any]:
    """:func:`split_rope` in plain torch (transformers' ``rotate_half`` rotation of the first ``rotary_dim``)."""
    import torch

    tokens = qkv.shape[0]
    q, k, v = qkv.split((heads * dim, kv_heads * dim, kv_heads * dim), dim=-1)
    rot = cos.shape[-1]
    c, s = cos[:, None], sin[:, None]

    def rotate(x: Any) -> Any:
        x = x.view(tokens, -1, dim)
        part, rest = x[..., :rot], x[..., rot:]
        first, second = part[..., : rot // 2], part[..., rot // 2 :]
        return torch.cat([part * c + torch.cat([-second, first], dim=-1) * s, rest], dim=-1)

    return rotate(q), rotate(k), v.view(tokens, kv_heads, dim)


@functools.cache
def _function() -> Any:
    """The autograd function, built on first use (it subclasses ``torch.autograd.Function``)."""
    import torch
    import triton

    from . import _qkv_rope_triton as kernels

    def launch(
        q_src: Any,
        k_src: Any,
        v_src: Any,
        q_dst: Any,
        k_dst: Any,
        v_dst: Any,
        cos: Any,
        sin: Any,
        heads: int,
        kv_heads: int,
        dim: int,
        backward: bool,
    ) -> None:
        # every tensor is [rows, heads x dim] in its rows (a head's stride is dim): one row stride each
        tensors = (q_src, k_src, v_src, q_dst, k_dst, v_dst)
        kernels._split_rope[(q_src.shape[0],)](
            *tensors, cos, sin, *(t.stride(0) for t in tensors), cos.stride(0), heads, kv_heads,
            BACKWARD=backward, ROT=cos.shape[-1], D=dim, BLOCK_HQ=triton.next_power_of_2(heads),
            BLOCK_HK=triton.next_power_of_2(kv_heads), BLOCK_D=triton.next_power_of_2(dim),
        )  # fmt: skip

    class SplitRope(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, qkv: Any, cos: Any, sin: Any, heads: int, kv_heads: int, dim: int) -> Any:
            rows = qkv.shape[0]
            q = torch.empty((rows, heads, dim), dtype=qkv.dtype, device=qkv.device)
            k = torch.empty((rows, kv_heads, dim), dtype=qkv.dtype, device=qkv.device)
            # value as a view of the projection's output: the flash kernel reads strided rows
            v = qkv[:, (heads + kv_heads) * dim :].view(rows, kv_heads, dim)
            launch(qkv, qkv[:, heads * dim :], v, q, k, v, cos, sin, heads, kv_heads, dim, backward=False)
            ctx.save_for_backward(cos, sin)
            ctx.shape = (heads, kv_heads, dim, qkv.shape[1])
            return q, k, v

        @staticmethod
        def backward(ctx: Any, dq: Any, dk: Any, dv: Any) -> tuple[Any, ...]:
            cos, sin = ctx.saved_tensors
            heads, kv_heads, dim, width = ctx.shape
            like = next(g for g in (dq, dk, dv) if g is not None)
            rows = like.shape[0]
            parts = [
                torch.zeros((rows, n, dim), dtype=like.dtype, device=like.device) if g is None else g
                for g, n in ((dq, heads), (dk, kv_heads), (dv, kv_heads))
            ]
            # the kernel walks each row's heads at a stride of one head: other layouts are copied first
            dq, dk, dv = (g if g.stride(2) == 1 and g.stride(1) == dim else g.contiguous() for g in parts)
            out = torch.empty((rows, width), dtype=like.dtype, device=like.device)
            k_at, v_at = heads * dim, (heads + kv_heads) * dim
            launch(dq, dk, dv, out, out[:, k_at:], out[:, v_at:], cos, sin, heads, kv_heads, dim, backward=True)
            return out, None, None, None, None, None

    return SplitRope


def split_rope(qkv: Any, cos: Any, sin: Any, heads: int, kv_heads: int, dim: int) -> tuple[Any, Any, Any]:
    """Split a fused projection's output into q, k and v and rotate q and k (transformers' ``rotate_half`` RoPE).

    Args:
        qkv: ``[tokens, (heads + 2 kv_heads) dim]`` with a unit last stride (a projection's output).
        cos: ``[tokens, rotary_dim]``: each token's own row (``rotary_dim`` at most ``dim``, even; the rest of
            each head passes through unrotated).
        sin: Like ``cos``.
        heads: Query heads.
        kv_heads: Key/value heads.
        dim: Head dimension.

    Returns:
        ``q`` ``[tokens, heads, dim]`` and ``k`` ``[tokens, kv_heads, dim]`` rotated and contiguous, and ``v``
        ``[tokens, kv_heads, dim]``, a view of ``qkv``.
    """
    return _apply(_function(), qkv, cos, sin, heads, kv_heads, dim)


def _apply(function: Any, qkv: Any, cos: Any, sin: Any, heads: int, kv_heads: int, dim: int) -> tuple[Any, Any, Any]:
    """Strictly private: :func:`split_rope` through an already built autograd function."""
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    cos, sin = (t if t.stride(-1) == 1 else t.contiguous() for t in (cos, sin))
    out: tuple[Any, Any, Any] = function.apply(qkv, cos, sin, heads, kv_heads, dim)
    return out


def kernel(device: Any) -> SplitRopeKernel | None:
    """:func:`split_rope` for a model's forward on ``device``, or ``None`` where it is not :func:`usable` there.

    Resolved once, when a forward is installed: the returned function touches no cache and runs no check, so a
    layer compiled with ``torch.compile`` traces the kernel's call only (dynamo traces through ``functools.cache``
    wrappers, and would re-run the check and rebuild the autograd class inside the graph).
    """
    if not usable(device):
        return None
    function = _function()

    def split(qkv: Any, cos: Any, sin: Any, heads: int, kv_heads: int, dim: int) -> tuple[Any, Any, Any]:
        return _apply(function, qkv, cos, sin, heads, kv_heads, dim)

    return split
