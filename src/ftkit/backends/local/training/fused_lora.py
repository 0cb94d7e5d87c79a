"""A LoRA'd linear layer in one autograd node: the adapter's scale and add in the GEMM epilogue.

peft's ``lora.Linear`` computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling``: besides the three products,
a full-size multiply by ``scaling`` and a full-size add in the forward, and their counterparts in the backward
(on Phi-3-mini's shape, part of the 14% of GPU time spent in element-wise kernels). :func:`install` gives each
eligible peft layer a forward that computes the same function with ``addmm_``'s ``alpha`` (scale and add inside
the GEMM) and a hand-written backward with the same fusion for the input gradient.

Only where it computes exactly what peft does: a plain ``nn.Linear`` base, vanilla LoRA (no DoRA or other
variant, no LoRA bias), dropout 0, no ``fan_in_fan_out``. Conditions that can change while a model lives are
checked at every call, and peft's own forward runs whenever one fails: adapters disabled (``disable_adapter()``)
or merged, several or no active adapters, evaluation (module in eval mode or no gradient recording), autocast,
inputs or adapters in another dtype than the base weight, extra arguments (``adapter_names``), hooks on the base
layer or on the adapters, a replaced base-layer forward. The adapter weights stay peft's own parameters: saving,
resuming and merging are unchanged.

torch is imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

__all__ = ["install", "lora_linear_function"]


@functools.cache
def lora_linear_function(in_epilogue: bool = False) -> Any:
    """The autograd function ``(x, weight, bias, lora_a, lora_b, scaling) -> x W^T + b + s (x A^T) B^T``.

    ``x`` is 2-D (tokens, in features); ``bias`` may be ``None``. Built on first use (it subclasses
    ``torch.autograd.Function``), once per variant.

    Args:
        in_epilogue: The order of the two full-size products, in the forward and for the input gradient.
            ``False``: the base GEMM writes the result, then the adapter's thin product (inner dimension r)
            reads and writes it again (``addmm_``): two memory-bound passes over a tokens x features tensor.
            ``True``: the thin product writes the result first and the base GEMM adds it in its epilogue
            (``beta=1``), where reading it overlaps a compute-bound kernel: one memory-bound pass.
    """
    import torch

    class LoraLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any, weight: Any, bias: Any, lora_a: Any, lora_b: Any, scaling: float) -> Any:
            xa = torch.mm(x, lora_a.t())  # (tokens, r): small, kept for B's gradient
            if in_epilogue:
                scaled = xa * scaling  # the scale on the thin tensor, not on the result
                out = torch.mm(scaled, lora_b.t()) if bias is None else torch.addmm(bias, scaled, lora_b.t())
                out.addmm_(x, weight.t())  # the base product adds onto the adapter's share (beta=1)
            else:
                out = torch.nn.functional.linear(x, weight, bias)
                out.addmm_(xa, lora_b.t(), alpha=scaling)  # += s * xa B^T, scale and add in the GEMM's epilogue
            ctx.save_for_backward(x, weight, lora_a, lora_b, xa)
            ctx.scaling = scaling
            return out

        @staticmethod
        def backward(ctx: Any, grad: Any) -> tuple[Any, ...]:
            x, weight, lora_a, lora_b, xa = ctx.saved_tensors
            need_x, need_w, need_bias, need_a, need_b, _ = ctx.needs_input_grad
            s = ctx.scaling
            grad_x = grad_w = grad_bias = grad_a = grad_b = None
            # the gradient at A's output, (tokens, r): the scale applied to this small tensor, not to `grad`
            grad_xa: Any = torch.mm(grad, lora_b).mul_(s) if need_x or need_a else None
            if need_x and in_epilogue:
                grad_x = torch.mm(grad_xa, lora_a)
                grad_x.addmm_(grad, weight)  # the base product adds onto the adapter's share (beta=1)
            elif need_x:
                grad_x = torch.mm(grad, weight)
                grad_x.addmm_(grad_xa, lora_a)  # the adapter's share added in the GEMM's epilogue
            if need_w:
                grad_w = torch.mm(grad.t(), x)
            if need_bias:
                grad_bias = grad.sum(0)
            if need_a:
                grad_a = torch.mm(grad_xa.t(), x)
            if need_b:
                grad_b = torch.mm(grad.t(), xa).mul_(s)
            return grad_x, grad_w, grad_bias, grad_a, grad_b, None

    return LoraLinear


def _adapter(module: Any, x: Any, torch: Any) -> tuple[Any, Any, float] | None:
    """Strictly private: the active adapter's A and B weights and scale, when the fused path computes peft's."""
    if module.disable_adapters or module.merged or not module.training or not torch.is_grad_enabled():
        return None
    if torch.is_autocast_enabled(x.device.type):
        return None
    active = module.active_adapters
    if len(active) != 1:
        return None
    name = active[0]
    if name not in module.lora_A or name in getattr(module, "lora_variant", {}) or module.use_dora.get(name, False):
        return None
    if not isinstance(module.lora_dropout[name], torch.nn.Identity):
        return None
    base, lora_a, lora_b = module.base_layer, module.lora_A[name], module.lora_B[name]
    if lora_b.bias is not None or not (x.dtype == base.weight.dtype == lora_a.weight.dtype == lora_b.weight.dtype):
        return None
    hooked = (base, lora_a, lora_b)
    if any(m._forward_hooks or m._forward_pre_hooks for m in hooked):  # a hook expects its module to run
        return None
    if "forward" in vars(base):  # a replaced base forward (e.g. .cpu_bf16's bf16 products) must run
        return None
    hooks = torch.nn.modules.module
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
        return None
    return lora_a.weight, lora_b.weight, float(module.scaling[name])


def _make_forward(torch: Any, function: Any) -> Callable[..., Any]:
    """Strictly private: the installed forward; peft's own wherever the fused one would not compute the same.

    ``torch`` and the autograd function come in through the closure: a compiled layer traces this forward, and
    building the function's class inside a traced call would break the graph.
    """

    def forward(module: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
        adapter = None if args or kwargs else _adapter(module, x, torch)
        if adapter is None:
            return type(module).forward(module, x, *args, **kwargs)
        lora_a, lora_b, scaling = adapter
        base = module.base_layer
        flat = x.reshape(-1, x.shape[-1])  # the leading dimensions folded: a view for a contiguous input
        out = function.apply(flat, base.weight, base.bias, lora_a, lora_b, scaling)
        return out.view(*x.shape[:-1], out.shape[-1])

    return forward


def install(model: Any, *, in_epilogue: bool = False) -> int:
    """Give each eligible peft ``lora.Linear`` of ``model`` the fused forward; return how many got it.

    Eligible: peft's plain ``lora.Linear`` (not its bitsandbytes or other subclasses) over a plain
    ``torch.nn.Linear`` without ``fan_in_fan_out``, whose forward nobody replaced. The rest of the conditions
    are checked at each call (see the module's description). ``in_epilogue`` picks the order of the two
    full-size products (see :func:`lora_linear_function`).
    """
    import torch

    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:
        return 0
    count = 0
    forward = _make_forward(torch, lora_linear_function(in_epilogue))
    for module in model.modules():
        if type(module) is not LoraLinear or type(module.base_layer) is not torch.nn.Linear:
            continue
        if module.fan_in_fan_out or "forward" in vars(module):
            continue
        setattr(module, "forward", types.MethodType(forward, module))  # noqa: B010 - an instance attribute
        count += 1
    return count
