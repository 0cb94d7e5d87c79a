"""The fused gate/up SwiGLU kernel (training.gate_up_swiglu) against Phi-3's MLP, in value and gradient.

On CUDA the kernels run compiled in bf16 (skipped without a GPU). Without one, where Triton is installed, the same
checks run in float32 under Triton's interpreter in a child process (``TRITON_INTERPRET`` must be set before Triton
decorates the kernels); CI's CPU-only torch has no Triton and skips them.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable

import pytest

torch = pytest.importorskip("torch")

from ftkit.backends.local.training import gate_up_swiglu  # noqa: E402

from .conftest import kernel_device  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def stock_mlp_activation(gate_up: torch.Tensor) -> torch.Tensor:
    """transformers' Phi3MLP between its two projections."""
    gate, up = gate_up.chunk(2, dim=-1)
    return up * torch.nn.functional.silu(gate)


@pytest.mark.parametrize("width", [96, 1024, 1500, 8192], ids=["narrow", "one-block", "partial-block", "phi3-mini"])
def test_the_activation_and_its_gradient_are_phi3s(width: int) -> None:
    device = kernel_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # the interpreter computes through numpy
    gen = torch.Generator().manual_seed(0)
    tokens = 13 if width < 8192 or device.type == "cuda" else 3
    source = (torch.randn(tokens, 2 * width, generator=gen) * 3).to(device, dtype)
    grad = torch.randn(tokens, width, generator=gen).to(device, dtype)
    assert gate_up_swiglu.usable(device)  # the on-device check passes where the kernels are right
    results = []
    for function in (gate_up_swiglu.swiglu, stock_mlp_activation):
        leaf = source.clone().requires_grad_(True)
        out = function(leaf * 1)  # a projection's output: a non-leaf tensor
        (d_leaf,) = torch.autograd.grad(out, leaf, grad)
        results.append((out, d_leaf))
    (got, got_grad), (expected, expected_grad) = results
    assert got.shape == (tokens, width)
    tol = 1e-6 if dtype == torch.float32 else 2e-2  # bf16: transformers rounds after each operation, the kernel once
    torch.testing.assert_close(got, expected, atol=tol, rtol=tol)
    torch.testing.assert_close(got_grad, expected_grad, atol=tol, rtol=tol)


def test_the_gradient_is_written_over_the_projections_output() -> None:
    """No full-size gradient is allocated: the saved input's storage becomes its gradient (nobody else keeps it)."""
    device = kernel_device()
    leaf = torch.randn(5, 2 * 64, device=device, requires_grad=True)
    gate_up = leaf * 2
    out = gate_up_swiglu.swiglu(gate_up)
    seen = []
    gate_up.register_hook(lambda g: seen.append(g.data_ptr()))
    out.sum().backward()
    assert seen == [gate_up.data_ptr()]
    assert leaf.grad is not None


def test_a_phi3_model_with_the_kernel_computes_the_stock_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel inside a tiny LoRA'd Phi-3's MLPs: the same logits and every gradient (float32, interpreter; the
    bf16 comparison on a GPU is test_fast_layers_gpu.py's ``phi3-gate-up-swiglu``)."""
    if kernel_device().type == "cuda":
        pytest.skip("on a GPU, test_fast_layers_gpu.py compares in bf16")
    from .test_fast_layers import assert_same, lora, packed_inputs, run, tiny_model

    reference = lora(tiny_model("phi3"))
    fast = copy.deepcopy(reference)
    assert gate_up_swiglu.install(fast) == fast.get_base_model().config.num_hidden_layers
    assert gate_up_swiglu.install(fast) == 0  # installed once
    for name in ("usable", "kernel", "_function"):  # resolved at install: a compiled layer traces the forward
        monkeypatch.setattr(gate_up_swiglu, name, lambda *args: pytest.fail("looked up inside the forward"))
    inputs = packed_inputs(reference)
    assert_same(run(fast, inputs), run(reference, inputs))


def test_install_leaves_other_models_and_activations_alone() -> None:
    from .test_fast_layers import tiny_model

    assert gate_up_swiglu.install(tiny_model("llama")) == 0  # separate gate and up projections: nothing to fuse
    model = tiny_model("phi3")
    model.config.hidden_act = "gelu_pytorch_tanh"
    assert gate_up_swiglu.install(model) == 0


def test_the_mlps_own_forward_stays_where_the_kernel_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a device where the kernels are not usable, nothing is installed: the forward the MLP had (liger's, or its
    class's) stays."""
    from .test_fast_layers import tiny_model

    model = tiny_model("phi3")
    mlp = model.model.layers[0].mlp
    own = mlp.forward
    monkeypatch.setattr(gate_up_swiglu, "usable", lambda _device: False)
    assert gate_up_swiglu.install(model) == 0
    assert mlp.forward == own


def test_a_tensor_it_cannot_read_is_refused() -> None:
    with pytest.raises(ValueError, match="unit last stride"):
        gate_up_swiglu.swiglu(torch.randn(8, 4).t())
    with pytest.raises(ValueError, match=r"2 width"):
        gate_up_swiglu.swiglu(torch.randn(4, 7))


def test_the_self_checks_reference_is_phi3s_activation() -> None:
    source = torch.randn(6, 2 * 40)
    torch.testing.assert_close(gate_up_swiglu.reference(source), stock_mlp_activation(source))


@pytest.mark.skipif(INTERPRETED, reason="runs the interpreter itself")
@pytest.mark.skipif(torch.cuda.is_available(), reason="the kernels run compiled on this machine's GPU")
def test_under_the_triton_interpreter(under_triton_interpreter: Callable[[str], str]) -> None:
    assert "passed" in under_triton_interpreter(__file__)
