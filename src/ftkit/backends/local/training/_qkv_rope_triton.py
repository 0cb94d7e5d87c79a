"""Strictly private: the Triton program behind :mod:`.qkv_rope` (which documents and types its wrapper).

Triton kernels take pointers, strides and compile-time constants, which have no Python types to check; mypy is
told so for this module alone (pyproject.toml), and nothing outside :mod:`.qkv_rope` calls them.

One program per token row, for both directions. The rotation of element ``d`` (``d < ROT``) is
``x[d] cos[d] + sign(d) x[p(d)] sin[d]`` with ``p`` swapping the two halves of the rotary part and ``sign`` -1 on
the first half (transformers' ``rotate_half``); its transpose, for the backward, is
``g[d] cos[d] - sign(d) g[p(d)] sin[p(d)]``. Elements past ``ROT`` pass through. Arithmetic in float32, rounded
once.
"""

import triton
import triton.language as tl


@triton.jit
def _rotate_heads(
    src,
    src_stride,
    dst,
    dst_stride,
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
    x_ptr = src + row * src_stride + h * D
    x = tl.load(x_ptr + d, mask=mask, other=0.0).to(tl.float32)
    xp = tl.load(x_ptr + partner, mask=mask & rot, other=0.0).to(tl.float32)
    c = tl.load(cos_ptr + row * cos_stride + d, mask=rot, other=1.0).to(tl.float32)
    if BACKWARD:
        sp = tl.load(sin_ptr + row * cos_stride + partner, mask=rot, other=0.0).to(tl.float32)
        y = tl.where(rot, x * c - sign * xp * sp, x)
    else:
        s = tl.load(sin_ptr + row * cos_stride + d, mask=rot, other=0.0).to(tl.float32)
        y = tl.where(rot, x * c + sign * xp * s, x)
    tl.store(dst + row * dst_stride + h * D + d, y.to(dst.dtype.element_ty), mask=mask)


@triton.jit
def _split_rope(
    q_src,
    k_src,
    v_src,
    q_dst,
    k_dst,
    v_dst,
    cos_ptr,
    sin_ptr,
    q_src_stride,
    k_src_stride,
    v_src_stride,
    q_dst_stride,
    k_dst_stride,
    v_dst_stride,
    cos_stride,
    heads,
    kv_heads,
    BACKWARD: tl.constexpr,
    ROT: tl.constexpr,
    D: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Rotate (forward) or rotate back (``BACKWARD``) each row's q and k heads from ``*_src`` into ``*_dst``.

    The backward also copies v's gradient into its place in the projection's gradient (the forward leaves v a
    view of the projection's output, so it has no v to write).
    """
    row = tl.program_id(0).to(tl.int64)
    _rotate_heads(q_src, q_src_stride, q_dst, q_dst_stride, row, heads, cos_ptr, sin_ptr, cos_stride, BACKWARD,
                  ROT, D, BLOCK_HQ, BLOCK_D)  # fmt: skip
    _rotate_heads(k_src, k_src_stride, k_dst, k_dst_stride, row, kv_heads, cos_ptr, sin_ptr, cos_stride, BACKWARD,
                  ROT, D, BLOCK_HK, BLOCK_D)  # fmt: skip
    if BACKWARD:
        h = tl.arange(0, BLOCK_HK)[:, None]
        d = tl.arange(0, BLOCK_D)[None, :]
        mask = (h < kv_heads) & (d < D)
        value = tl.load(v_src + row * v_src_stride + h * D + d, mask=mask, other=0.0)
        tl.store(v_dst + row * v_dst_stride + h * D + d, value.to(v_dst.dtype.element_ty), mask=mask)
