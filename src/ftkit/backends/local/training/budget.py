"""How a run's steps are cut and computed: the micro-batch token budget, checkpointing, the fast paths.

:func:`make_plan` resolves a :class:`Plan` once per run, from the config and the device (on CUDA, fitted to the
GPU's memory); :func:`split` cuts a step's conversations into micro-batches of at most the budget's tokens.
:data:`TUNING` holds what the fast path turns on (the GPU benchmark switches each part for its table).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from ....exceptions import Problem, ValidationError
from .. import attention, qlora
from ..loss import fused_kernel
from . import label_loss

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["RESERVE_BYTES", "TUNING", "Plan", "compiles_layers", "make_plan", "split"]

# What the fast path turns on, each switchable for the benchmark's table of what each part gained
# (benchmarks/bench_train_gpu.py sets these in its own process); the defaults are what a run uses.
TUNING: dict[str, Any] = {
    "attention": attention.IMPLEMENTATION,  # or "sdpa": transformers' dense block-diagonal mask
    "liger": True,  # liger-kernel's RMSNorm/SwiGLU/RoPE and fused loss on CUDA, when installed
    "label_only_loss": True,  # the head only at label positions, chunked (else: whole-row logits)
    "bf16_adapters": True,  # adapters in the compute dtype, float32 masters in the optimizer
    "compile_layers": False,  # torch.compile each decoder layer
    "fused_lora": True,  # on CUDA, LoRA's scale and add in the GEMMs, hand-written backward (see .fused_lora)
    # with fused_lora: the adapter's thin product first, the base GEMM adding it in its epilogue (one memory-bound
    # pass over each layer's output instead of two); off: on an H100 a wash, faster on three of Phi-3-mini's four
    # projections and slower on gate_up (docs/benchmarks.md)
    "lora_in_epilogue": False,
    "split_qkv": True,  # ftkit's attention-layer forward: split qkv, no layout copies (see .attention_forward)
    # with split_qkv on a fused-qkv model (Phi-3): split and rotate in one Triton kernel (.qkv_rope)
    "split_rope": True,
    # on a fused gate/up MLP (Phi-3): SwiGLU read from and its gradient written into the projection's output, one
    # Triton kernel each way (.gate_up_swiglu)
    "gate_up_swiglu": True,
    # the head's loss at label positions without liger's two host waits a micro-batch (.label_loss); off until
    # measured on a GPU (docs/benchmarks.md)
    "sync_free_loss": False,
    # with liger: a Llama-family layer's attention residual add and the MLP's RMSNorm in liger's one fused kernel
    # (.add_norm); off until measured on a GPU
    "fused_add_norm": False,
    "expandable_segments": False,  # on CUDA, the allocator's expandable segments (see hardware.cuda_allocator)
}

_CPU_BUDGET = 16384
_MAX_BUDGET = 16384  # past this, longer micro-batches no longer raise a GPU's matmul efficiency
RESERVE_BYTES = 1.5 * 2**30  # CUDA context, allocator fragmentation, temporaries


@attrs.frozen
class Plan:
    """How this run's steps are cut and computed (resolved once, from config and device)."""

    budget: int
    checkpointing: bool
    fused_loss: bool
    label_only_loss: bool
    compile_layers: bool
    sync_free_loss: bool = False  # the label loss without host waits (.label_loss) instead of liger's


def _activation_bytes_per_token(model_config: Any, dtype_bytes: int, checkpointing: bool) -> float:
    """Strictly private: a conservative estimate of the activation memory one token of a micro-batch keeps.

    A decoder layer keeps about 14 hidden-sized and 5 MLP-sized tensors per token for its backward pass (norms'
    float32 copies, q/k/v and their rotated copies, attention output, the gated MLP's pieces). Measured on an
    H200 with Phi-3-mini: 108-140 KB per token and layer against 168 KB estimated here. Checkpointed, each
    layer keeps its input only and one layer at a time recomputes the rest.
    """
    hidden = int(getattr(model_config, "hidden_size", 0) or 0)
    inter = int(getattr(model_config, "intermediate_size", 0) or 4 * hidden)
    layers = int(getattr(model_config, "num_hidden_layers", 0) or 1)
    per_layer = dtype_bytes * (14 * hidden + 5 * inter)
    if checkpointing:
        return layers * dtype_bytes * hidden + per_layer
    return float(layers * per_layer)


