"""The fused split-and-rotate kernel (training.qkv_rope) against transformers' rotation, in value and gradient.

On CUDA the kernels run compiled in bf16 (``gpu``; skipped without a GPU). Without one, where Triton is installed,
the same checks run in float32 under Triton's interpreter in a child process (``TRITON_INTERPRET`` must be set
before Triton decorates the kernels); CI's CPU-only torch has no Triton and skips them.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable

import pytest

torch = pytest.importorskip("torch")

from transformers.models.phi3 import modeling_phi3  # noqa: E402

from ftkit.backends.local.training import qkv_rope  # noqa: E402

from .conftest import kernel_device  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# the Phi-3 module's own function, kept before liger-kernel (in a GPU test) patches the module
STOCK_ROTATION = modeling_phi3.apply_rotary_pos_emb


def reference(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv: int, dim: int) -> tuple:
    """transformers' Phi-3 path: split the projection's output, rotate q and k (partial rotary included)."""
    q, k, v = qkv.split((heads * dim, kv * dim, kv * dim), dim=-1)
    shape = (1, qkv.shape[0], -1, dim)
    q, k = STOCK_ROTATION(q.view(shape).transpose(1, 2), k.view(shape).transpose(1, 2), cos[None], sin[None])
    return q[0].transpose(0, 1), k[0].transpose(0, 1), v.view(qkv.shape[0], kv, dim)


@pytest.mark.parametrize(
    ("heads", "kv", "dim", "rotary"),
    [(4, 4, 32, 32), (8, 2, 16, 16), (3, 1, 24, 12), (32, 32, 96, 96)],
    ids=["mha", "gqa", "partial-rotary", "phi3-mini-heads"],
)
def test_the_split_and_rotation_and_their_gradient_are_transformers(heads: int, kv: int, dim: int, rotary: int) -> None:
    device = kernel_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # the interpreter computes through numpy
    gen = torch.Generator().manual_seed(0)
    tokens = 37
    qkv = torch.randn(tokens, (heads + 2 * kv) * dim, generator=gen).to(device, dtype).requires_grad_(True)
    angles = torch.arange(tokens)[:, None] * torch.rand(rotary // 2, generator=gen)  # positions x frequencies
    emb = torch.cat([angles, angles], dim=-1)
    cos, sin = emb.cos().to(device, dtype), emb.sin().to(device, dtype)

    assert qkv_rope.usable(device)  # the on-device check passes where the kernels are right
    got = qkv_rope.split_rope(qkv, cos, sin, heads, kv, dim)
    expected = reference(qkv, cos, sin, heads, kv, dim)
    grads = [torch.randn(x.shape, generator=gen).to(device, dtype) for x in expected]
    (got_grad,) = torch.autograd.grad(got, qkv, grads)
    (expected_grad,) = torch.autograd.grad(expected, qkv, grads)

    assert got[0].is_contiguous()
    assert got[1].is_contiguous()
    assert got[2].data_ptr() == qkv.data_ptr() + (heads + kv) * dim * qkv.element_size()  # v: a view, not a copy
    tol = 1e-6 if dtype == torch.float32 else 2e-2  # bf16: transformers rounds after each operation, the kernel once
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)
    torch.testing.assert_close(got_grad, expected_grad, atol=tol, rtol=tol)
    if rotary < dim:  # the unrotated tail of each head passes through untouched, forwards and back
        q_tail = got[0][..., rotary:]
        assert torch.equal(q_tail, qkv[:, : heads * dim].view(tokens, heads, dim)[..., rotary:])


def test_a_phi3_model_with_the_kernel_computes_the_stock_model() -> None:
    """The kernel inside ftkit's attention forward of a tiny LoRA'd Phi-3: the same logits and every gradient (float32,
    interpreter; on the GPU in bf16 the same comparison is test_fast_layers_gpu.py's ``phi3-fused-rope``)."""
    if kernel_device().type == "cuda":
        pytest.skip("on a GPU, test_fast_layers_gpu.py compares in bf16")
    from ftkit.backends.local.training import attention_forward

    from .test_fast_layers import assert_same, lora, packed_inputs, run, tiny_model

    reference = lora(tiny_model("phi3"))
    fast = copy.deepcopy(reference)
    assert attention_forward.install(fast, fused_rope=True) == fast.get_base_model().config.num_hidden_layers
    inputs = packed_inputs(reference)
    assert_same(run(fast, inputs), run(reference, inputs))


def test_a_missing_gradient_counts_as_zero() -> None:
    """Attention that uses q and k only (v's gradient None) still gets a full-width projection gradient."""
    device = kernel_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    qkv = torch.randn(5, 3 * 2 * 16, device=device, dtype=dtype, requires_grad=True)
    cos = torch.ones(5, 16, device=device, dtype=dtype)
    sin = torch.zeros(5, 16, device=device, dtype=dtype)
    q, k, _ = qkv_rope.split_rope(qkv, cos, sin, 2, 2, 16)
    (q.sum() + k.sum()).backward()
    assert qkv.grad is not None
    assert torch.equal(qkv.grad[:, :64], torch.ones_like(qkv.grad[:, :64]))  # identity rotation: gradient 1
    assert torch.equal(qkv.grad[:, 64:], torch.zeros_like(qkv.grad[:, 64:]))


def test_the_self_checks_reference_is_transformers_rotation() -> None:
    """qkv_rope.reference (what the on-device check compares the kernels with) is Phi-3's own rotation."""
    gen = torch.Generator().manual_seed(1)
    qkv = torch.randn(11, (4 + 2 * 2) * 16, generator=gen)
    angles = torch.arange(11)[:, None] * torch.rand(4, generator=gen)  # a partial rotation: 8 of 16
    emb = torch.cat([angles, angles], dim=-1)
    for a, b in zip(
        qkv_rope.reference(qkv, emb.cos(), emb.sin(), 4, 2, 16),
        reference(qkv, emb.cos(), emb.sin(), 4, 2, 16),
        strict=True,
    ):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.skipif(INTERPRETED, reason="runs the interpreter itself")
@pytest.mark.skipif(torch.cuda.is_available(), reason="the kernels run compiled on this machine's GPU")
def test_under_the_triton_interpreter(under_triton_interpreter: Callable[[str], str]) -> None:
    assert " passed" in under_triton_interpreter(__file__)
