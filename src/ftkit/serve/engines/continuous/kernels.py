"""Triton kernels of the GPU decode step over the paged KV cache, and the paged attention's PyTorch reference.

A decode step of a 3.8B model at 16 rows reads its weights in under 2 ms, yet transformers' modules spend it in
about a thousand small kernels: RMSNorm is six of them, the rotary embedding slices and concatenates, and
``scaled_dot_product_attention`` over the slot cache reads every row up to the longest row of the step behind an
explicit mask. Captured in a CUDA graph those kernels no longer cost a launch each, but they still cost their own
fixed time, and the masked attention reads keys nobody attends. These kernels do the same arithmetic in fewer,
wider passes:

* :func:`rms_norm`: one pass, optionally adding a residual first (``x += y`` then the norm of ``x``), rounded as
  transformers rounds (the sum in the model's type, the norm in float32, the weight applied in the model's type);
* :func:`rope_and_store`: rotates each row's query and key at its own position and writes key and value into
  the block of the layer's cache that the row's block table names for that position;
* :func:`decode_attention`: one query per row over that row's own cached positions only, read through its
  block table (split over the sequence when the batch is too small to fill the GPU, then combined);
* :func:`silu_mul`: ``silu(gate) * up`` in one pass.

Nothing here allocates outside the caller's tensors but the attention's split scratch, so a decode step built
from them captures as a CUDA graph like the rest. They need Triton, which torch's CUDA builds carry;
:func:`available` says whether they can run, and the slot decoder falls back to transformers' modules when not.
"""

from __future__ import annotations

import functools
import math
import os

import attrs
import torch

__all__ = [
    "TUNING",
    "AttentionTuning",
    "available",
    "decode_attention",
    "gather_blocks",
    "paged_attention_reference",
    "rms_norm",
    "rope_and_store",
    "silu_mul",
]

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

try:  # Triton ships with torch's CUDA wheels; CPU-only installs do without it (and without these kernels).
    import triton

    from . import _triton as _k
except ImportError:  # pragma: no cover - depends on the install
    triton = None


