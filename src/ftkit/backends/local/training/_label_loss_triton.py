"""Strictly private: the Triton program behind :mod:`.label_loss` (which documents and types its wrapper).

Triton kernels take pointers, strides and compile-time constants, which have no Python types to check; mypy is
told so for this module alone (pyproject.toml), and nothing outside :mod:`.label_loss` calls them.

One program per row of logits: a pass over the row for its maximum and the sum of exponentials (online, in
blocks of ``BLOCK`` columns, float32), the row's cross-entropy ``logsumexp(x) - x[target]`` stored, and, with
``GRAD``, a second pass that writes the gradient ``softmax(x) - onehot(target)`` over the logits.
"""

import triton
import triton.language as tl


@triton.jit
def _cross_entropy(logits, stride, targets, losses, n_cols, GRAD: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_ptr = logits + row * stride
    target = tl.load(targets + row).to(tl.int64)
    top = tl.full((BLOCK,), float("-inf"), tl.float32)
    total = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
        new_top = tl.maximum(top, x)
        # lanes that have seen no column yet stay at -inf: their sum stays 0 (exp of -inf - -inf is nan)
        total = tl.where(new_top == float("-inf"), 0.0, total * tl.exp(top - new_top) + tl.exp(x - new_top))
        top = new_top
    row_max = tl.max(top, 0)
    lse = row_max + tl.log(tl.sum(total * tl.exp(top - row_max), 0))
    tl.store(losses + row, lse - tl.load(x_ptr + target).to(tl.float32))
    if GRAD:
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < n_cols
            x = tl.load(x_ptr + cols, mask=mask, other=0.0).to(tl.float32)
            grad = tl.exp(x - lse) - tl.where(cols == target, 1.0, 0.0)
            tl.store(x_ptr + cols, grad.to(logits.dtype.element_ty), mask=mask)
