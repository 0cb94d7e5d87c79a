"""Strictly private: the Triton programs behind :mod:`.qkv_rope` (which documents and types their wrapper).

Triton kernels take pointers, strides and compile-time constants, which have no Python types to check; mypy is
told so for this module alone (pyproject.toml), and nothing outside :mod:`.qkv_rope` calls them.

One program per token row. The rotation of element ``d`` (``d < ROT``) is ``x[d] cos[d] + sign(d) x[p(d)] sin[d]``
with ``p`` swapping the two halves of the rotary part and ``sign`` -1 on the first half (transformers'
``rotate_half``); its transpose, for the backward, is ``g[d] cos[d] - sign(d) g[p(d)] sin[p(d)]``. Elements past
``ROT`` pass through. Arithmetic in float32, rounded once.
"""

import triton
import triton.language as tl


@triton.jit
def _rotate(
    ptr,
    row_stride,
    row,
    heads,
    cos_ptr,
    sin_ptr,
    cos_stride,
    BACKWARD: tl.constexpr,
    ROT: tl.constexpr,
    D: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    half: tl.constexpr = ROT // 2
    partner = tl.where(d < half, d + half, d - half)
    sign = tl.where(d < half, -1.0, 1.0)
    rot = d < ROT
    mask = (h < heads) & (d < D)
    src = ptr + row * row_stride + h * D
    x = tl.load(src + d, mask=mask, other=0.0).to(tl.float32)
    xp = tl.load(src + partner, mask=mask & rot, other=0.0).to(tl.float32)
    c = tl.load(cos_ptr + row * cos_stride + d, mask=rot, other=1.0).to(tl.float32)
    if BACKWARD:
        sp = tl.load(sin_ptr + row * cos_stride + partner, mask=rot, other=0.0).to(tl.float32)
        y = tl.where(rot, x * c - sign * xp * sp, x)
    else:
        s = tl.load(sin_ptr + row * cos_stride + d, mask=rot, other=0.0).to(tl.float32)
        y = tl.where(rot, x * c + sign * xp * s, x)
    return y, h, d, mask


@triton.jit
def _split_rope_forward(
    qkv_ptr,
    q_ptr,
    k_ptr,
    cos_ptr,
    sin_ptr,
    qkv_stride,
    cos_stride,
    heads,
    kv_heads,
    ROT: tl.constexpr,
    D: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    y, h, d, mask = _rotate(
        qkv_ptr, qkv_stride, row, heads, cos_ptr, sin_ptr, cos_stride, False, ROT, D, BLOCK_HQ, BLOCK_D
    )
    tl.store(q_ptr + row * heads * D + h * D + d, y.to(q_ptr.dtype.element_ty), mask=mask)
    y, h, d, mask = _rotate(
        qkv_ptr + heads * D, qkv_stride, row, kv_heads, cos_ptr, sin_ptr, cos_stride, False, ROT, D, BLOCK_HK, BLOCK_D
    )
    tl.store(k_ptr + row * kv_heads * D + h * D + d, y.to(k_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _split_rope_backward(
    dq_ptr,
    dk_ptr,
    dv_ptr,
    out_ptr,
    cos_ptr,
    sin_ptr,
    dq_stride,
    dk_stride,
    dv_stride,
    out_stride,
    cos_stride,
    heads,
    kv_heads,
    ROT: tl.constexpr,
    D: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    dst = out_ptr + row * out_stride
    y, h, d, mask = _rotate(
        dq_ptr, dq_stride, row, heads, cos_ptr, sin_ptr, cos_stride, True, ROT, D, BLOCK_HQ, BLOCK_D
    )
    tl.store(dst + h * D + d, y.to(out_ptr.dtype.element_ty), mask=mask)
    y, h, d, mask = _rotate(
        dk_ptr, dk_stride, row, kv_heads, cos_ptr, sin_ptr, cos_stride, True, ROT, D, BLOCK_HK, BLOCK_D
    )
    tl.store(dst + (heads + h) * D + d, y.to(out_ptr.dtype.element_ty), mask=mask)
    kv_mask = (h < kv_heads) & (d < D)
    value = tl.load(dv_ptr + row * dv_stride + h * D + d, mask=kv_mask, other=0.0)
    tl.store(dst + (heads + kv_heads + h) * D + d, value.to(out_ptr.dtype.element_ty), mask=kv_mask)
