"""What one local training run is given and what it returns, as plain values.

:class:`TrainConfig` (every setting of a run, named after the ``chat_completion_pipeline`` component's inputs;
it round-trips through JSON to a background worker), :class:`TrainResult` (how a call to
:func:`~ftkit.backends.local.training.train` ended) and :class:`MetricsSink` (where the loop sends its metrics).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from ....exceptions import Problem, ValidationError
from .ranks import SHARDINGS

__all__ = [
    "EVAL_STRATEGIES",
    "LR_SCHEDULERS",
    "QUANTIZE_CHOICES",
    "Device",
    "MetricsSink",
    "Precision",
    "Progress",
    "TrainConfig",
    "TrainResult",
]

LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
EVAL_STRATEGIES = ("epoch", "steps", "disable")
QUANTIZE_CHOICES = ("none", "4bit")
Precision = Literal["auto", "32", "16"]
Device = Literal["auto", "cpu", "cuda"]
Progress = Literal["auto", "rich", "plain", "none"]


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
            with AVX512-BF16/AMX; float32 elsewhere) or ``auto``: bf16 on CUDA; on a CPU a float32 model, whose
            frozen base projections compute their matrix products in bf16 where the CPU has native bf16 and LoRA
            is trained (:mod:`.cpu_bf16`: the loss follows float32's, where a whole bf16 model's lagged as small
            LoRA updates were rounded away in bf16 activations; see docs/benchmarks.md). ``32`` opts out. In a
            bfloat16 model the optimizer steps float32 masters.
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
            compiled, after about 35 s of compiling). A compiled run goes without ftkit's own layer forwards
            (compiled together they trained nothing on an H100; docs/benchmarks.md); off by default.
        processes: Training processes on this host (torchrun ranks, one per GPU; gloo processes on a CPU);
            ``per_device_train_batch_size`` is per process. See :mod:`.ranks`.
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