def available(device: torch.device) -> bool:
    """Whether the kernels can run on ``device``: CUDA with Triton (or Triton's interpreter, for tests)."""
    if triton is None:
        return False
    return device.type == "cuda" or _INTERPRET


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _rows2d(x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``[rows, cols]`` with unit column stride (a view when it can be)."""
    flat = x.reshape(-1, x.shape[-1])
    return flat if flat.stride(-1) == 1 else flat.contiguous()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``weight * norm(x)``, or with ``residual``: ``residual += x`` (in place) and return ``weight * norm(residual)``.

    Args:
        x: ``[..., hidden]``.
        weight: ``[hidden]``.
        eps: The norm's epsilon.
        residual: The residual stream, ``x``'s shape, contiguous; updated in place.
    """
    hidden = x.shape[-1]
    rows = _rows2d(x)
    out = torch.empty(x.shape, dtype=weight.dtype, device=x.device)
    res = rows if residual is None else residual.view(-1, hidden)
    block = _pow2(hidden)
    _k._rms_norm_kernel[(rows.shape[0],)](
        rows,
        res,
        weight,
        out,
        rows.stride(0),
        res.stride(0),
        hidden,
        hidden,
        eps,
        HAS_RES=residual is not None,
        BLOCK=block,
        num_warps=min(16, max(1, block // 256)),
    )
    return out


def rope_and_store(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    tables: torch.Tensor,
) -> torch.Tensor:
    """Rotate each row's query and key at its position; write key and value into the row's block of the cache.

    Args:
        q: ``[rows, heads, head_dim]`` (any strides with a unit last one: views of a fused projection do).
        k: ``[rows, kv_heads, head_dim]``.
        v: ``[rows, kv_heads, head_dim]``.
        cos: ``[context, rotary_dim]`` (rotary_dim may be smaller than head_dim: the rest passes through).
        sin: Like ``cos``.
        positions: ``[rows]``: where each row's new token sits.
        k_cache: ``[blocks, kv_heads, block_size, head_dim]``, contiguous; ``block_size`` a power of two.
        v_cache: Like ``k_cache``.
        tables: ``[rows, width]`` int32: row ``i``'s position ``p`` lives in block ``tables[i, p // block_size]``.

    Returns:
        The rotated query, ``[rows, heads, head_dim]``, contiguous.
    """
    rows, heads, dim = q.shape
    kv_heads = k.shape[1]
    out = torch.empty((rows, heads, dim), dtype=q.dtype, device=q.device)
    _k._rope_store_kernel[(rows, heads + kv_heads)](
        q,
        k,
        v,
        out,
        cos,
        sin,
        positions,
        tables,
        k_cache,
        v_cache,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        out.stride(0),
        out.stride(1),
        cos.stride(0),
        tables.stride(0),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        heads,
        BS=k_cache.shape[2],
        ROT=cos.shape[-1],
        D=dim,
        BLOCK_D=_pow2(dim),
        num_warps=1,
    )
    return out


@functools.lru_cache(maxsize=8)
def _multiprocessors(index: int) -> int:
    if not torch.cuda.is_available():
        return 8
    return int(torch.cuda.get_device_properties(index).multi_processor_count)


def attention_splits(rows: int, kv_heads: int, context: int, device: torch.device, *, waves: int = 2) -> int:
    """How many pieces each row's sequence is cut into: enough programs for ``waves`` per multiprocessor."""
    programs = rows * kv_heads
    target = waves * _multiprocessors(device.index or 0)
    most = 1 << max(0, (context // 64).bit_length() - 1)  # a power of two: the combine step ranges over them
    return int(min(most, _pow2(max(1, math.ceil(target / max(1, programs))))))


@attrs.frozen
class AttentionTuning:
    """How :func:`decode_attention` cuts the work (chosen by measurement on an H200; see docs/benchmarks.md).

    Attributes:
        block_n: Keys per inner step.
        warps: Warps per program.
        stages: Software-pipelining depth of the key loop.
        waves: Programs per multiprocessor to aim for when choosing the number of splits.
    """

    block_n: int = 64
    warps: int = 4
    stages: int = 2
    waves: int = 2


TUNING = AttentionTuning()


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    positions: torch.Tensor,
    tables: torch.Tensor,
    scale: float,
    *,
    splits: int | None = None,
    tuning: AttentionTuning = TUNING,
) -> torch.Tensor:
    """One query per row against that row's own cached positions ``0..positions[i]``, read through its table.

    Args:
        q: ``[rows, heads, head_dim]``, contiguous.
        k_cache: ``[blocks, kv_heads, block_size, head_dim]``, contiguous (grouped queries share a kv head).
        v_cache: Like ``k_cache``.
        positions: ``[rows]``: each row's last written position.
        tables: ``[rows, width]`` int32 block tables (see :func:`rope_and_store`).
        scale: The softmax scale.
        splits: Pieces per sequence, a power of two (by default enough to fill the GPU: :func:`attention_splits`).
        tuning: Block sizes and pipelining.

    Returns:
        ``[rows, heads, head_dim]`` in ``q``'s type.
    """
    rows, heads, dim = q.shape
    kv_heads, block_size = k_cache.shape[1], k_cache.shape[2]
    context = tables.shape[1] * block_size
    group = heads // kv_heads
    n_splits = splits or attention_splits(rows, kv_heads, context, q.device, waves=tuning.waves)
    if n_splits & (n_splits - 1):
        raise ValueError(f"splits must be a power of two, not {n_splits}")
    chunk = -(-context // n_splits)
    out = torch.empty_like(q)
    block_d = _pow2(dim)
    # Tensor cores take 16 query rows at least: a kv head's group is padded to that, even a group of one. The
    # products are cheap; the keys' bytes are what a decode step waits for, and the elementwise form of the same
    # loop (broadcast, multiply, reduce) ran 2.3-5x slower on an H200 (benchmarks/bench_decode_attention.py).
    block_g = max(16, _pow2(group))
    if n_splits > 1:
        part = torch.empty((rows, heads, n_splits, block_d), dtype=torch.float32, device=q.device)
        stat = torch.empty((rows, heads, n_splits, 2), dtype=torch.float32, device=q.device)
    else:
        part = stat = out  # unused
    _k._attention_kernel[(rows, kv_heads, n_splits)](
        q,
        k_cache,
        v_cache,
        positions,
        tables,
        out,
        part,
        stat,
        q.stride(0),
        q.stride(1),
        tables.stride(0),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        out.stride(0),
        out.stride(1),
        scale,
        heads,
        CHUNK=chunk,
        BS=block_size,
        G=group,
        BLOCK_G=block_g,
        D=dim,
        BLOCK_D=block_d,
        BLOCK_N=tuning.block_n,
        SPLITS=n_splits,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # float32 models get float32 products
        STAGES=tuning.stages,
        INTERPRET=_INTERPRET,
        num_warps=tuning.warps,
    )
    if n_splits > 1:
        _k._combine_kernel[(rows, heads)](
            part, stat, out, out.stride(0), out.stride(1), heads, D=dim, BLOCK_D=block_d, SPLITS=n_splits, num_warps=1
        )
    return out


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` in one pass (``[..., n]`` each; views of a fused gate-up projection do)."""
    n = gate.shape[-1]
    g, u = _rows2d(gate), _rows2d(up)
    out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    block = 1024
    _k._silu_mul_kernel[(g.shape[0], triton.cdiv(n, block))](
        g, u, out, g.stride(0), u.stride(0), n, n, BLOCK=block, num_warps=4
    )
    return out


def gather_blocks(cache: torch.Tensor, tables: torch.Tensor, width: int) -> torch.Tensor:
    """Each row's first ``width`` positions of a paged cache, in order: ``[rows, kv_heads, width, head_dim]``.

    Args:
        cache: ``[blocks, kv_heads, block_size, head_dim]``.
        tables: ``[rows, table_width]`` block tables.
        width: Positions to gather (at most ``table_width * block_size``).
    """
    rows = tables.shape[0]
    kv_heads, block_size, dim = cache.shape[1:]
    used = -(-width // block_size)
    pages = cache[tables[:, :used].long()]  # [rows, used, kv_heads, block_size, dim]
    flat = pages.permute(0, 2, 1, 3, 4).reshape(rows, kv_heads, used * block_size, dim)
    return flat[:, :, :width]


def paged_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    positions: torch.Tensor,
    tables: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """:func:`decode_attention` in plain PyTorch (float32 softmax), row by row: what the kernel must compute."""
    rows, heads, _ = q.shape
    group = heads // k_cache.shape[1]
    out = torch.empty_like(q)
    for i in range(rows):
        seen = int(positions[i]) + 1
        keys = gather_blocks(k_cache, tables[i : i + 1], seen)[0].float().repeat_interleave(group, 0)
        values = gather_blocks(v_cache, tables[i : i + 1], seen)[0].float().repeat_interleave(group, 0)
        weights = torch.softmax((q[i].float()[:, None] * keys).sum(-1) * scale, -1)
        out[i] = (weights[..., None] * values).sum(1).to(q.dtype)
    return out
