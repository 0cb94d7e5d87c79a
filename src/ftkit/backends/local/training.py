"""The one training loop of the local backend: LoRA (or full) supervised fine-tuning of a causal LM.

A plain PyTorch loop, not the HF ``Trainer``. A step takes ``per_device_train_batch_size x
gradient_accumulation_steps`` conversations and splits them into micro-batches by a **token budget**
(``max_tokens_per_micro_batch``); each micro-batch is packed into one row with no padding, and its examples'
boundaries go to the attention kernel (:mod:`.attention`: variable-length flash attention on CUDA, so no
token attends across examples and no compute goes to masked pairs). The loss is computed on assistant tokens
only, at those positions only (:mod:`.loss`: the head runs chunk by chunk, or fused with liger-kernel, never
materialising a row's logits), summed over the micro-batches and normalised by the step's label tokens, so a
step's result does not depend on the budget. AdamW (fused on CUDA) steps float32 master copies of the trainable
weights, which the model holds in its compute dtype (bf16 adapters on a bf16 base on CUDA), with the component's
schedule. Nothing inside a step waits for the GPU: loss and gradient norm stay on the device until a logging step.

When the budget needs it (or when asked) the decoder layers are checkpointed; the budget itself comes from the
GPU's memory (or ``gpu_memory_gib``) when not given. With liger-kernel installed (``ftkit[gpu]``), its RMSNorm,
SwiGLU and RoPE kernels replace transformers' on CUDA. On a CPU the same loop runs in float32.

It checkpoints the trainable weights, optimizer, scheduler and RNG state atomically, and a restarted run
continues from the last checkpoint: the data order depends only on the seed and the epoch, so it reaches the
same final step with the same batches. Tokenised data is cached on disk (see :func:`.data.encode_file`).

torch, transformers and peft are imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

import functools
import json
import math
import random
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from ...exceptions import MissingDependencyError, Problem, ValidationError
from ...home import ftkit_home
from ...storage import storage_cause
from . import attention, qlora
from . import stop_requests as stops
from .data import EncodedSet, PackedArrays, encode_file, pack_arrays
from .distributed import SHARDINGS, Ranks
from .loss import fused_kernel, label_cross_entropy
from .stop_requests import StopRequested, stop_now

__all__ = [
    "LR_SCHEDULERS",
    "QUANTIZE_CHOICES",
    "StopRequested",
    "TrainConfig",
    "TrainResult",
    "latest_checkpoint",
    "stop_now",
    "train",
]

LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
EVAL_STRATEGIES = ("epoch", "steps", "disable")
QUANTIZE_CHOICES = ("none", "4bit")
Precision = Literal["auto", "32", "16"]
Device = Literal["auto", "cpu", "cuda"]
Progress = Literal["auto", "rich", "plain", "none"]


_CHECKPOINTS = "checkpoints"
_FINAL = "model"
_ADAPTER = "adapter"  # a QLoRA run's adapter, saved beside its merged model
_SMALL_MODEL_PARAMS = 20_000_000


def _optional_tuple(value: Sequence[str] | None) -> tuple[str, ...] | None:
    return tuple(value) if value is not None else None


def _positive(_: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 1:
        raise ValidationError([Problem(attribute.name, f"must be at least 1, got {value}")], "invalid training config")


def _choice(choices: Sequence[str]) -> Callable[[Any, attrs.Attribute[Any], str], None]:
    def check(_: Any, attribute: attrs.Attribute[Any], value: str) -> None:
        if value not in choices:
            raise ValidationError(
                [Problem(attribute.name, f"unknown value {value!r}", f"choose one of: {', '.join(choices)}")],
                "invalid training config",
            )

    return check


@attrs.frozen(kw_only=True)
class TrainConfig:
    """Everything one local training run needs, as plain values (it round-trips through JSON).

    The names and defaults follow the ``chat_completion_pipeline`` component's inputs; see
    :meth:`ftkit.backends.local.backend.LocalBackend.train_config` for how a job's parameters map here.

    Attributes:
        model_dir: The base model (a Hugging Face directory with its tokenizer and chat template).
        train_file: Training data, JSONL in the component's format.
        eval_file: Evaluation data (the job's test file), or ``None`` for no evaluation.
        output_dir: Where checkpoints and the final model go.
        num_train_epochs: Epochs.
        max_steps: Optimizer steps, overriding epochs when > 0.
        per_device_train_batch_size: Conversations per device and accumulation step: a step trains on
            ``per_device_train_batch_size x gradient_accumulation_steps`` conversations.
        per_device_eval_batch_size: Conversations per evaluation batch (also cut by the token budget).
        gradient_accumulation_steps: Multiplies the conversations per optimizer step (micro-batches are cut
            by ``max_tokens_per_micro_batch``, not by this).
        learning_rate: Peak learning rate.
        lr_scheduler_type: One of :data:`LR_SCHEDULERS`.
        warmup_steps: Linear warmup steps.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        max_grad_norm: Gradient clipping norm (0: none).
        adam_beta1: AdamW beta1.
        adam_beta2: AdamW beta2.
        adam_epsilon: AdamW epsilon.
        max_seq_length: Longest sequence; ``-1``: the model's maximum.
        apply_lora: Train LoRA adapters (else all weights).
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha.
        lora_dropout: LoRA dropout.
        lora_target_modules: Modules to adapt; ``None``: every linear layer but the output head.
        merge_lora_weights: Save merged weights (else the adapter).
        precision: ``32`` (float32), ``16`` (bfloat16 where the device computes it natively: CUDA, or a CPU
            with AVX512-BF16/AMX; float32 elsewhere) or ``auto`` (bf16 on CUDA, float32 on a CPU: there a
            small LoRA update is rounded away in bf16 activations, and the loss lagged float32's, see
            docs/benchmarks.md). In bfloat16 the optimizer steps float32 masters.
        seed: Seed of the weights' adapters, the data order and dropout.
        logging_steps: Steps between metric logs.
        evaluation_strategy: ``epoch``, ``steps`` or ``disable``.
        eval_steps: Steps between evaluations when the strategy is ``steps``.
        save_steps: Steps between checkpoints (one is also written at each epoch's end).
        save_total_limit: Checkpoints kept; ``-1``: all.
        max_eval_examples: Evaluate on at most this many conversations (``None``: all).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        max_tokens_per_micro_batch: Token budget of one micro-batch (a step's conversations are split into
            micro-batches of at most this many tokens; a longer conversation goes alone). ``0``: from the GPU's
            memory (or ``gpu_memory_gib``) on CUDA, 16384 on a CPU. Results do not depend on it.
        gradient_checkpointing: Recompute the decoder layers' activations in the backward pass; ``None``: only
            when the budget needs it to fit a ``max_seq_length`` conversation.
        gpu_memory_gib: GPU memory to plan the budget for (``None``: the card's), e.g. 22 for a 24 GB card.
        token_cache_dir: Where tokenised data is cached (``None``: ``$FTKIT_HOME/cache/tokens``; ``""``: none).
        torch_compile: ``torch.compile`` each decoder layer on CUDA (measured on an H200: +4% tokens/s once
            compiled, after about 35 s of compiling; worth it for runs of more than a few minutes).
        processes: Training processes on this host (torchrun ranks, one per GPU; gloo processes on a CPU);
            ``per_device_train_batch_size`` is per process. See :mod:`.distributed`.
        sharding: With several processes: ``ddp`` (weights replicated), ``zero2`` (FSDP2 sharding gradients
            and optimizer state) or ``zero3`` (weights too); from ``apply_deepspeed`` / ``deepspeed_stage``.
        quantize: ``none``, or ``4bit``: QLoRA, the frozen base in 4-bit NF4 with double quantization and
            bfloat16 compute (bitsandbytes, ``ftkit[qlora]``; CUDA and LoRA only). A merged model is then the
            de-quantized base plus the adapter, checked against the adapter model before it is saved (see
            :mod:`.qlora`).
    """

    model_dir: str
    train_file: str
    eval_file: str | None = None
    output_dir: str
    num_train_epochs: int = attrs.field(default=1, validator=_positive)
    max_steps: int = -1
    per_device_train_batch_size: int = attrs.field(default=1, validator=_positive)
    per_device_eval_batch_size: int = attrs.field(default=1, validator=_positive)
    gradient_accumulation_steps: int = attrs.field(default=1, validator=_positive)
    learning_rate: float = 2e-5
    lr_scheduler_type: str = attrs.field(default="linear", validator=_choice(LR_SCHEDULERS))
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_seq_length: int = -1
    apply_lora: bool = True
    lora_r: int = attrs.field(default=8, validator=_positive)
    lora_alpha: int = 128
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] | None = attrs.field(default=None, converter=_optional_tuple)
    merge_lora_weights: bool = True
    precision: Precision = attrs.field(default="auto", validator=_choice(("auto", "32", "16")))
    seed: int = 42
    logging_steps: int = attrs.field(default=10, validator=_positive)
    evaluation_strategy: str = attrs.field(default="epoch", validator=_choice(EVAL_STRATEGIES))
    eval_steps: int = attrs.field(default=500, validator=_positive)
    save_steps: int = attrs.field(default=500, validator=_positive)
    save_total_limit: int = -1
    max_eval_examples: int | None = None
    device: Device = attrs.field(default="auto", validator=_choice(("auto", "cpu", "cuda")))
    max_tokens_per_micro_batch: int = 0
    gradient_checkpointing: bool | None = None
    gpu_memory_gib: float | None = None
    token_cache_dir: str | None = None
    torch_compile: bool = False
    processes: int = attrs.field(default=1, validator=_positive)
    sharding: str = attrs.field(default="ddp", validator=_choice(SHARDINGS))
    quantize: str = attrs.field(default="none", validator=_choice(QUANTIZE_CHOICES))

    def to_json(self) -> str:
        """Return the config as JSON (for a background job's worker)."""
        return json.dumps(attrs.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        """Read a config written by :meth:`to_json`."""
        return cls(**json.loads(text))


@attrs.frozen(kw_only=True)
class TrainResult:
    """How a call to :func:`train` ended.

    Attributes:
        global_step: Optimizer steps done in total (including before a resume).
        total_steps: Steps the run was planned for.
        model_dir: The saved model (a Hugging Face directory with the tokenizer), ``None`` if stopped early.
        resumed_from: The checkpoint step this call started from, if it resumed.
        stopped: Whether it stopped early (on request), leaving a checkpoint to resume from.
        train_examples: Training conversations used.
        eval_examples: Evaluation conversations used.
        first_eval_loss: Evaluation loss before training (``None`` without evaluation).
        final_eval_loss: Evaluation loss at the end.
        tokens: Tokens processed by this call.
        runtime_s: Wall time of this call.
    """

    global_step: int
    total_steps: int
    model_dir: Path | None
    resumed_from: int | None = None
    stopped: bool = False
    train_examples: int = 0
    eval_examples: int = 0
    first_eval_loss: float | None = None
    final_eval_loss: float | None = None
    tokens: int = 0
    runtime_s: float = 0.0


class MetricsSink:
    """Where :func:`train` sends metrics: anything with ``log_metrics(values, step)`` and ``flush()``.

    :class:`~ftkit.backends.local.tracking.RunLogger` is one; this base class drops them.
    """

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record metric values at ``step``."""

    def flush(self) -> None:
        """Send what was recorded."""

    def phase(self, message: str) -> None:
        """Hear what :func:`train` is doing before and between steps (``loading the model ...``); optional."""


def _announcer(sink: Any, mode: Progress, ranks: Any) -> Callable[[str], None]:
    """Strictly private: say what training does where no step line shows it yet (loading, tokenising, evaluating).

    A line on stderr (the job's ``train.log`` in a worker) and the sink's ``phase``, which a worker writes to
    ``job.json`` as the job's progress for ``ftkit run`` to show. Rank 0 only.
    """
    visible = mode in ("plain", "rich") or (mode == "auto" and sys.stderr.isatty())
    hear = getattr(sink, "phase", None)

    def say(message: str) -> None:
        if not ranks.main:
            return
        if visible:
            print(message, file=sys.stderr, flush=True)
        if callable(hear):
            hear(message)

    return say


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """Return the newest complete checkpoint under ``output_dir``, or ``None``."""
    root = Path(output_dir) / _CHECKPOINTS
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if p.name.startswith("checkpoint-") and (p / "state.json").is_file()]
    done = [p for p in done if p.name.removeprefix("checkpoint-").isdigit()]
    return max(done, key=lambda p: int(p.name.removeprefix("checkpoint-")), default=None)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("torch", "local") from None
    return torch


def _pick_device(torch: Any, wanted: Device) -> str:
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ValidationError(
            [Problem("local.device", "cuda was asked for but torch sees no CUDA GPU", "use device: auto or cpu")],
            "no GPU",
        )
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


# /proc/cpuinfo flags of CPUs whose matrix units compute bfloat16 natively (AVX512-BF16's dot products, AMX's tiles).
_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 matrix products natively (AVX512-BF16 or AMX-BF16; Linux only).

    Elsewhere bf16 arithmetic is emulated through float32 and slower than float32 itself, so training stays in
    float32 there.
    """
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags") and _BF16_CPU_FLAGS & set(line.partition(":")[2].split()):
            return True
    return False


def _dtype(torch: Any, device: str, precision: Precision) -> Any:
    """Strictly private: the compute dtype: bfloat16 where the device has it natively and ``precision`` allows."""
    if precision == "32":
        return torch.float32
    if device == "cuda":
        # 16-bit means bfloat16: no loss scaling needed.
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    # A CPU: bf16 only when asked for (precision 16) and computed natively (emulated bf16 is slower than float32).
    # Not by default: measured on SmolLM2-135M at lr 1e-4, 1.27x the float32 step rate, but the loss fell a
    # quarter as far in 6 steps (a LoRA update far below a bf16 activation's rounding step is lost in the sum).
    if precision == "16" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


# What the fast path turns on, each switchable for the benchmark's table of what each part gained
# (benchmarks/bench_train_gpu.py sets these in its own process); the defaults are what a run uses.
_TUNING: dict[str, Any] = {
    "attention": attention.IMPLEMENTATION,  # or "sdpa": transformers' dense block-diagonal mask
    "liger": True,  # liger-kernel's RMSNorm/SwiGLU/RoPE and fused loss on CUDA, when installed
    "label_only_loss": True,  # the head only at label positions, chunked (else: whole-row logits)
    "bf16_adapters": True,  # adapters in the compute dtype, float32 masters in the optimizer
    "compile_layers": False,  # torch.compile each decoder layer
}

_CPU_BUDGET = 16384
_MAX_BUDGET = 16384  # past this, longer micro-batches no longer raise a GPU's matmul efficiency
_RESERVE_BYTES = 1.5 * 2**30  # CUDA context, allocator fragmentation, temporaries


@attrs.frozen
class _Plan:
    """Strictly private: how this run's steps are cut and computed (resolved once, from config and device)."""

    budget: int
    checkpointing: bool
    fused_loss: bool
    label_only_loss: bool
    compile_layers: bool


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


def _plan(torch: Any, config: TrainConfig, model: Any, device: str, max_len: int) -> _Plan:
    """Strictly private: the token budget and whether to checkpoint, fitted to the GPU's memory."""
    fused = device == "cuda" and bool(_TUNING["liger"]) and fused_kernel() is not None
    label_only = bool(_TUNING["label_only_loss"])
    compile_layers = device == "cuda" and (config.torch_compile or bool(_TUNING["compile_layers"]))
    wanted = config.max_tokens_per_micro_batch
    if device != "cuda":
        budget = wanted if wanted > 0 else max(max_len, _CPU_BUDGET)
        return _Plan(budget, bool(config.gradient_checkpointing), fused, label_only, compile_layers)
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
    loss_bytes = 0 if fused else 4096 * vocab * 10  # a chunk's float32 logits, their gradient, bf16 logits
    free = limit - weights - trainable - loss_bytes - _RESERVE_BYTES
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
            gib = (weights + trainable + loss_bytes + _RESERVE_BYTES + saved * max_len) / 2**30
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
    return _Plan(max(budget, 1), checkpointing, fused, label_only, compile_layers)


def _split(lengths: Any, indices: Sequence[int], budget: int, most: int | None = None) -> list[list[int]]:
    """Strictly private: consecutive groups of ``indices`` of at most ``budget`` tokens (and ``most`` examples).

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


def _to_device(torch: Any, array: Any, device: str) -> Any:
    tensor = torch.from_numpy(array)
    if device == "cuda":
        # pinned + non_blocking: the copy is queued behind the running step instead of waiting for it
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def _causal_parts(model: Any) -> tuple[Any, Any] | None:
    """Strictly private: the decoder stack and output head, when the loss may be computed from hidden states.

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


def _forward_loss(torch: Any, model: Any, batch: PackedArrays, device: str, plan: _Plan) -> Any:
    """Return the summed cross-entropy over the batch's label tokens (a float32 scalar on the device).

    Strictly private. The one forward pass of training and evaluation: the place to make fast on GPU.
    """
    ids = _to_device(torch, batch.input_ids, device)[None]
    pos = _to_device(torch, batch.position_ids, device)[None]
    where = _to_device(torch, batch.loss_positions, device)
    targets = _to_device(torch, batch.targets, device)
    cu = _to_device(torch, batch.cu_seqlens, device)
    # The examples' boundaries, for the attention kernel (see .attention); the host copy serves its fallback.
    kwargs: dict[str, Any] = {
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": batch.max_seqlen,
        "max_length_k": batch.max_seqlen,
    }
    if not plan.compile_layers:  # a tuple argument would make a compiled layer recompile for every batch
        kwargs["ftkit_bounds"] = tuple(int(x) for x in batch.cu_seqlens)
    parts = _causal_parts(model) if plan.label_only_loss else None
    if parts is not None:
        decoder, head = parts
        hidden = decoder(input_ids=ids, position_ids=pos, use_cache=False, **kwargs).last_hidden_state[0]
        return label_cross_entropy(hidden.index_select(0, where), head, targets, fused=plan.fused_loss)
    logits = model(input_ids=ids, position_ids=pos, use_cache=False, **kwargs).logits[0]
    if not plan.label_only_loss:  # the stock computation: the whole row's logits in float32
        full = torch.full((batch.num_tokens,), -100, dtype=torch.long, device=logits.device)
        full[where] = targets
        return torch.nn.functional.cross_entropy(logits.float(), full, ignore_index=-100, reduction="sum")
    return torch.nn.functional.cross_entropy(logits.index_select(0, where).float(), targets, reduction="sum")


def _evaluate(
    torch: Any,
    model: Any,
    forward: Callable[[Any], Any],
    batches: Sequence[PackedArrays],
    device: str,
    ranks: Ranks,
    check: Callable[[], None] = lambda: None,
) -> float:
    model.eval()
    total = torch.zeros((), device=device)
    count = sum(b.num_labels for b in batches)
    with torch.no_grad():
        for batch, weight in ranks.eval_share(batches):  # each rank its part (see .distributed)
            check()  # a stop request is honoured between batches, not after the whole evaluation
            loss = forward(batch)
            total += loss if weight == 1.0 else loss * weight
    model.train()
    return float(ranks.sum(total)) / max(count, 1)


class _Trainables:
    """Strictly private: the trainable weights, with float32 masters when the model holds them in bf16.

    The optimizer steps the masters; gradients are added into the masters' float32 gradients after every
    micro-batch (so accumulation never rounds to bf16), and the stepped masters are copied back into the model.
    """

    def __init__(self, torch: Any, named: Mapping[str, Any], *, separate: bool = False) -> None:
        self.torch = torch
        self.params = list(named.values())
        # separate: float32 masters too (DDP all-reduces the gradient the model holds after each backward)
        self.mixed = separate or any(p.dtype != torch.float32 for p in self.params)
        if self.mixed:
            self.masters = [p.detach().float().clone().requires_grad_(True) for p in self.params]
        else:
            self.masters = self.params
        self.named = dict(zip(named, self.masters, strict=True))

    def accumulate(self) -> None:
        """Move the model's gradients of the last micro-batch into the masters' (no-op without masters)."""
        if not self.mixed:
            return
        for p, m in zip(self.params, self.masters, strict=True):
            if p.grad is None:
                continue
            if m.grad is None:
                m.grad = p.grad.float()
            else:
                m.grad.add_(p.grad)
            p.grad = None

    def push(self) -> None:
        """Copy the masters into the model's weights (after a step or a checkpoint load)."""
        if self.mixed:
            with self.torch.no_grad():
                self.torch._foreach_copy_(self.params, self.masters)


def _token_cache(config: TrainConfig) -> Path | None:
    if config.token_cache_dir == "":
        return None
    return Path(config.token_cache_dir) if config.token_cache_dir else ftkit_home() / "cache" / "tokens"


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    # The order depends on (seed, epoch) only, so a resumed run sees the same batches as an uninterrupted one.
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


class _ProgressView:
    """Strictly private: a rich progress bar in a terminal, plain lines, or nothing."""

    def __init__(self, mode: Progress, total: int, start: int) -> None:
        if mode == "auto":
            mode = "rich" if sys.stderr.isatty() else "none"
        self.mode = mode
        self._bar: Any = None
        if mode == "rich":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]training"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[tps]} tok/s"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._task = self._bar.add_task("train", total=total, completed=start, loss="-", tps="-")
            self._bar.start()

    def update(self, step: int, total: int, metrics: Mapping[str, float] | None) -> None:
        if self.mode == "rich":
            fields = {}
            if metrics and "loss" in metrics:
                fields = {"loss": f"{metrics['loss']:.4f}", "tps": f"{metrics.get('tokens_per_second', 0):,.0f}"}
            self._bar.update(self._task, completed=step, **fields)
        elif self.mode == "plain" and metrics:
            shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
            print(f"step {step}/{total} {shown}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _raise_storage(exc: BaseException, path: Path) -> None:
    """Strictly private: a full disk reported as torch's or safetensors' own error becomes the ``OSError`` it is."""
    if isinstance(exc, Exception) and not isinstance(exc, OSError):
        cause = storage_cause(exc, path)
        if cause is not None:
            raise cause from exc


def _save_checkpoint(
    torch: Any, out: Path, step: int, named: Mapping[str, Any], opt: Any, sched: Any, limit: int
) -> None:
    root = out / _CHECKPOINTS
    final = root / f"checkpoint-{step}"
    tmp = root / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        torch.save({k: v.detach().cpu() for k, v in named.items()}, tmp / "trainable.pt")
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        torch.save(sched.state_dict(), tmp / "scheduler.pt")
        rng: dict[str, Any] = {"torch": torch.random.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        stops.pause_for_tests("checkpoint")
        # state.json last: a checkpoint without it is incomplete and ignored.
        (tmp / "state.json").write_text(json.dumps({"global_step": step}), encoding="utf-8")
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk leaves no half checkpoint behind
        _raise_storage(exc, tmp)
        raise
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)  # atomic on one filesystem: a kill leaves either the old set or the new one
    if limit > 0:
        done = sorted(
            (p for p in root.iterdir() if p.name.startswith("checkpoint-")),
            key=lambda p: int(p.name.removeprefix("checkpoint-")),
        )
        for old in done[:-limit]:
            shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(torch: Any, ckpt: Path, named: Mapping[str, Any], opt: Any, sched: Any) -> int:
    weights = torch.load(ckpt / "trainable.pt", map_location="cpu", weights_only=True)
    with torch.no_grad():
        for k, p in named.items():
            p.copy_(weights[k].to(p.device, p.dtype))
    opt.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True))
    sched.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    rng = torch.load(ckpt / "rng.pt", weights_only=False)  # our own file: RNG states are not plain tensors
    torch.random.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    return int(state["global_step"])


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


def _build_model(config: TrainConfig, device: str, dtype: Any) -> Any:
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise MissingDependencyError("transformers", "local") from None
    implementation = str(_TUNING["attention"])
    if implementation == attention.IMPLEMENTATION:
        attention.register()
    # The model holds its weights in the compute dtype (bf16 on CUDA: half the memory, no autocast casts); the
    # optimizer steps float32 masters of the trainable ones (see _Trainables), as AdamW on bf16 weights would
    # round away updates under half a bf16 step (0.2-0.4% of a weight).
    bf16_trainables = bool(_TUNING["bf16_adapters"]) or not config.apply_lora
    if config.quantize != "none":
        # 4-bit layers are placed on the GPU as they load (a quantized model cannot be moved with .to()).
        model = AutoModelForCausalLM.from_pretrained(
            config.model_dir,
            dtype=dtype,
            attn_implementation=implementation,
            quantization_config=qlora.quantization_config(_import_torch(), dtype),
            device_map={"": _import_torch().cuda.current_device()},
        )
        qlora.freeze(model)
    else:
        model = AutoModelForCausalLM.from_pretrained(config.model_dir, dtype=dtype, attn_implementation=implementation)
        model.to(device)  # type: ignore[arg-type]  # transformers' stub types .to() narrowly
    model.config.use_cache = False
    if device == "cuda" and _TUNING["liger"]:
        _apply_liger(model)
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
    return adapted


def _prepare(model: Any, plan: _Plan) -> None:
    """Strictly private: gradient checkpointing and compiled layers, as the plan says."""
    if plan.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if plan.compile_layers:
        parts = _causal_parts(model)
        if parts is not None:
            for layer in parts[0].layers:
                layer.compile()


def _save_final(config: TrainConfig, model: Any, tokenizer: Any, *, name: str = _FINAL) -> Path:
    out = Path(config.output_dir) / name
    tmp = Path(config.output_dir) / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if config.apply_lora and config.merge_lora_weights:
        model = model.merge_and_unload()
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if config.apply_lora and not config.merge_lora_weights:
            # An adapter directory: transformers loads it (with peft) from the base recorded here.
            cfg = json.loads((tmp / "adapter_config.json").read_text(encoding="utf-8"))
            cfg["base_model_name_or_path"] = str(Path(config.model_dir).absolute())
            (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_storage(exc, tmp)
        raise
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _check_batches(encoded: EncodedSet, plan: _Plan, most: int = 16) -> list[PackedArrays]:
    """Strictly private: the conversations a merge is checked on (the first ``most`` of the held-out set)."""
    groups = _split(encoded.lengths, range(min(len(encoded), most)), plan.budget)
    return [pack_arrays(encoded, g) for g in groups]


def _save_merged(
    torch: Any,
    config: TrainConfig,
    tokenizer: Any,
    weights: tuple[Mapping[str, Any], Mapping[str, Any]],
    check: Sequence[PackedArrays],
    adapter: tuple[float, Path],
    device: str,
    plan: _Plan,
) -> Path:
    """Strictly private: merge a QLoRA run's adapter into its de-quantized base, check the merge, then save it.

    ``weights`` are the de-quantized base weights and the trained adapters (see :func:`.qlora.load_merged`);
    ``adapter`` the adapter model's loss on ``check`` and where the adapter was saved. The merged model is
    built on the CPU in the compute dtype and checked on the GPU when it fits there (the 4-bit model is gone by
    now), else on the CPU.
    """
    import gc

    adapter_loss, adapter_dir = adapter
    gc.collect()
    dtype = _dtype(torch, device, config.precision)
    plain = _build_model(attrs.evolve(config, quantize="none"), "cpu", dtype)
    merged = qlora.load_merged(plain, *weights)
    where = "cpu"
    if device == "cuda":
        torch.cuda.empty_cache()
        size = sum(p.numel() * p.element_size() for p in merged.parameters())
        if torch.cuda.mem_get_info()[0] > size + _RESERVE_BYTES + 2 * 2**30:
            where = "cuda"
    merged.to(where)
    merged.eval()
    mplan = plan if where == "cuda" else attrs.evolve(plan, fused_loss=False, compile_layers=False, checkpointing=False)
    merged_loss = _evaluate(
        torch, merged, lambda b: _forward_loss(torch, merged, b, where, mplan), check, where, Ranks()
    )
    qlora.check_merge(adapter_loss, merged_loss, saved_adapter=str(adapter_dir))
    return _save_final(attrs.evolve(config, apply_lora=False), merged.cpu(), tokenizer)


def train(
    config: TrainConfig,
    *,
    metrics: MetricsSink | Any | None = None,
    progress: Progress = "auto",
    stop_after_steps: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = True,
    ranks: Ranks | None = None,
) -> TrainResult:
    """Fine-tune ``config.model_dir`` on ``config.train_file`` and save the result under ``config.output_dir``.

    Args:
        config: The run.
        metrics: Receives ``loss``, ``learning_rate``, ``grad_norm``, ``tokens_per_second``, ``epoch`` every
            ``logging_steps`` and ``eval_loss`` at each evaluation (step 0 included): a
            :class:`~ftkit.backends.local.tracking.RunLogger` or any :class:`MetricsSink`.
        progress: ``auto`` (a rich bar in a terminal, quiet otherwise), ``rich``, ``plain`` (lines) or ``none``.
        stop_after_steps: Stop (with a checkpoint) once this many steps are done in total: for tests and demos.
        should_stop: Polled after every step and checkpoint write, between evaluation batches and between the
            loading phases; when it returns true the run checkpoints (if it trained since the last one) and stops
            (cancellation). :func:`stop_now` (from a signal handler) also cuts model loading and tokenisation short,
            and with one process evaluations too; several ranks agree on every stop (see :mod:`.stop_requests`).
        resume: Continue from the newest checkpoint in ``output_dir``, if there is one.
        ranks: This process's rank of a multi-process run (:class:`~.distributed.TorchRanks`); one process
            by default.

    Returns:
        What happened.

    Raises:
        ValidationError: Bad settings or unusable data.
        MissingDependencyError: The ``local`` extra is not installed.
    """
    torch = _import_torch()
    try:
        from transformers import AutoTokenizer, get_scheduler
    except ImportError:
        raise MissingDependencyError("transformers", "local") from None
    sink = metrics if metrics is not None else MetricsSink()
    ranks = ranks if ranks is not None else Ranks()
    started = time.perf_counter()
    device = _pick_device(torch, config.device)
    dtype = _dtype(torch, device, config.precision)
    if config.quantize != "none":
        qlora.require_device(device, config.apply_lora, config.quantize)
        qlora.bitsandbytes()
        if ranks.world > 1:
            raise ValidationError(
                [Problem("local.quantize", "4-bit weights train on one process only", "set local.processes: 1")],
                "QLoRA cannot run here",
            )
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    say = _announcer(sink, progress, ranks)

    def check() -> None:
        """A stop request polled between the loading phases (ranks: each on its own, agreed at the end)."""
        if stops.asked(should_stop):
            raise StopRequested

    try:
        with stops.loading(ranks, should_stop):  # loading and tokenising: nothing to keep, a stop cuts them short
            check()
            tokenizer = AutoTokenizer.from_pretrained(config.model_dir)
            model_max = int(getattr(tokenizer, "model_max_length", 0) or 0)
            max_len = (
                config.max_seq_length if config.max_seq_length > 0 else (model_max if 0 < model_max < 10**6 else 4096)
            )
            cache = _token_cache(config)
            say(f"tokenising {Path(config.train_file).name} (at most {max_len} tokens a conversation)")
            began = time.perf_counter()
            train_set, _ = encode_file(tokenizer, config.train_file, max_len, cache_dir=cache)
            eval_set: EncodedSet | None = None
            if config.eval_file and config.evaluation_strategy != "disable":
                eval_set, _ = encode_file(tokenizer, config.eval_file, max_len, cache_dir=cache)
                if config.max_eval_examples is not None and config.max_eval_examples < len(eval_set):
                    eval_set = eval_set.select(range(config.max_eval_examples))
            held = f" and {len(eval_set):,} to evaluate on" if eval_set is not None else ""
            say(f"tokenised {len(train_set):,} conversations to train on{held} in {time.perf_counter() - began:.1f}s")
            check()

            # Seed before building the model: LoRA's initial weights come from the global RNG.
            random.seed(config.seed)
            torch.manual_seed(config.seed)
            say(f"loading the model {Path(config.model_dir).name} on {device} ({str(dtype).removeprefix('torch.')})")
            began = time.perf_counter()
            model = _build_model(config, device, ranks.weights_dtype(dtype))
            stops.pause_for_tests("load")
            say(f"loaded the model in {time.perf_counter() - began:.1f}s")
            model.train()
            plan = _plan(torch, config, model, device, max_len)
            _prepare(model, plan)
            eval_batches: list[PackedArrays] = []
            if eval_set is not None:
                eval_groups = _split(
                    eval_set.lengths, range(len(eval_set)), plan.budget, config.per_device_eval_batch_size
                )
                eval_batches = [pack_arrays(eval_set, g) for g in eval_groups]
            check()
    except StopRequested:
        done = latest_checkpoint(out) if resume else None
        at = int(done.name.rsplit("-", 1)[-1]) if done is not None else 0
        return TrainResult(global_step=at, total_steps=0, model_dir=None, stopped=True)
    # The one forward of training and evaluation; through DDP or FSDP2 on several processes (.distributed).
    # After the loading phase: DDP and FSDP2 start with collectives, which every rank must reach.
    forward = ranks.wrap(model, lambda m, b: _forward_loss(torch, m, b, device, plan), dtype)
    threads = torch.get_num_threads()
    if device == "cpu" and sum(p.numel() for p in model.parameters()) < _SMALL_MODEL_PARAMS:
        # Intra-op threads cost more than they save on tiny matrices (measured: 17x slower linear layers with
        # 2 threads than with 1 on a 2-core machine), so small models train single-threaded.
        torch.set_num_threads(1)
    trainables = _Trainables(
        torch, {n: p for n, p in model.named_parameters() if p.requires_grad}, separate=ranks.separate_gradients
    )
    named = trainables.named
    decay = [p for p in named.values() if p.ndim >= 2]
    no_decay = [p for p in named.values() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
        **({"fused": True} if device == "cuda" else {}),  # one kernel for all parameters instead of a few each
    )
    per_step = config.gradient_accumulation_steps * config.per_device_train_batch_size * ranks.world
    steps_per_epoch = math.ceil(len(train_set) / per_step)
    total_steps = config.max_steps if config.max_steps > 0 else steps_per_epoch * config.num_train_epochs
    scheduler = get_scheduler(
        config.lr_scheduler_type, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=total_steps
    )

    step = 0
    resumed_from = None
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is not None:
        step = resumed_from = _load_checkpoint(torch, ckpt, *ranks.loading(named, optimizer), scheduler)
        trainables.push()

    view = _ProgressView(progress, total_steps, step)
    first_eval = final_eval = None
    tokens_done = 0
    # Loss and gradient norm stay on the device between logging steps: reading them would make the host wait
    # for the GPU in every step, and the next step's data could not be prepared while the GPU works.
    window_loss = torch.zeros((), device=device)
    window_labels, window_tokens, window_start = 0, 0, time.perf_counter()
    grad_norm: Any = None
    last_eval_step = -1

    def evaluate_now() -> float:
        nonlocal last_eval_step, window_start
        began = time.perf_counter()
        with stops.evaluating(ranks):  # an evaluation has nothing to keep either
            value = _evaluate(torch, model, forward, eval_batches, device, ranks, stops.agreed(ranks, should_stop))
        window_start += time.perf_counter() - began  # tokens/s measures training, not evaluation
        sink.log_metrics({"eval_loss": value}, step)
        sink.flush()
        last_eval_step = step
        return value

    stopped = False
    try:
        if eval_batches and step == 0:
            say(f"evaluating the base model on {len(eval_set or ()):,} conversations (step 0)")
            try:
                first_eval = evaluate_now()
            except StopRequested:
                stopped = True  # nothing trained yet: nothing to checkpoint
        if not stopped:
            base = f" (step 0: eval loss {first_eval:.4f})" if first_eval is not None else ""
            say(f"training from step {step} to {total_steps}" if step else f"training {total_steps} steps{base}")
        while not stopped and step < total_steps:
            epoch, group = divmod(step, steps_per_epoch)
            order = _epoch_order(len(train_set), config.seed, epoch)
            chosen = order[group * per_step : (group + 1) * per_step]
            share = ranks.step_share(train_set, chosen, plan.budget, _split)  # this rank's part of the step
            micro = [pack_arrays(train_set, g) for g in share.groups]
            n_labels = share.labels  # the whole step's, on every rank
            for batch, weight in zip(micro, share.weights, strict=True):
                loss = forward(batch)
                if weight != 1.0:  # a repeat that keeps the ranks in step (see .distributed)
                    loss = loss * weight
                # Normalise by the whole step's label tokens: every token weighs the same across micro-batches,
                # so the step does not depend on how the budget cut it.
                (loss / max(n_labels, 1)).backward()
                trainables.accumulate()
                window_loss += loss.detach()
            window_tokens += share.tokens
            window_labels += n_labels
            masters = trainables.masters
            if config.max_grad_norm > 0:
                grad_norm = ranks.plain(torch.nn.utils.clip_grad_norm_(masters, config.max_grad_norm))
            else:
                grads = [p.grad for p in masters if p.grad is not None]
                grad_norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) if grads else None
            lr = float(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            trainables.push()
            step += 1
            tokens_done += share.tokens

            logged: dict[str, float] | None = None
            if step % config.logging_steps == 0 or step == total_steps:
                loss_sum = float(ranks.sum(window_loss))  # the one wait for the GPU, once per logging window
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                logged = {
                    "loss": loss_sum / max(window_labels, 1),
                    "learning_rate": lr,
                    "grad_norm": float(grad_norm) if grad_norm is not None else 0.0,
                    "tokens_per_second": window_tokens / elapsed,
                    "epoch": step / steps_per_epoch,
                }
                sink.log_metrics(logged, step)
                sink.flush()
                window_loss.zero_()
                window_labels, window_tokens, window_start = 0, 0, time.perf_counter()
            view.update(step, total_steps, logged)

            epoch_end = step % steps_per_epoch == 0
            interrupted = False
            if eval_batches and (
                (config.evaluation_strategy == "steps" and step % config.eval_steps == 0)
                or (config.evaluation_strategy == "epoch" and epoch_end)
            ):
                try:
                    final_eval = evaluate_now()
                except StopRequested:
                    interrupted = True  # checkpointed below, as any stop after a step
            want_stop = interrupted or ranks.agree(  # all ranks stop after the same step
                (stop_after_steps is not None and step >= stop_after_steps) or bool(should_stop and should_stop())
            )
            if step < total_steps and (step % config.save_steps == 0 or epoch_end or want_stop):
                saved, saved_optimizer = ranks.gathered(named, optimizer)
                if ranks.main:
                    _save_checkpoint(torch, out, step, saved, saved_optimizer, scheduler, config.save_total_limit)
                if not want_stop and ranks.agree(stops.asked(should_stop)):
                    want_stop = True  # asked while the checkpoint was written: it is the one to resume from
            if want_stop and step < total_steps:
                stopped = True
                break
        if not stopped and eval_batches and last_eval_step != step:
            try:
                final_eval = evaluate_now()
            except StopRequested:  # every step is done: the resumed run only evaluates and saves
                saved, saved_optimizer = ranks.gathered(named, optimizer)  # a collective: on every rank
                if ranks.main:
                    _save_checkpoint(torch, out, step, saved, saved_optimizer, scheduler, config.save_total_limit)
                stopped = True
    finally:
        view.close()
        sink.flush()
        torch.set_num_threads(threads)

    runtime = time.perf_counter() - started
    if not stopped and config.quantize != "none" and config.merge_lora_weights:
        # Inputs of the merge, then the 4-bit model is dropped so that the bf16 merged model fits where it ran.
        merge_batches = _check_batches(eval_set if eval_set is not None else train_set, plan)
        adapter_loss = _evaluate(torch, model, forward, merge_batches, device, ranks)
        adapter_dir = _save_final(attrs.evolve(config, merge_lora_weights=False), model, tokenizer, name=_ADAPTER)
        base_weights = qlora.dequantized_weights(model)
        adapters = {k: v.detach().cpu() for k, v in named.items()}
        del model, forward, trainables, named, decay, no_decay, optimizer, scheduler
        model_dir: Path | None = _save_merged(
            torch, config, tokenizer, (base_weights, adapters), merge_batches, (adapter_loss, adapter_dir), device, plan
        )
    else:
        final = None if stopped else ranks.final_model(model, named, lambda: _build_model(config, "cpu", dtype))
        model_dir = None if final is None else _save_final(config, final, tokenizer)
    if not stopped and ranks.main:
        sink.log_metrics({"train_runtime": runtime, "train_tokens_per_second": tokens_done / runtime}, step)
        sink.flush()
        (out / "result.json").write_text(
            json.dumps({"global_step": step, "total_steps": total_steps, "final_eval_loss": final_eval}),
            encoding="utf-8",
        )
    return TrainResult(
        global_step=step,
        total_steps=total_steps,
        model_dir=model_dir,
        resumed_from=resumed_from,
        stopped=stopped,
        train_examples=len(train_set),
        eval_examples=len(eval_set) if eval_set is not None else 0,
        first_eval_loss=first_eval,
        final_eval_loss=final_eval,
        tokens=tokens_done,
        runtime_s=runtime,
    )
