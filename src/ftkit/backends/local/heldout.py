"""Held-out loss of a model directory, with training's own masking (assistant tokens only).

The evaluation asks for it through :meth:`LocalBackend.heldout_losses`; the conversation is tokenised by
:func:`~ftkit.backends.local.data.encode_conversation`, exactly as training does, so the numbers are comparable
with the training run's ``eval_loss``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...exceptions import MissingDependencyError

__all__ = ["conversation_losses"]


def conversation_losses(
    model_dir: str | Path,
    conversations: Sequence[Sequence[Mapping[str, Any]]],
    *,
    device: str = "auto",
    max_seq_length: int = 2048,
) -> list[tuple[float, int]]:
    """Return ``(summed NLL of the assistant tokens, their count)`` for each conversation.

    Args:
        model_dir: A model directory (merged weights, or a PEFT adapter directory naming its base).
        conversations: Whole conversations (the held-out answer as the last assistant turn).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        max_seq_length: Longest sequence scored (longer ones are cut from the right, as in training).

    Returns:
        One pair per conversation; ``(0.0, 0)`` where no assistant token survives the cut.

    Raises:
        MissingDependencyError: The ``local`` extra is not installed.
    """
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise MissingDependencyError(exc.name or "torch", "local") from None
    from .data import encode_conversation

    target = "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dtype = torch.bfloat16 if target == "cuda" else torch.float32
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    model = model.to(target).eval()
    limit = min(max_seq_length, int(getattr(model.config, "max_position_embeddings", max_seq_length)))
    out: list[tuple[float, int]] = []
    with torch.inference_mode():
        for conversation in conversations:
            example = encode_conversation(tokenizer, conversation, limit)
            if example is None:
                out.append((0.0, 0))
                continue
            ids = torch.tensor([example.input_ids], device=target)
            labels = torch.tensor(example.labels[1:], device=target)
            logits = model(input_ids=ids).logits[0, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
            out.append((float(nll), int((labels != -100).sum())))
    return out
