"""QLoRA: a frozen base in 4-bit NF4 (bitsandbytes) under bf16 LoRA adapters, and a merge that is checked.

``local.quantize: 4bit`` loads the base model's linear layers as bitsandbytes ``Linear4bit`` (NF4, double
quantization of the scales, bfloat16 compute): about 0.52 bytes a weight instead of 2, so a Llama-3-8B-shaped
model holds ~5.3 GiB of weights (2 GiB of them the bf16 embeddings and head, which stay unquantized). The
adapters train exactly as on a bf16 base (bf16 in the model, float32 masters in the optimizer).

Preparing the model follows peft's ``prepare_model_for_kbit_training`` except for one step: peft also casts every
non-quantized weight (norms, embeddings, head) to float32. ftkit keeps them in bfloat16: the RMSNorms already
compute in float32 inside (transformers' and liger-kernel's), the base is frozen so no update is rounded, and
float32 embeddings and head would cost another 2 GiB on a Llama-3-8B shape and force float32 logits through
the fused loss.

**Merging.** A merged model must compute what the adapter model computed, and the adapter was trained on top of
the *quantized* base. So the merge de-quantizes each 4-bit weight to bf16 (the very values the forward pass
used), adds ``B @ A * scaling`` in float32, and rounds once to bf16. Merging into the original bf16 weights
instead, or re-quantizing after the merge (what peft's ``merge_and_unload`` does on a 4-bit model), gives
another model (peft issues 1043, 2105, 2321). Before the merged model is saved and registered, its loss on
held-out conversations is compared with the adapter model's; beyond :data:`MERGE_TOLERANCE` the run fails,
naming both numbers, with the adapter saved beside it (nothing is lost).

bitsandbytes, torch and peft are imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...exceptions import MissingDependencyError, Problem, ValidationError

__all__ = ["MERGE_TOLERANCE", "check_merge"]

# Relative difference allowed between the merged model's held-out loss and the adapter model's. Both compute
# with the same de-quantized weights up to one rounding of (W + BA) to bf16 (2^-9 of a weight, against ~10% for
# NF4's rounding) and other kernels (bitsandbytes', liger-kernel's); a merge that lost an adapter, merged into
# the original weights, or re-quantized moves the loss by the quantization's or the adapter's effect.
MERGE_TOLERANCE = 0.005
# Absolute floor of the tolerance, for losses near zero (a memorised toy set).
MERGE_TOLERANCE_ABS = 0.002


def bitsandbytes() -> Any:
    """Import bitsandbytes, or raise :class:`MissingDependencyError` naming the ``qlora`` extra."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise MissingDependencyError("bitsandbytes", "qlora") from None
    return bnb


def require_device(device: str, apply_lora: bool, quantize: str) -> None:
    """Raise :class:`ValidationError` when a quantized run cannot work here (CPU, or no LoRA)."""
    problems = []
    if device != "cuda":
        problems.append(
            Problem(
                "local.quantize",
                f"{quantize} weights need a CUDA GPU (bitsandbytes' kernels); this run is on the {device}",
                "run on a machine with a CUDA GPU, or remove local.quantize",
            )
        )
    if not apply_lora:
        problems.append(
            Problem(
                "local.quantize",
                f"{quantize} weights are frozen: they train only with LoRA (apply_lora is false)",
                "set apply_lora: true or remove local.quantize",
            )
        )
    if problems:
        raise ValidationError(problems, "QLoRA cannot run here")


def quantization_config(torch: Any, compute_dtype: Any) -> Any:
    """The transformers ``BitsAndBytesConfig`` of ``quantize: 4bit``: NF4, double quantization, bf16 compute."""
    bitsandbytes()
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(  # type: ignore[no-untyped-call]  # transformers leaves its __init__ untyped
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype if compute_dtype != torch.float32 else torch.bfloat16,
        bnb_4bit_quant_storage=torch.uint8,
    )


def freeze(model: Any) -> None:
    """Freeze every base weight (peft's k-bit preparation without its float32 upcast: see the module docstring)."""
    for param in model.parameters():
        param.requires_grad_(False)


