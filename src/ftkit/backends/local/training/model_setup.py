"""Building the model a run trains: the base in its compute dtype, the fast kernels, the LoRA adapters.

:func:`build_model` loads the base (4-bit for QLoRA, see :mod:`..qlora`), registers the varlen attention
(:mod:`..attention`) and ftkit's attention-layer forward (:mod:`.attention_forward`), applies liger-kernel's
kernels on CUDA when installed, wraps it with peft's LoRA and, on CUDA, fuses the LoRA layers (:mod:`.fused_lora`);
:func:`prepare` turns on gradient checkpointing and compiled layers as the run's plan says.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from ....exceptions import MissingDependencyError, Problem, ValidationError
from .. import attention, qlora
from . import add_norm, attention_forward, fused_lora, gate_up_swiglu
from .budget import TUNING, compiles_layers
from .hardware import import_torch

if TYPE_CHECKING:
    from .budget import Plan
    from .config import TrainConfig

__all__ = ["build_model", "causal_parts", "prepare"]


def causal_parts(model: Any) -> tuple[Any, Any] | None:
    """The decoder stack and output head, when the loss may be computed from hidden states.

    Models that change logits after the head (soft-capping, scaling) keep the stock logits path.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config
    if any(getattr(cfg, name, None) not in (None, 1, 1.0) for name in ("final_logit_softcapping", "logit_scale")):
        return None
    if getattr(cfg, "logits_scaling", None) not in (None, 1, 1.0):
        return None
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    head = base.get_output_embeddings()
    if decoder is None or head is None or not hasattr(head, "weight"):
        return None
    return decoder, head


def _apply_liger(model: Any) -> None:
    """Strictly private: liger-kernel's RMSNorm, SwiGLU and RoPE kernels for this model, when installed.

    The loss is not patched here (the loop calls liger's fused loss itself, see :mod:`.loss`).
    """
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        return
    _apply_liger_kernel_to_instance(
        model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False
    )


def build_model(config: TrainConfig, device: str, dtype: Any) -> Any:
    """The model to train: the base in ``dtype`` on ``device`` (4-bit for QLoRA), LoRA-wrapped when asked."""
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise MissingDependencyError("transformers", "local") from None
    implementation = str(TUNING["attention"])
    if implementation == attention.IMPLEMENTATION:
        attention.register()
    # The model holds its weights in the compute dtype (bf16 on CUDA: half the memory, no autocast casts); the
    # optimizer steps float32 masters of the trainable ones (see Trainables), as AdamW on bf16 weights would
    # round away updates under half a bf16 step (0.2-0.4% of a weight).
    bf16_trainables = bool(TUNING["bf16_adapters"]) or not config.apply_lora
    if config.quantize != "none":
        # 4-bit layers are placed on the GPU as they load (a quantized model cannot be moved with .to()).
        model = AutoModelForCausalLM.from_pretrained(
            config.model_dir,
            dtype=dtype,
            attn_implementation=implementation,
            quantization_config=qlora.quantization_config(import_torch(), dtype),
            device_map={"": import_torch().cuda.current_device()},
        )
        qlora.freeze(model)
    else:
        model = AutoModelForCausalLM.from_pretrained(config.model_dir, dtype=dtype, attn_implementation=implementation)
        model.to(device)  # type: ignore[arg-type]  # transformers' stub types .to() narrowly
    model.config.use_cache = False
    if device == "cuda" and TUNING["liger"]:
        _apply_liger(model)
    # Compiled layers keep transformers' own attention and peft's LoRA forward: on an H100 (torch 2.11) compiling
    # the layers with ftkit's two forwards trained nothing (the loss stayed at its first value, with 6 GiB less
    # memory, as if the adapters' backward were gone), while the eager loop and the CPU's compiled layers train
    # alike; until a GPU run shows which part the compiler mishandles, a compiled run goes without both.
    fast_layers = not compiles_layers(config, device)
    if implementation == attention.IMPLEMENTATION and TUNING["split_qkv"] and fast_layers:
        attention_forward.install(model, fused_rope=bool(TUNING["split_rope"]))
    if device == "cuda" and TUNING["gate_up_swiglu"] and fast_layers:
        gate_up_swiglu.install(model)  # over liger's SwiGLU forward, which stays where the kernel cannot run
    if device == "cuda" and TUNING["liger"] and TUNING["fused_add_norm"] and fast_layers:
        add_norm.install(model)  # the layers whose norms liger replaced, where its fused kernel is there
    if not config.apply_lora:
        return model
    try:
        import peft
    except ImportError:
        raise MissingDependencyError("peft", "local") from None
    lora = peft.LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules) if config.lora_target_modules else "all-linear",
        task_type="CAUSAL_LM",
    )
    try:
        with warnings.catch_warnings():
            # peft 0.21 calls a transformers 5 method deprecated in favour of another name; not ours to fix.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            # autocast_adapter_dtype=False: adapters in the base's dtype (bf16 on CUDA; float32 on a CPU), so
            # no layer casts between float32 adapters and a bf16 base (measured: 17.4% -> 23.1% MFU on an H100)
            adapted = peft.get_peft_model(model, lora, autocast_adapter_dtype=not bf16_trainables)
    except ValueError as exc:  # e.g. target modules that the model does not have
        names = sorted({n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n})
        raise ValidationError(
            [Problem("lora_target_modules", str(exc).splitlines()[0], f"modules in this model: {', '.join(names)}")],
            "invalid LoRA settings",
        ) from None
    if config.quantize != "none" and bf16_trainables:
        qlora.cast_adapters(adapted, dtype)
    if device == "cuda" and TUNING["fused_lora"] and fast_layers:
        # CUDA only, where the profile asked for it. A CPU with native bf16 replaces the base layers' forward
        # (.cpu_bf16), where it falls back to peft's; on a float32 CPU it measured ~4% faster (SmolLM2's layer
        # shape, one thread) but the CPU path is left as it was measured in docs/benchmarks.md.
        fused_lora.install(adapted, in_epilogue=bool(TUNING["lora_in_epilogue"]))
    return adapted


def prepare(model: Any, plan: Plan) -> None:
    """Gradient checkpointing and compiled layers, as the plan says."""
    if plan.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if plan.compile_layers:
        parts = causal_parts(model)
        if parts is not None:
            for layer in parts[0].layers:
                layer.compile()
