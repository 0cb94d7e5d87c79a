"""Load a registered model and generate a left-padded batch, token by token (server side: imports torch).

One decode loop serves every request shape: each row has its own prompt, sampling parameters and token
budget, and a callback receives every new token (so streaming works inside a batch, and a row can be
stopped when its client goes away or its deadline passes). Rows stop at an end-of-sequence token (the
generation config's and the tokenizer's) or at their ``max_new_tokens``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..contract.prompts import encode_conversation, lock_free_decoder, longest_token_chars, tokenizer_lock
from ..contract.requests import GenParams

__all__ = ["LoadedModel", "choose_tokens", "seeded_generator"]

Emit = Callable[[int, int], bool]
"""``emit(row, token_id)`` is called for each new token; it returns ``False`` to stop that row."""


class LoadedModel:
    """A causal LM and its tokenizer, ready to generate.

    Args:
        path: A directory that ``AutoModelForCausalLM`` and ``AutoTokenizer`` load (tokenizer with a chat template).
        device: Where the model runs: the CPU (the default) or a CUDA device.
        dtype: The weights' type; float32 on the CPU and bfloat16 on CUDA when not given.
    """

    def __init__(self, path: Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = path
        self.device = torch.device(device)
        # bfloat16 halves the weights and the bytes each decode step reads on a GPU; the CPU keeps float32, whose
        # kernels are the fast ones there (and whose outputs the CPU tests pin).
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(path)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer in {path} has no chat template; the endpoint needs one")
        placed = {} if self.device.type == "cpu" else {"device_map": str(self.device)}
        self.model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype, **placed)
        self.model.train(False)  # inference mode: no dropout
        eos: set[int] = set()
        for value in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(value, int):
                eos.add(value)
            elif isinstance(value, list | tuple):
                eos.update(v for v in value if isinstance(v, int))
        self.eos_ids = frozenset(eos)
        pad = self.tokenizer.pad_token_id
        self.pad_id: int = pad if isinstance(pad, int) else min(eos, default=0)
        self.max_length: int = int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)
        # transformers 5.x renamed the KV cache argument from past_key_values to cache (the old name warns).
        self._cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self.max_token_chars = longest_token_chars(self.tokenizer)
        self._decode = lock_free_decoder(self.tokenizer)

    def encode(self, conversation: Sequence[Mapping[str, str]], field: str, max_new_tokens: int) -> list[int]:
        """Render a conversation with the chat template (with the generation prompt) and tokenize it.

        Special tokens inside messages stay text (see :mod:`.prompts`). CPU work: call it off the event loop.

        Raises:
            BadRequest: The template rejects the conversation, or prompt plus answer exceed the context.
        """
        return encode_conversation(
            self.tokenizer,
            conversation,
            field,
            max_new_tokens=max_new_tokens,
            context=self.max_length,
            max_token_chars=self.max_token_chars,
        )

    def decode(self, ids: Sequence[int]) -> str:
        """Return the text of generated token ids (special tokens dropped); safe from any thread."""
        if self._decode is not None:
            return self._decode(ids)
        with tokenizer_lock(self.tokenizer):
            return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], params: Sequence[GenParams], emit: Emit) -> list[str]:
        """Generate every row of a batch at once (left-padded), calling ``emit`` for each new token.

        Args:
            prompts: Token ids of each row's prompt.
            params: Each row's generation parameters.
            emit: Called with ``(row, token_id)`` for each generated token; returning ``False`` stops the row.

        Returns:
            Each row's finish reason: ``stop`` (end-of-sequence), ``length`` (``max_new_tokens``) or ``cancelled``.
        """
        n = len(prompts)
        width = max(len(p) for p in prompts)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            if p:
                input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
                mask[i, width - len(p) :] = 1
        device = self.device
        input_ids, mask = input_ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
        past = out[self._cache_arg]
        logits = out.logits[:, -1, :]
        next_pos = positions[:, -1:] + 1

        sample = torch.tensor([p.do_sample for p in params], device=device)
        temps = torch.tensor(
            [p.temperature if p.do_sample else 1.0 for p in params], dtype=torch.float32, device=device
        )
        top_ps = torch.tensor([p.top_p for p in params], dtype=torch.float32, device=device)
        any_sample = any(p.do_sample for p in params)
        # A seeded row samples from its own generator, so its answer does not depend on what else is in the batch.
        generators = [seeded_generator(p, device) for p in params]
        budgets = [p.max_new_tokens for p in params]
        counts = [0] * n
        reasons: list[str | None] = [None] * n
        pad = torch.tensor(self.pad_id, dtype=torch.long, device=device)

        for _ in range(max(budgets)):
            chosen = choose_tokens(logits.float(), sample, temps, top_ps, any_sample=any_sample, generators=generators)
            for i, token in enumerate(chosen.tolist()):
                if reasons[i] is not None:
                    continue
                if token in self.eos_ids:
                    reasons[i] = "stop"
                    continue
                counts[i] += 1
                if not emit(i, token):
                    reasons[i] = "cancelled"
                elif counts[i] >= budgets[i]:
                    reasons[i] = "length"
            if all(r is not None for r in reasons):
                break
            done = torch.tensor([r is not None for r in reasons], device=device)
            feed = torch.where(done, pad, chosen)[:, None]
            mask = torch.cat([mask, torch.ones((n, 1), dtype=torch.long, device=device)], dim=-1)
            out = self.model(
                input_ids=feed, attention_mask=mask, position_ids=next_pos, use_cache=True, **{self._cache_arg: past}
            )
            past = out[self._cache_arg]
            logits = out.logits[:, -1, :]
            next_pos = next_pos + 1
        return [r or "length" for r in reasons]


def seeded_generator(params: GenParams, device: torch.device | str = "cpu") -> torch.Generator | None:
    """Return a generator seeded with ``params.seed`` for a sampled row, else ``None``."""
    if not params.do_sample or params.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(params.seed % 2**64)


def choose_tokens(
    logits: torch.Tensor,
    sample: torch.Tensor,
    temps: torch.Tensor,
    top_ps: torch.Tensor,
    *,
    any_sample: bool | None = None,
    generators: Sequence[torch.Generator | None] = (),
) -> torch.Tensor:
    """Pick each row's next token, greedily or by temperature + nucleus sampling.

    Args:
        logits: ``[rows, vocab]`` float logits.
        sample: Which rows sample (the others take the argmax).
        temps: Each row's temperature.
        top_ps: Each row's nucleus mass.
        any_sample: Whether any row samples, when the caller knows (saves a device round trip on a GPU).
        generators: Per row, its own generator (a request's ``seed``) or ``None`` (torch's global one).
    """
    greedy = logits.argmax(dim=-1)
    if not (bool(sample.any()) if any_sample is None else any_sample):
        return greedy
    # Temperatures and top_p too small for float32 (1e-300 reads as 0) must not divide by zero or empty the pool.
    probs = torch.softmax(logits / temps.clamp_min(1e-4)[:, None], dim=-1).nan_to_num(0.0)
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
    # Drop tokens once the mass before them reaches top_p; the most likely token always stays.
    drop = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_ps[:, None]
    drop[:, 0] = False
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    sorted_probs[:, 0] = sorted_probs[:, 0].clamp_min(1e-12)  # a row of zeros (all NaN) falls back to greedy
    seeded = [(i, g) for i, g in enumerate(generators) if g is not None]
    # Only rows that sample without a seed need the shared draw (sample.sum() is a device sync: skipped when unseeded).
    if not seeded or len(seeded) < int(sample.sum()):
        draws = torch.multinomial(sorted_probs, 1)
    else:
        draws = torch.zeros((logits.shape[0], 1), dtype=torch.long, device=logits.device)
    for i, generator in seeded:
        draws[i] = torch.multinomial(sorted_probs[i], 1, generator=generator)
    picked = order.gather(-1, draws).squeeze(-1)
    return torch.where(sample, picked, greedy)
