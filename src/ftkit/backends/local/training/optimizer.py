"""What a run steps: the trainable weights (with float32 masters), AdamW and the learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from .config import TrainConfig
    from .ranks import Ranks

__all__ = ["Optimizing", "Trainables", "make_optimizer"]


class Trainables:
    """The trainable weights, with float32 masters when the model holds them in bf16.

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
        adds: tuple[list[Any], list[Any]] = ([], [])
        for p, m in zip(self.params, self.masters, strict=True):
            if p.grad is None:
                continue
            if m.grad is None:
                m.grad = p.grad.float()
            else:
                adds[0].append(m.grad)
                adds[1].append(p.grad)
            p.grad = None
        if adds[0]:
            # one call for the hundreds of adapter matrices: the per-tensor loop runs in C++, not Python
            self.torch._foreach_add_(*adds)

    def push(self) -> None:
        """Copy the masters into the model's weights (after a step or a checkpoint load)."""
        if self.mixed:
            with self.torch.no_grad():
                self.torch._foreach_copy_(self.params, self.masters)


@attrs.frozen
class Optimizing:
    """The optimizer side of a run: its weights, AdamW, the schedule and how many steps it has.

    Attributes:
        trainables: The trainable weights and their float32 masters.
        optimizer: AdamW over the masters (weight decay only on matrices).
        scheduler: The component's learning-rate schedule over ``total_steps``.
        per_step: Conversations per optimizer step, all ranks together.
        steps_per_epoch: Optimizer steps in one pass over the training set.
        total_steps: Steps the run is planned for.
    """

    trainables: Trainables
    optimizer: Any
    scheduler: Any
    per_step: int
    steps_per_epoch: int
    total_steps: int


def make_optimizer(
    torch: Any, transformers: Any, config: TrainConfig, model: Any, device: str, ranks: Ranks, examples: int
) -> Optimizing:
    """AdamW and the schedule for ``model``'s trainable weights, for ``examples`` training conversations."""
    trainables = Trainables(
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
        # One kernel a parameter instead of a dozen; on a CPU too (measured on 2 shared cores, the 420 LoRA
        # matrices of SmolLM2-135M: 4 ms a step fused, 16 ms unfused with one thread, and far worse with two),
        # but not for FSDP2's sharded weights on a CPU (gloo), which keep the per-op path.
        fused=device == "cuda" or not ranks.fsdp,
    )
    per_step = config.gradient_accumulation_steps * config.per_device_train_batch_size * ranks.world
    steps_per_epoch = math.ceil(examples / per_step)
    total_steps = config.max_steps if config.max_steps > 0 else steps_per_epoch * config.num_train_epochs
    scheduler = transformers.get_scheduler(
        config.lr_scheduler_type, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=total_steps
    )
    return Optimizing(trainables, optimizer, scheduler, per_step, steps_per_epoch, total_steps)
