"""Strictly private: the Triton programs behind :mod:`.kernels` (which documents and types their wrappers).

Triton kernels take pointers, strides and compile-time constants, which have no Python types to check; mypy
is told so for this module alone (pyproject.toml), and nothing outside :mod:`.kernels` calls them.
"""

import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    out_ptr,
    stride_x,
    stride_r,
    stride_o,
    n_cols,
    eps,
    HAS_RES: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(r.dtype)  # the residual add, rounded as torch's is
        tl.store(res_ptr + row * stride_r + cols, x, mask=mask)
    xf = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(xf * xf, axis=0) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    y = (xf * rstd).to(w.dtype) * w
    tl.store(out_ptr + row * stride_o + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rope_store_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    qo_ptr,
    cos_ptr,
    sin_ptr,
    pos_ptr,
    tab_ptr,
    kc_ptr,
    vc_ptr,
    sq_r,
    sq_h,
    sk_r,
    sk_h,
    sv_r,
    sv_h,
    sqo_r,
    sqo_h,
    s_cos,
    s_tab,
    skc_b,
    skc_h,
    skc_p,
    heads,
    BS: tl.constexpr,
    ROT: tl.constexpr,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    pos = tl.load(pos_ptr + row).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    half: tl.constexpr = ROT // 2
    rot = d < ROT
    partner = tl.where(d < half, d + half, d - half)
    sign = tl.where(d < half, -1.0, 1.0)
    c = tl.load(cos_ptr + pos * s_cos + d, mask=rot, other=1.0).to(tl.float32)
    s = tl.load(sin_ptr + pos * s_cos + d, mask=rot, other=0.0).to(tl.float32)
    if head < heads:
        src = q_ptr + row * sq_r + head * sq_h
        x = tl.load(src + d, mask=dmask, other=0.0).to(tl.float32)
        xp = tl.load(src + partner, mask=rot, other=0.0).to(tl.float32)
        y = tl.where(rot, x * c + sign * xp * s, x)
        tl.store(qo_ptr + row * sqo_r + head * sqo_h + d, y.to(qo_ptr.dtype.element_ty), mask=dmask)
    else:
        kv = head - heads
        src = k_ptr + row * sk_r + kv * sk_h
        x = tl.load(src + d, mask=dmask, other=0.0).to(tl.float32)
        xp = tl.load(src + partner, mask=rot, other=0.0).to(tl.float32)
        y = tl.where(rot, x * c + sign * xp * s, x)
        block = tl.load(tab_ptr + row * s_tab + pos // BS).to(tl.int64)
        dst = block * skc_b + kv * skc_h + (pos % BS) * skc_p + d
        tl.store(kc_ptr + dst, y.to(kc_ptr.dtype.element_ty), mask=dmask)
        value = tl.load(v_ptr + row * sv_r + kv * sv_h + d, mask=dmask, other=0.0)
        tl.store(vc_ptr + dst, value.to(vc_ptr.dtype.element_ty), mask=dmask)


@triton.jit
def _attend(
    q,
    kc_ptr,
    vc_ptr,
    tab_row,
    head_base,
    skc_b,
    skc_p,
    n0,
    end,
    m,
    total,
    acc,
    scale,
    d,
    dmask,
    BS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One run of keys into the running softmax (``m``: max, ``total``: sum, ``acc``: weighted values).

    Each key is found through the row's block table (``tab_row``): block ``tab_row[n // BS]``, offset ``n % BS``.
    """
    n = n0 + tl.arange(0, BLOCK_N)
    nmask = n < end
    block = tl.load(tab_row + n // BS, mask=nmask, other=0).to(tl.int64)
    cell = block * skc_b + head_base + (n % BS).to(tl.int64) * skc_p
    offs = cell[:, None] + d[None, :]
    k = tl.load(kc_ptr + offs, mask=nmask[:, None] & dmask[None, :], other=0.0)
    scores = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    scores = tl.where(nmask[None, :], scores * scale, float("-inf"))
    m_new = tl.maximum(m, tl.max(scores, axis=1))
    p = tl.exp(scores - m_new[:, None])
    alpha = tl.exp(m - m_new)
    total = total * alpha + tl.sum(p, axis=1)
    v = tl.load(vc_ptr + offs, mask=nmask[:, None] & dmask[None, :], other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, total, acc


@triton.jit
def _attention_kernel(
    q_ptr,
    kc_ptr,
    vc_ptr,
    pos_ptr,
    tab_ptr,
    out_ptr,
    part_ptr,
    stat_ptr,
    sq_r,
    sq_h,
    s_tab,
    skc_b,
    skc_h,
    skc_p,
    so_r,
    so_h,
    scale,
    heads,
    CHUNK: tl.constexpr,
    BS: tl.constexpr,
    G: tl.constexpr,
    BLOCK_G: tl.constexpr,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLITS: tl.constexpr,
    PRECISION: tl.constexpr,
    STAGES: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    kv = tl.program_id(1)
    split = tl.program_id(2)
    length = tl.load(pos_ptr + row).to(tl.int32) + 1  # the row attends up to the position written this step
    start = split * CHUNK
    end = tl.minimum(start + CHUNK, length)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    gmask = g < G
    dmask = d < D
    head = kv * G + g
    q = tl.load(q_ptr + row * sq_r + head[:, None] * sq_h + d[None, :], mask=gmask[:, None] & dmask[None, :], other=0.0)
    tab_row = tab_ptr + row * s_tab
    head_base = kv.to(tl.int64) * skc_h
    m = tl.full([BLOCK_G], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    if INTERPRET:
        # Triton's interpreter cannot take a loop bound loaded from memory: a fixed trip count, tail skipped.
        for step in range(0, CHUNK, BLOCK_N):
            if start + step < end:
                m, total, acc = _attend(
                    q,
                    kc_ptr,
                    vc_ptr,
                    tab_row,
                    head_base,
                    skc_b,
                    skc_p,
                    start + step,
                    end,
                    m,
                    total,
                    acc,
                    scale,
                    d,
                    dmask,
                    BS,
                    BLOCK_N,
                    PRECISION,
                )
    else:
        for n0 in tl.range(start, end, BLOCK_N, num_stages=STAGES):
            m, total, acc = _attend(
                q,
                kc_ptr,
                vc_ptr,
                tab_row,
                head_base,
                skc_b,
                skc_p,
                n0,
                end,
                m,
                total,
                acc,
                scale,
                d,
                dmask,
                BS,
                BLOCK_N,
                PRECISION,
            )
    if SPLITS == 1:
        out = acc / total[:, None]
        dst = out_ptr + row * so_r + head[:, None] * so_h + d[None, :]
        tl.store(dst, out.to(out_ptr.dtype.element_ty), mask=gmask[:, None] & dmask[None, :])
    else:
        # Partial sums of this split, combined by _combine_kernel: [rows, heads, SPLITS, D] and [.., 2].
        cell = (row * heads + head) * SPLITS + split
        tl.store(part_ptr + cell[:, None] * BLOCK_D + d[None, :], acc, mask=gmask[:, None])
        tl.store(stat_ptr + cell * 2, m, mask=gmask)
        tl.store(stat_ptr + cell * 2 + 1, total, mask=gmask)


@triton.jit
def _combine_kernel(
    part_ptr,
    stat_ptr,
    out_ptr,
    so_r,
    so_h,
    heads,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SPLITS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    s = tl.arange(0, SPLITS)
    d = tl.arange(0, BLOCK_D)
    cell = (row * heads + head) * SPLITS + s
    m = tl.load(stat_ptr + cell * 2)
    total = tl.load(stat_ptr + cell * 2 + 1)
    top = tl.max(m, axis=0)
    weight = tl.where(m > float("-inf"), tl.exp(m - top), 0.0)  # empty splits (past the row's length) weigh 0
    acc = tl.load(part_ptr + cell[:, None] * BLOCK_D + d[None, :])
    out = tl.sum(acc * weight[:, None], axis=0) / tl.sum(total * weight, axis=0)
    tl.store(out_ptr + row * so_r + head * so_h + d, out.to(out_ptr.dtype.element_ty), mask=d < D)


@triton.jit
def _silu_mul_kernel(
    gate_ptr,
    up_ptr,
    out_ptr,
    stride_g,
    stride_u,
    stride_o,
    n_cols,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    gate = tl.load(gate_ptr + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(up_ptr + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
    y = gate * tl.sigmoid(gate) * up
    tl.store(out_ptr + row * stride_o + cols, y.to(out_ptr.dtype.element_ty), mask=mask)
