"""SwiGLU on a fused gate/up projection's output in one pass, and its gradient in one pass back.

Phi-3's MLP computes ``gate_up_proj(x)`` and splits it with ``chunk(2)``: gate and up are strided halves of one
tensor. liger-kernel's SwiGLU copies both halves to contiguous tensors first (its ``ensure_contiguous``), and in
the backward the chunk's gradient is a concatenation of the two halves' gradients: two full-size copies of the
projection's output (tokens x 2 x intermediate size) a layer, forward and back, around a kernel that reads and
writes as much. :func:`swiglu` reads both halves where the projection wrote them, and its backward writes the
gradients of both over the saved projection output, which becomes the projection's gradient without a copy.

Used by :func:`install` for Phi-3's MLP on CUDA when Triton is there and :func:`usable` (a one-time check of the
compiled kernels against plain torch on the device) says so (``TUNING["gate_up_swiglu"]``); tested against the
stock MLP in value and gradient, on the GPU and under Triton's interpreter. On by default since measured on an
H100 (docs/benchmarks.md).
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

from . import kernel_check

__all__ = ["available", "install", "kernel", "reference", "swiglu", "usable"]

# model type -> the MLP class whose forward :func:`install` replaces (a fused gate_up projection, SiLU)
SUPPORTED = {"phi3": "Phi3MLP"}
_BLOCK = 1024  # columns a program: the kernel is memory-bound; more programs, not wider ones, fill the GPU

available = kernel_check.available


def usable(device: Any) -> bool:
    """Whether to use :func:`swiglu` on ``device``: :func:`available`, and its kernels work there.

    The compiled kernels must compute :func:`reference`'s values and gradients (checked once per device, see
    :mod:`.kernel_check`); otherwise the MLP's own forward runs.
    """
    return kernel_check.usable(device, _self_check)


def _compare(torch: Any, device: str) -> bool:
    """Strictly private: whether the kernels' values and gradients are the reference's."""
    gen = torch.Generator().manual_seed(0)
    tokens, width = 7, _BLOCK + 37  # two column blocks, the second partial: every mask
    source = torch.randn(tokens, 2 * width, generator=gen)
    grad = torch.randn(tokens, width, generator=gen).to(device)
    results = []
    for function in (swiglu, reference):
        gate_up = source.to(device).requires_grad_(True)
        out = function(gate_up * 1.0)  # a non-leaf input, as in a model: the kernel writes its gradient over it
        (d_gate_up,) = torch.autograd.grad(out, gate_up, grad)
        results.append((out, d_gate_up))
    return all(torch.allclose(a, b, atol=1e-5, rtol=1e-5) for a, b in zip(*results, strict=True))


# the kernels against plain torch on a small float32 input, forward and backward, once per device
_self_check = kernel_check.once_per_device(_compare, "the fused gate/up SwiGLU kernel", "the MLP's own forward")


def reference(gate_up: Any) -> Any:
    """:func:`swiglu` in plain torch: ``silu(gate) * up`` of the two halves (Phi-3's MLP)."""
    import torch

    gate, up = gate_up.chunk(2, dim=-1)
    return up * torch.nn.functional.silu(gate)


@functools.cache
def _function() -> Any:
    """The autograd function, built on first use (it subclasses ``torch.autograd.Function``)."""
    import torch
    import triton

    from . import _gate_up_swiglu_triton as kernels

    def launch(gate_up: Any, hidden: Any, grad: Any, backward: bool) -> None:
        rows, width = hidden.shape if hidden is not None else grad.shape
        kernels._gate_up_swiglu[(rows, triton.cdiv(width, _BLOCK))](
            gate_up, hidden, grad, gate_up.stride(0), 0 if hidden is None else hidden.stride(0),
            0 if grad is None else grad.stride(0), width, BACKWARD=backward, BLOCK=_BLOCK,
        )  # fmt: skip

    class GateUpSwiglu(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, gate_up: Any) -> Any:
            rows, width = gate_up.shape[0], gate_up.shape[1] // 2
            hidden = torch.empty((rows, width), dtype=gate_up.dtype, device=gate_up.device)
            launch(gate_up, hidden, None, backward=False)
            ctx.save_for_backward(gate_up)
            return hidden

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            (gate_up,) = ctx.saved_tensors
            if grad.stride(-1) != 1:
                grad = grad.contiguous()
            # the projection's output is needed by nobody else: its gradient is written over it
            launch(gate_up, None, grad, backward=True)
            return gate_up

    return GateUpSwiglu


def swiglu(gate_up: Any) -> Any:
    """``silu(gate) * up`` of a fused projection's output ``[tokens, 2 width]`` (gate first), ``[tokens, width]``.

    The backward writes the input's gradient over the input (saved for it, and needed by nobody else in a
    model's MLP): pass a tensor that nothing else keeps for its backward.
    """
    _require_layout(gate_up)  # before building the kernel: a wrong input is the caller's error wherever it runs
    return _function().apply(gate_up)


def _require_layout(gate_up: Any) -> None:
    """Strictly private: refuse what the kernel cannot read (a strided last dimension, an odd width)."""
    if gate_up.stride(-1) != 1 or gate_up.shape[-1] % 2:
        raise ValueError(f"expected [tokens, 2 width] with a unit last stride, got {tuple(gate_up.shape)}")


def _apply(function: Any, gate_up: Any) -> Any:
    """Strictly private: :func:`swiglu` through an already built autograd function."""
    _require_layout(gate_up)
    return function.apply(gate_up)


def kernel(device: Any) -> Callable[[Any], Any] | None:
    """:func:`swiglu` for a model's forward on ``device``, or ``None`` where it is not :func:`usable` there.

    Resolved once, when the forward is installed: the returned function touches no cache and runs no check, so a
    layer compiled with ``torch.compile`` traces the kernel's call only.
    """
    if not usable(device):
        return None
    function = _function()
    return lambda gate_up: _apply(function, gate_up)


def _make_forward(swiglu: Callable[[Any], Any]) -> Callable[..., Any]:
    """Strictly private: an MLP forward through ``swiglu``, as :func:`kernel` resolved it.

    A compiled layer traces this forward: nothing in it may run a check or a cached builder.
    """

    def forward(module: Any, hidden_states: Any) -> Any:
        gate_up = module.gate_up_proj(hidden_states)
        hidden = swiglu(gate_up.reshape(-1, gate_up.shape[-1]))
        return module.down_proj(hidden.view(*gate_up.shape[:-1], hidden.shape[-1]))

    forward.ftkit_gate_up_swiglu = True  # type: ignore[attr-defined]  # install() recognises its own forward
    return forward


def install(model: Any) -> int:
    """Give the fused gate/up SiLU MLPs of a supported model (:data:`SUPPORTED`) this forward; return how many.

    An MLP keeps its own forward (liger-kernel's SwiGLU where it replaced it) where another activation is
    configured, and every MLP does where the kernel is not :func:`usable` on the model's device (decided here,
    once).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    class_name = SUPPORTED.get(str(getattr(config, "model_type", "")))
    if class_name is None or getattr(config, "hidden_act", None) not in ("silu", "swish"):
        return 0
    resolved = kernel(next(base.parameters()).device)
    if resolved is None:
        return 0
    count = 0
    for module in base.modules():
        if type(module).__name__ != class_name or not hasattr(module, "gate_up_proj"):
            continue
        if getattr(getattr(module.forward, "__func__", None), "ftkit_gate_up_swiglu", False):
            continue
        module.forward = types.MethodType(_make_forward(resolved), module)
        count += 1
    return count
