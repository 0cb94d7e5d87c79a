"""Strictly private: the Triton program behind :mod:`.gate_up_swiglu` (which documents and types its wrapper).

Triton kernels take pointers, strides and compile-time constants, which have no Python types to check; mypy is
told so for this module alone (pyproject.toml), and nothing outside :mod:`.gate_up_swiglu` calls them.

A program per token row and block of ``BLOCK`` columns, both directions. Row ``r`` of the projection's output
holds the gate in columns ``[0, width)`` and the up half in ``[width, 2 width)``. Forward:
``h = silu(gate) * up``, with silu in float32 rounded to the input's type before the product (as liger-kernel and
transformers' bf16 modules round). Backward, recomputing silu: ``d_up = dh silu(gate)``,
``d_gate = dh up sigmoid(gate) (1 + gate (1 - sigmoid(gate)))``, in float32, rounded once, written over the saved
projection output in place (its gradient has its shape and layout).
"""

import triton
import triton.language as tl


@triton.jit
def _gate_up_swiglu(
    gate_up,
    hidden,
    grad,
    gate_up_stride,
    hidden_stride,
    grad_stride,
    width,
    BACKWARD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < width
    gate_ptr = gate_up + row * gate_up_stride + cols
    gate = tl.load(gate_ptr, mask=mask, other=0.0)
    up = tl.load(gate_ptr + width, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    sig = tl.sigmoid(g)
    silu = g * sig
    if BACKWARD:
        dh = tl.load(grad + row * grad_stride + cols, mask=mask, other=0.0).to(tl.float32)
        d_up = dh * silu
        d_gate = dh * up.to(tl.float32) * (silu * (1.0 - sig) + sig)
        tl.store(gate_ptr, d_gate.to(gate.dtype), mask=mask)
        tl.store(gate_ptr + width, d_up.to(gate.dtype), mask=mask)
    else:
        h = silu.to(gate.dtype) * up
        tl.store(hidden + row * hidden_stride + cols, h, mask=mask)
