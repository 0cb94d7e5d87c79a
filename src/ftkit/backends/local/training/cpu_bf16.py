"""The frozen base's matrix products in bfloat16 on a CPU that computes it natively; everything else in float32.

LoRA on a CPU spends most of a step in the matrix products of the frozen base projections (the profile in
docs/benchmarks.md: ``aten::mm`` 68% of a float32 step), and a CPU with AVX512-BF16 or AMX computes them about 3x
faster in bfloat16. Training the whole model in bfloat16 (``precision: 16``) loses small LoRA updates in the sum
with bf16 activations, so here only those products change: each LoRA-wrapped linear layer keeps its float32
weight (for saving and merging) and gains a bfloat16 copy, and its forward computes ``x @ W.T`` from a bf16 cast
of ``x`` and that copy, returning float32. The residual stream, norms, attention, the head, the LoRA A/B products
and their gradients stay float32, so an update is added to float32 activations as in a float32 run.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BUFFER", "base_linears", "disable", "enable"]

BUFFER = "ftkit_bf16_weight"  # the bf16 copy, a non-persistent buffer (state dicts and saved models never see it)


def base_linears(torch: Any, model: Any) -> list[Any]:
    """The frozen ``nn.Linear`` layers under the model's LoRA layers (peft's ``base_layer``)."""
    found = []
    for module in model.modules():
        base = getattr(module, "base_layer", None)
        if hasattr(module, "lora_A") and isinstance(base, torch.nn.Linear) and not base.weight.requires_grad:
            found.append(base)
    return found


def enable(torch: Any, model: Any) -> int:
    """Compute the frozen base projections of ``model`` from bfloat16 copies; return how many layers changed."""
    linear = torch.nn.functional.linear
    layers = base_linears(torch, model)
    for layer in layers:
        layer.register_buffer(BUFFER, layer.weight.detach().to(torch.bfloat16), persistent=False)

        def forward(x: Any, layer: Any = layer) -> Any:
            out = linear(x.to(torch.bfloat16), getattr(layer, BUFFER)).to(x.dtype)
            # The bias is added in float32 (the product is the only part that gains from bf16).
            return out if layer.bias is None else out + layer.bias

        # An instance attribute: nn.Module.__call__ finds it before the class's forward; the float32 weight,
        # the module's type and its state dict stay as they were.
        layer.forward = forward
    return len(layers)


def disable(torch: Any, model: Any) -> None:
    """Undo :func:`enable`: the layers compute from their float32 weights again (before merging or saving)."""
    for layer in base_linears(torch, model):
        if BUFFER in layer._buffers:
            del layer._buffers[BUFFER]
        layer.__dict__.pop("forward", None)
