"""The head's cross-entropy at the label positions without a host synchronisation inside the step.

liger-kernel's fused linear cross-entropy (the loop's loss on CUDA otherwise, see :mod:`..loss`) reads the label
count back to the host in its forward (``.item()``) and compares the incoming gradient with 1 in its backward
(``torch.equal``): two waits for the GPU per micro-batch, after which the GPU idles while the host launches the
next kernels (the profile in docs/benchmarks.md: the GPU idle for 15% of a step). Here the same computation (a
chunk of rows' logits at a time, the loss and the logits' gradient from one Triton kernel, the input's gradient
from the chunk's gradient, logits never kept) returns the sum (the loop divides by the label count it already has
on the host) and scales the input's gradient by the incoming one on the device.

For a frozen head without bias (LoRA, the default), all targets valid (the loop passes label positions only).
Checked once per device against plain torch, values and gradient (:mod:`.kernel_check`); switched by
``TUNING["sync_free_loss"]``, off until measured on a GPU.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from . import kernel_check

__all__ = ["applies", "cross_entropy", "reference", "usable"]

_BLOCK = 4096  # columns a pass: a 32k vocabulary in 8 blocks, a 128k one in 32

available = kernel_check.available


def applies(weight: Any, bias: Any) -> bool:
    """Whether this loss computes the head's: a frozen weight and no bias (else the caller's own loss runs)."""
    return bias is None and not weight.requires_grad


def usable(device: Any) -> bool:
    """Whether to use :func:`cross_entropy` on ``device``: :func:`available`, and its kernel works there."""
    return kernel_check.usable(device, _self_check)


def reference(hidden: Any, weight: Any, targets: Any) -> Any:
    """:func:`cross_entropy` in plain torch: the float32 sum of the rows' cross-entropies."""
    import torch

    logits = torch.nn.functional.linear(hidden, weight).float()
    return torch.nn.functional.cross_entropy(logits, targets, reduction="sum")


def _compare(torch: Any, device: str) -> bool:
    """Strictly private: whether the kernel's loss and input gradient are the reference's."""
    gen = torch.Generator().manual_seed(0)
    rows, width, vocab = 37, 16, _BLOCK + 300  # several chunks, two column blocks, the second partial
    weight = torch.randn(vocab, width, generator=gen).to(device)
    targets = torch.randint(0, vocab, (rows,), generator=gen).to(device)
    source = torch.randn(rows, width, generator=gen) * 3
    results = []
    for function in (cross_entropy, reference):
        hidden = source.to(device).requires_grad_(True)
        loss = function(hidden, weight, targets) * 0.5  # an incoming gradient other than 1
        (grad,) = torch.autograd.grad(loss, hidden)
        results.append((loss, grad))
    return all(torch.allclose(a, b, atol=1e-4, rtol=1e-4) for a, b in zip(*results, strict=True))


# the kernel against plain torch on a small float32 input, forward and backward, once per device
_self_check = kernel_check.once_per_device(_compare, "the sync-free label loss kernel", "liger-kernel's fused loss")


@functools.cache
def _function() -> Any:
    """The autograd function, built on first use (it subclasses ``torch.autograd.Function``)."""
    import torch
    import triton

    from . import _label_loss_triton as kernels

    class LabelCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, hidden: Any, weight: Any, targets: Any) -> Any:
            rows, width = hidden.shape
            vocab = weight.shape[0]
            grad = hidden.requires_grad
            # logits of a chunk hold about as many elements as the hidden states: memory stays flat in the vocab
            chunk = min(rows, triton.next_power_of_2(max(1, math.ceil(rows / math.ceil(vocab / width)))))
            losses = torch.empty(rows, dtype=torch.float32, device=hidden.device)
            grad_hidden = torch.empty_like(hidden) if grad else None
            for start in range(0, rows, chunk):
                end = min(start + chunk, rows)
                logits = torch.mm(hidden[start:end], weight.t())
                kernels._cross_entropy[(end - start,)](
                    logits, logits.stride(0), targets[start:end], losses[start:end], vocab, GRAD=grad, BLOCK=_BLOCK
                )
                if grad_hidden is not None:  # the logits now hold their gradient
                    torch.mm(logits, weight, out=grad_hidden[start:end])
            ctx.save_for_backward(grad_hidden)
            return losses.sum()

        @staticmethod
        def backward(ctx: Any, grad_output: Any) -> tuple[Any, None, None]:
            (grad_hidden,) = ctx.saved_tensors
            # the incoming gradient stays on the device: no comparison with 1 read back to the host
            return grad_hidden * grad_output.to(grad_hidden.dtype), None, None

    return LabelCrossEntropy


def cross_entropy(hidden: Any, weight: Any, targets: Any) -> Any:
    """The float32 sum of ``cross_entropy(hidden @ weight.T, targets)`` over the rows, with no host wait.

    Args:
        hidden: Hidden states at the label positions, (labels, hidden size).
        weight: The frozen head's weight, (vocabulary, hidden size).
        targets: The labels, (labels,), every one a valid class.
    """
    if hidden.shape[0] == 0:
        return hidden.float().sum() * 0.0  # keeps the graph: a micro-batch without labels still backpropagates
    return _function().apply(hidden.contiguous(), weight, targets.contiguous())