def cast_adapters(model: Any, dtype: Any) -> None:
    """Hold the trainable (adapter) weights in ``dtype``.

    peft creates the adapters of a 4-bit layer in float32 (it cannot take the dtype of a uint8 weight); in the
    compute dtype no layer casts between float32 adapters and bf16 activations, as on a bf16 base.
    """
    for param in model.parameters():
        if param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)


def quantized_linears(model: Any) -> dict[str, Any]:
    """The model's 4-bit linear layers by module name (empty for a model without them, or no bitsandbytes)."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return {}
    return {name: m for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}


def scratch_bytes(model: Any, dtype_bytes: int) -> int:
    """GPU memory the 4-bit layers need beyond their weights: de-quantized copies of the largest weight.

    A 4-bit layer de-quantizes its weight for the forward product and again for the input gradient; those
    copies live only inside the layer, so two of the largest are the most held at once.
    """
    sizes = [int(m.weight.quant_state.shape.numel()) for m in quantized_linears(model).values()]
    return 2 * dtype_bytes * max(sizes, default=0)


def dequantized_weights(model: Any) -> dict[str, Any]:
    """Each 4-bit layer's weight de-quantized (the values the forward pass used), on the CPU, by module name."""
    layers = quantized_linears(model)
    if not layers:
        return {}
    bnb = bitsandbytes()
    return {
        name: bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state).cpu() for name, m in layers.items()
    }


def load_merged(plain: Any, base_weights: Mapping[str, Any], adapters: Mapping[str, Any]) -> Any:
    """Merge trained adapters into a plain (unquantized) peft model whose base gets ``base_weights``.

    Args:
        plain: A peft LoRA model of the same base and LoRA settings, built unquantized (bf16), on any device.
        base_weights: Weights to put into its base layers first, by module name (the de-quantized 4-bit
            weights; empty to merge into the base as it is).
        adapters: The trained adapter weights by parameter name (float32 masters).

    Returns:
        The merged plain model (peft's ``merge_and_unload``: each ``W + B @ A * scaling``, computed in float32
        from float32 adapters and rounded once to the base's dtype).
    """
    import torch

    modules = dict(plain.named_modules())
    params = dict(plain.named_parameters())
    missing = [k for k in adapters if k not in params] + [k for k in base_weights if k not in modules]
    if missing:
        raise ValueError(f"the merge found no place for {len(missing)} weights, e.g. {missing[0]}")
    with torch.no_grad():
        for name, weight in base_weights.items():
            target = modules[name].weight
            target.copy_(weight.to(target.device, target.dtype))
        for name, value in adapters.items():
            params[name].data = value.detach().to(params[name].device, torch.float32)
    return plain.merge_and_unload()


def check_merge(adapter_loss: float, merged_loss: float, *, saved_adapter: str | None = None) -> None:
    """Raise :class:`ValidationError` when the merged model's loss is not the adapter model's.

    Args:
        adapter_loss: Held-out loss of the trained (quantized base + adapter) model.
        merged_loss: The same conversations' loss under the merged model.
        saved_adapter: Where the adapter was saved, for the message.

    Raises:
        ValidationError: ``|merged - adapter|`` over ``max(MERGE_TOLERANCE * adapter, MERGE_TOLERANCE_ABS)``,
            or a loss that is not finite.
    """
    allowed = max(MERGE_TOLERANCE * abs(adapter_loss), MERGE_TOLERANCE_ABS)
    diff = abs(merged_loss - adapter_loss)
    if diff <= allowed:  # False for NaN too
        return
    where = f"; the adapter is saved in {saved_adapter}" if saved_adapter else ""
    raise ValidationError(
        [
            Problem(
                "merge_lora_weights",
                f"the merged model's held-out loss {merged_loss:.4f} differs from the adapter model's "
                f"{adapter_loss:.4f} by {diff:.4f}, over the tolerance {allowed:.4f} "
                f"({MERGE_TOLERANCE:.0%} of the adapter's loss){where}",
                "register the adapter instead (merge_lora_weights: false) and report this as a bug",
            )
        ],
        "the merged model does not match the trained adapter",
    )
