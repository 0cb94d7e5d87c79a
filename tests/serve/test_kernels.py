"""The fused decode kernels against plain torch, and the fused slot decoder against the unfused one.

On CUDA the kernels run compiled (``gpu``; skipped without a GPU). Without one, where Triton is installed, the
same checks run under Triton's interpreter in a child process (``TRITON_INTERPRET`` must be set before Triton
decorates the kernels, so not in this process); CI's CPU-only torch has no Triton and skips them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ftkit.serve.engines.continuous import kernels  # noqa: E402
from ftkit.serve.engines.continuous.slots import SlotDecoder  # noqa: E402
from ftkit.serve.engines.generation import LoadedModel  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def _device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if INTERPRETED and kernels.triton is not None:
        return "cpu"
    pytest.skip("the fused kernels need CUDA (or Triton's interpreter)")


@pytest.fixture
def device() -> str:
    return _device()


def reference_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(w.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_with_and_without_the_residual(device: str, dtype: torch.dtype) -> None:
    if dtype == torch.bfloat16 and device == "cpu":
        pytest.skip("Triton's interpreter computes through numpy, which has no bfloat16")
    gen = torch.Generator().manual_seed(0)
    x, r = (torch.randn(5, 96, generator=gen).to(device, dtype) for _ in range(2))
    w = torch.randn(96, generator=gen).to(device, dtype)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(kernels.rms_norm(x, w, 1e-5), reference_norm(x, w, 1e-5), atol=tol, rtol=tol)
    residual = r.clone()
    out = kernels.rms_norm(x, w, 1e-5, residual)
    total = x + r
    assert torch.equal(residual, total)  # the residual add is rounded exactly as torch rounds it
    torch.testing.assert_close(out, reference_norm(total, w, 1e-5), atol=tol, rtol=tol)


def test_silu_mul_on_views_of_a_fused_projection(device: str) -> None:
    gate_up = torch.randn(3, 2 * 1500, generator=torch.Generator().manual_seed(1)).to(device)
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(kernels.silu_mul(gate, up), torch.nn.functional.silu(gate) * up)


@pytest.mark.parametrize(
    ("heads", "kv_heads", "dim", "rotary", "block_size"),
    [(4, 4, 24, 24, 16), (8, 2, 16, 12, 8), (16, 2, 32, 32, 32)],
    ids=["mha", "gqa-partial-rotary", "gqa-tensor-cores"],
)
def test_rope_store_and_attention_match_torch(
    device: str, heads: int, kv_heads: int, dim: int, rotary: int, block_size: int
) -> None:
    gen = torch.Generator().manual_seed(2)
    rows, context = 3, 200
    width = -(-context // block_size)
    qkv = torch.randn(rows, (heads + 2 * kv_heads) * dim, generator=gen).to(device)
    q = qkv[:, : heads * dim].view(rows, heads, dim)  # views with the fused projection's strides
    k = qkv[:, heads * dim : (heads + kv_heads) * dim].view(rows, kv_heads, dim)
    v = qkv[:, (heads + kv_heads) * dim :].view(rows, kv_heads, dim)
    inv = 1.0 / (10000 ** (torch.arange(0, rotary, 2).float() / rotary))
    freqs = torch.outer(torch.arange(context).float(), inv)
    cos, sin = (f(torch.cat([freqs, freqs], -1)).to(device) for f in (torch.cos, torch.sin))
    positions = torch.tensor([5, 130, 199], device=device)
    # Each row's blocks are scattered over a pool with room to spare: the tables, not the layout, say where.
    blocks = rows * width + 7
    tables = torch.randperm(blocks, generator=gen)[: rows * width].view(rows, width).to(torch.int32).to(device)
    k_cache = torch.randn(blocks, kv_heads, block_size, dim, generator=gen).to(device)
    v_cache = torch.randn(blocks, kv_heads, block_size, dim, generator=gen).to(device)
    want_k, want_v = k_cache.clone(), v_cache.clone()

    def rope(x: torch.Tensor) -> torch.Tensor:
        c, s = cos[positions][:, None], sin[positions][:, None]
        x_rot, x_pass, half = x[..., :rotary], x[..., rotary:], rotary // 2
        turned = torch.cat((-x_rot[..., half:], x_rot[..., :half]), -1)
        return torch.cat((x_rot * c + turned * s, x_pass), -1)

    rotated_k = rope(k)
    for i in range(rows):
        p = int(positions[i])
        block = int(tables[i, p // block_size])
        want_k[block, :, p % block_size] = rotated_k[i]
        want_v[block, :, p % block_size] = v[i]
    q_rot = kernels.rope_and_store(q, k, v, cos, sin, positions, k_cache, v_cache, tables)
    torch.testing.assert_close(q_rot, rope(q))
    torch.testing.assert_close(k_cache, want_k)
    torch.testing.assert_close(v_cache, want_v)

    want = kernels.paged_attention_reference(q_rot, want_k, want_v, positions, tables, 1 / math.sqrt(dim))
    for splits in (1, 2, 4):
        out = kernels.decode_attention(q_rot, k_cache, v_cache, positions, tables, 1 / math.sqrt(dim), splits=splits)
        torch.testing.assert_close(out, want, msg=f"splits={splits}")
    with pytest.raises(ValueError, match="power of two"):
        kernels.decode_attention(q_rot, k_cache, v_cache, positions, tables, 1.0, splits=3)


def test_the_fused_decoder_matches_the_unfused_one(device: str, tiny_model_dir: Path) -> None:
    model = LoadedModel(tiny_model_dir, device, torch.float32)
    fused = SlotDecoder(model.model, slots=4, context=64, cuda_graphs=False)
    plain = SlotDecoder(model.model, slots=4, context=64, cuda_graphs=False, fused=False)
    assert fused.fused
    assert not plain.fused
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16, 17, 18, 19]]
    torch.testing.assert_close(fused.prefill([0, 1, 2], prompts), plain.prefill([0, 1, 2], prompts))
    for decoder in (fused, plain):
        decoder.tokens[:3] = torch.tensor([1, 2, 3])
        decoder.positions[:3] = torch.tensor([5, 3, 7])
    torch.testing.assert_close(fused.decode(3, 8), plain.decode(3, 8))
    for a, b in zip(fused.k_cache, plain.k_cache, strict=True):
        torch.testing.assert_close(a[:-1], b[:-1])  # all but the trash block, which padding writes in any order


@pytest.mark.skipif(INTERPRETED or kernels.triton is None, reason="needs Triton, and runs the interpreter itself")
@pytest.mark.skipif(torch.cuda.is_available(), reason="the kernels run compiled on this machine's GPU")
def test_under_the_triton_interpreter(under_triton_interpreter: Callable[[str], str]) -> None:
    assert "6 passed, 1 skipped" in under_triton_interpreter(__file__)  # only the bfloat16 norm needs a GPU
