"""The one table from a run's plan to a local :class:`~ftkit.backends.local.training.TrainConfig`.

Adding a typed fine-tuning parameter that the local backend honours means one row here (beside the spec and the
job file's schema); :meth:`~ftkit.backends.local.backend.LocalBackend.train_config` reads the table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["IGNORED_PARAMETERS", "TRAIN_CONFIG_TABLE"]


def _same(value: Any) -> Any:
    return value


def _modules(value: Any) -> tuple[str, ...]:
    # `local.lora_target_modules` is one comma-separated string in the job file.
    return tuple(v.strip() for v in str(value).split(",") if v.strip())


# The one table from a plan to a TrainConfig: each parameter the plan may carry (``finetune.*``, already typed
# by the job loader and the component schema) or local-only setting (``local.*``: the job file's section for
# what the component does not declare), to the TrainConfig field it sets and how its value is spelled there;
# ``None``: no meaning on one local device (recorded on the run, not used). Parameters not listed are recorded
# as ignored too.
TRAIN_CONFIG_TABLE: Mapping[str, tuple[str, Callable[[Any], Any]] | None] = {
    "finetune.num_train_epochs": ("num_train_epochs", _same),
    "finetune.max_steps": ("max_steps", _same),
    "finetune.per_device_train_batch_size": ("per_device_train_batch_size", _same),
    "finetune.per_device_eval_batch_size": ("per_device_eval_batch_size", _same),
    "finetune.gradient_accumulation_steps": ("gradient_accumulation_steps", _same),
    "finetune.learning_rate": ("learning_rate", _same),
    "finetune.lr_scheduler_type": ("lr_scheduler_type", _same),
    "finetune.warmup_steps": ("warmup_steps", _same),
    "finetune.weight_decay": ("weight_decay", _same),
    "finetune.max_grad_norm": ("max_grad_norm", _same),
    "finetune.adam_beta1": ("adam_beta1", _same),
    "finetune.adam_beta2": ("adam_beta2", _same),
    "finetune.adam_epsilon": ("adam_epsilon", _same),
    "finetune.max_seq_length": ("max_seq_length", _same),
    "finetune.apply_lora": ("apply_lora", _same),
    "finetune.lora_r": ("lora_r", _same),
    "finetune.lora_alpha": ("lora_alpha", _same),
    "finetune.lora_dropout": ("lora_dropout", _same),
    "finetune.merge_lora_weights": ("merge_lora_weights", _same),
    "finetune.precision": ("precision", str),  # the component's 16/32; TrainConfig also takes "auto"
    "finetune.seed": ("seed", _same),
    "finetune.logging_steps": ("logging_steps", _same),
    "finetune.evaluation_strategy": ("evaluation_strategy", _same),
    "finetune.eval_steps": ("eval_steps", _same),
    "finetune.save_total_limit": ("save_total_limit", _same),
    "finetune.apply_deepspeed": None,
    "finetune.deepspeed_stage": None,
    "finetune.deepspeed": None,
    "finetune.num_nodes_finetune": None,
    "finetune.apply_ort": None,
    "finetune.auto_find_batch_size": None,
    "finetune.dataloader_num_workers": None,
    "finetune.optim": None,
    "finetune.pad_to_max_length": None,
    "finetune.eval_accumulation_steps": None,
    "finetune.enable_full_determinism": None,
    "finetune.logging_strategy": None,
    "finetune.task_name": None,
    "local.save_steps": ("save_steps", _same),
    "local.lora_target_modules": ("lora_target_modules", _modules),
    "local.max_eval_examples": ("max_eval_examples", _same),
    "local.max_tokens_per_micro_batch": ("max_tokens_per_micro_batch", _same),
    "local.gradient_checkpointing": ("gradient_checkpointing", _same),
    "local.gpu_memory_gib": ("gpu_memory_gib", _same),
    "local.torch_compile": ("torch_compile", _same),
    "local.quantize": ("quantize", _same),
}
# Component inputs that have no meaning on one local device; they are recorded on the run, not used.
IGNORED_PARAMETERS = frozenset(k.removeprefix("finetune.") for k, v in TRAIN_CONFIG_TABLE.items() if v is None)
