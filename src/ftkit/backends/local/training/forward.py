"""The one forward pass of training and evaluation, and evaluation itself.

:func:`forward_loss` returns a packed micro-batch's summed cross-entropy over its label tokens (the place to make
fast on a GPU: varlen attention, the head at label positions only, liger's fused loss); :func:`evaluate` averages
it over evaluation batches (each rank its share of them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..loss import label_cross_entropy
from . import label_loss
from .model_setup import causal_parts

if TYPE_CHECKING:
    from ..data import PackedArrays
    from .budget import Plan
    from .ranks import Ranks

__all__ = ["evaluate", "forward_loss", "to_device"]


def to_device(torch: Any, array: Any, device: str) -> Any:
    """A numpy array as a tensor on ``device`` (on CUDA copied without waiting for the running step)."""
    tensor = torch.from_numpy(array)
    if device == "cuda":
        # pinned + non_blocking: the copy is queued behind the running step instead of waiting for it
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def forward_loss(torch: Any, model: Any, batch: PackedArrays, device: str, plan: Plan) -> Any:
    """Return the summed cross-entropy over the batch's label tokens (a float32 scalar on the device).

    The one forward pass of training and evaluation: the place to make fast on GPU.
    """
    ids = to_device(torch, batch.input_ids, device)[None]
    pos = to_device(torch, batch.position_ids, device)[None]
    where = to_device(torch, batch.loss_positions, device)
    targets = to_device(torch, batch.targets, device)
    cu = to_device(torch, batch.cu_seqlens, device)
    # The examples' boundaries, for the attention kernel (see .attention); the host copy serves its fallback.
    kwargs: dict[str, Any] = {
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": batch.max_seqlen,
        "max_length_k": batch.max_seqlen,
    }
    if not plan.compile_layers:  # a tuple argument would make a compiled layer recompile for every batch
        kwargs["ftkit_bounds"] = tuple(int(x) for x in batch.cu_seqlens)
    parts = causal_parts(model) if plan.label_only_loss else None
    if parts is not None:
        decoder, head = parts
        hidden = decoder(input_ids=ids, position_ids=pos, use_cache=False, **kwargs).last_hidden_state[0]
        at_labels = hidden.index_select(0, where)
        # make_plan asks for it only where it applies and works; a plan made by hand is checked here as well
        if plan.sync_free_loss and label_loss.applies(head.weight, head.bias) and label_loss.usable(hidden.device):
            return label_loss.cross_entropy(at_labels, head.weight, targets)
        return label_cross_entropy(at_labels, head, targets, fused=plan.fused_loss)
    logits = model(input_ids=ids, position_ids=pos, use_cache=False, **kwargs).logits[0]
    if not plan.label_only_loss:  # the stock computation: the whole row's logits in float32
        full = torch.full((batch.num_tokens,), -100, dtype=torch.long, device=logits.device)
        full[where] = targets
        return torch.nn.functional.cross_entropy(logits.float(), full, ignore_index=-100, reduction="sum")
    return torch.nn.functional.cross_entropy(logits.index_select(0, where).float(), targets, reduction="sum")


def evaluate(
    torch: Any,
    model: Any,
    forward: Callable[[Any], Any],
    batches: Sequence[PackedArrays],
    device: str,
    ranks: Ranks,
    check: Callable[[], None] = lambda: None,
) -> float:
    """The mean loss per label token over ``batches`` (each rank its share; ``check()`` between batches)."""
    model.eval()
    total = torch.zeros((), device=device)
    count = sum(b.num_labels for b in batches)
    with torch.no_grad():
        for batch, weight in ranks.eval_share(batches):  # each rank its part (see .ranks)
            check()  # a stop request is honoured between batches, not after the whole evaluation
            loss = forward(batch)
            total += loss if weight == 1.0 else loss * weight
    model.train()
    return float(ranks.sum(total)) / max(count, 1)
