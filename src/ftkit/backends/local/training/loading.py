"""The phase before the first step: tokenise the data, load the model, plan the steps, batch the evaluation set.

Nothing of it needs keeping, so a stop request cuts it short (see :mod:`.stopping`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from ....home import ftkit_home
from ..data import EncodedSet, PackedArrays, encode_file, pack_arrays
from . import budget, cpu_bf16, hardware, model_setup, stopping
from .config import TrainConfig
from .forward import forward_loss
from .ranks import Ranks

__all__ = ["Loaded", "load", "wrap_forward"]


@attrs.frozen
class Loaded:
    """What the loading phase produced.

    Attributes:
        tokenizer: The base model's tokenizer (saved with the final model).
        train_set: The tokenised training conversations.
        eval_set: The tokenised evaluation conversations (``None``: no evaluation).
        model: The model to train (LoRA-wrapped unless the run trains every weight).
        plan: How steps are cut and computed (:class:`~.budget.Plan`).
        forward: ``forward(batch) -> summed loss``, through DDP or FSDP2 on several processes.
        eval_batches: The evaluation set packed into micro-batches.
    """

    tokenizer: Any
    train_set: EncodedSet
    eval_set: EncodedSet | None
    model: Any
    plan: budget.Plan
    forward: Callable[[Any], Any]
    eval_batches: list[PackedArrays]


def _token_cache(config: TrainConfig) -> Path | None:
    if config.token_cache_dir == "":
        return None
    return Path(config.token_cache_dir) if config.token_cache_dir else ftkit_home() / "cache" / "tokens"


def _encode(
    config: TrainConfig, tokenizer: Any, max_len: int, say: Callable[[str], None]
) -> tuple[EncodedSet, EncodedSet | None]:
    """Strictly private: the training and evaluation sets, tokenised (from the on-disk cache when there)."""
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
    return train_set, eval_set


def load(
    torch: Any,
    transformers: Any,
    config: TrainConfig,
    device: str,
    dtype: Any,
    ranks: Ranks,
    say: Callable[[str], None],
    check: Callable[[], None],
) -> Loaded:
    """Tokenise, load and plan; ``check()`` between the parts raises a stop request."""
    check()
    tokenizer = transformers.AutoTokenizer.from_pretrained(config.model_dir)
    model_max = int(getattr(tokenizer, "model_max_length", 0) or 0)
    max_len = config.max_seq_length if config.max_seq_length > 0 else (model_max if 0 < model_max < 10**6 else 4096)
    train_set, eval_set = _encode(config, tokenizer, max_len, say)
    check()

    # Seed before building the model: LoRA's initial weights come from the global RNG.
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    # Not under FSDP2: a whole bf16 copy on every rank would undo the sharding of the weights.
    bf16_base = hardware.bf16_base_matmuls(device, config.precision, config.apply_lora) and not ranks.fsdp
    numbers = str(dtype).removeprefix("torch.") + (", the frozen base's products in bfloat16" if bf16_base else "")
    say(f"loading the model {Path(config.model_dir).name} on {device} ({numbers})")
    began = time.perf_counter()
    model = model_setup.build_model(config, device, ranks.weights_dtype(dtype))
    if bf16_base:
        cpu_bf16.enable(torch, model)
    stopping.pause_for_tests("load")
    say(f"loaded the model in {time.perf_counter() - began:.1f}s")
    model.train()
    plan = budget.make_plan(torch, config, model, device, max_len)
    model_setup.prepare(model, plan)
    # One process's forward; :func:`wrap_forward` puts it through DDP or FSDP2 on several, after this phase.
    forward = Ranks().wrap(model, lambda m, b: forward_loss(torch, m, b, device, plan), dtype)
    eval_batches: list[PackedArrays] = []
    if eval_set is not None:
        eval_groups = budget.split(
            eval_set.lengths, range(len(eval_set)), plan.budget, config.per_device_eval_batch_size
        )
        eval_batches = [pack_arrays(eval_set, g) for g in eval_groups]
    check()
    return Loaded(tokenizer, train_set, eval_set, model, plan, forward, eval_batches)


def wrap_forward(torch: Any, loaded: Loaded, device: str, dtype: Any, ranks: Ranks) -> Loaded:
    """``loaded`` with the one forward of training and evaluation, through DDP or FSDP2 on several processes.

    Called after the loading phase, not inside it: DDP and FSDP2 start with collectives, which every rank must
    reach, and a rank cut short in its load would leave the others waiting in them (see :mod:`.stopping`).
    """
    if ranks.world == 1:
        return loaded
    plan = loaded.plan
    return attrs.evolve(
        loaded, forward=ranks.wrap(loaded.model, lambda m, b: forward_loss(torch, m, b, device, plan), dtype)
    )
