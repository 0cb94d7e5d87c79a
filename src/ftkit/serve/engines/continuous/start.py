"""Start the ``continuous`` engine of a deployment: its paged KV cache, then the scheduler over it."""

from __future__ import annotations

import sys

from ..base import EngineOptions, EngineStart
from ..generation import LoadedModel
from .blocks import blocks_for
from .engine import ContinuousBatcher
from .slots import BLOCK_SIZE, SlotDecoder

__all__ = ["start"]


def start(name: str, model: LoadedModel, options: EngineOptions) -> ContinuousBatcher:
    """Start the continuous batcher (the ``continuous`` entry of :mod:`ftkit.serve.engines.registry`).

    ``options.context`` (most positions of one request) and ``options.kv_blocks`` (the paged cache's blocks) are
    planned for the GPU; without a plan (the CPU) the context is the asked ``max_context`` or the model's own and
    the pool holds a whole context for every slot. Prompts that cannot fit the context then get a 400 at encode
    time.
    """
    settings = options.settings
    context = options.context
    if context is None:  # the CPU: no plan, the asked context or the model's
        asked = settings.max_context
        context = min(model.max_length, asked) if asked > 0 else model.max_length
    blocks = options.kv_blocks
    if blocks is None:  # no plan: a pool in which every slot holds a whole context, so nothing is ever preempted
        blocks = options.slots * blocks_for(context, BLOCK_SIZE)
    model.max_length = context
    decoder = SlotDecoder(
        model.model,
        slots=options.slots,
        context=context,
        blocks=blocks,
        block_size=BLOCK_SIZE,
        cuda_graphs=settings.cuda_graphs,
    )
    worker = ContinuousBatcher(
        name, model, decoder, max_queue=options.max_queue, prefill_tokens=settings.prefill_tokens
    )
    if model.device.type == "cuda":
        # The engine thread wakes from each step's GPU wait wanting the GIL while the event loop streams the
        # last step's tokens; with the default 5 ms switch interval that wait alone can exceed a decode step.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
    return worker


# Checked by mypy: the engine meets the Engine Protocol through its start function.
_checked: EngineStart = start