def compiles_layers(config: TrainConfig, device: str) -> bool:
    """Whether the run compiles each decoder layer (``torch_compile``, on CUDA only)."""
    return device == "cuda" and (config.torch_compile or bool(TUNING["compile_layers"]))


def _sync_free(torch: Any, model: Any) -> bool:
    """Strictly private: whether the sync-free loss (.label_loss) computes this model's head and works on its GPU.

    Decided with the plan, so that the loss's memory is reserved for the loss that runs.
    """
    head = model.get_output_embeddings()
    return head is not None and label_loss.applies(head.weight, head.bias) and label_loss.usable(torch.device("cuda"))


def make_plan(torch: Any, config: TrainConfig, model: Any, device: str, max_len: int) -> Plan:
    """The token budget and whether to checkpoint, fitted to the GPU's memory."""
    fused = device == "cuda" and bool(TUNING["liger"]) and fused_kernel() is not None
    label_only = bool(TUNING["label_only_loss"])
    compile_layers = compiles_layers(config, device)
    sync_free = device == "cuda" and label_only and bool(TUNING["sync_free_loss"]) and _sync_free(torch, model)
    wanted = config.max_tokens_per_micro_batch
    if device != "cuda":
        budget = wanted if wanted > 0 else max(max_len, _CPU_BUDGET)
        return Plan(budget, bool(config.gradient_checkpointing), fused, label_only, compile_layers, sync_free)
    if config.gpu_memory_gib is not None:
        limit = config.gpu_memory_gib * 2**30
    else:
        limit = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    params = list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in params)
    # float32 master, its gradient, two AdamW moments, and the model dtype's gradient
    # the compute dtype's size (a 4-bit model's parameters are partly packed uint8)
    dtype_bytes = model.get_input_embeddings().weight.element_size()
    trainable = sum(p.numel() for p in params if p.requires_grad) * (16 + dtype_bytes)
    # 4-bit weights count at their packed size above; their layers also de-quantize a copy at a time
    weights += qlora.scratch_bytes(model, dtype_bytes)
    head = model.get_output_embeddings()
    vocab = int(head.weight.shape[0]) if head is not None else 0
    loss_bytes = 0 if fused or sync_free else 4096 * vocab * 10  # a chunk's float32 logits, their gradient, bf16 logits
    free = limit - weights - trainable - loss_bytes - RESERVE_BYTES
    plain = _activation_bytes_per_token(model.config, dtype_bytes, checkpointing=False)
    saved = _activation_bytes_per_token(model.config, dtype_bytes, checkpointing=True)
    if config.gradient_checkpointing is None:
        checkpointing = free / plain < max(max_len, wanted)
    else:
        checkpointing = config.gradient_checkpointing
    per_token = saved if checkpointing else plain
    budget = wanted if wanted > 0 else min(_MAX_BUDGET, int(free / per_token))
    if budget < max_len and wanted <= 0:
        if free / saved < max_len:
            gib = (weights + trainable + loss_bytes + RESERVE_BYTES + saved * max_len) / 2**30
            raise ValidationError(
                [
                    Problem(
                        "max_seq_length",
                        f"a {max_len}-token conversation needs about {gib:.1f} GiB of GPU memory with this "
                        f"model, {limit / 2**30:.1f} GiB are available",
                        "lower max_seq_length, use a smaller model, or set gpu_memory_gib if the card has more",
                    )
                ],
                "training does not fit the GPU",
            )
        budget = max_len
    return Plan(max(budget, 1), checkpointing, fused, label_only, compile_layers, sync_free)


def split(lengths: Any, indices: Sequence[int], budget: int, most: int | None = None) -> list[list[int]]:
    """Consecutive groups of ``indices`` of at most ``budget`` tokens (and ``most`` examples).

    An example longer than the budget forms a group of its own.
    """
    groups: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for i in indices:
        n = int(lengths[i])
        if current and (tokens + n > budget or (most is not None and len(current) >= most)):
            groups.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += n
    if current:
        groups.append(current)
    return groups
