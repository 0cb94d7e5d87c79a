"""Start the ``continuous`` engine of a deployment: its slot KV cache, then the scheduler over it."""

from __future__ import annotations

import sys

from ..base import EngineOptions, EngineStart
from ..generation import LoadedModel
from .engine import ContinuousBatcher
from .slots import SlotDecoder

__all__ = ["start"]


def start(name: str, model: LoadedModel, options: EngineOptions) -> ContinuousBatcher:
    """Start the continuous batcher (the ``continuous`` entry of :mod:`ftkit.serve.engines.registry`).

    ``options.context`` is the positions per slot planned for the GPU; without a plan (the CPU) it is the asked
    ``max_context`` or the model's own. Prompts that cannot fit a slot then get a 400 at encode time.
    """
    settings = options.settings
    context = options.context
    if context is None:  # the CPU: no plan, the asked context or the model's
        asked = settings.max_context
        context = min(model.max_length, asked) if asked > 0 else model.max_length
    model.max_length = context
    decoder = SlotDecoder(model.model, slots=options.slots, context=context, cuda_graphs=settings.cuda_graphs)
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
