"""A tiny Phi-3-architecture chat model for the demo and the tests, built from nothing in seconds.

:func:`make_tiny_model` trains a byte-level BPE tokenizer on the given texts (with Phi-3's chat special tokens
and a Phi-3-style chat template whose assistant spans are marked with ``{% generation %}``, so
``apply_chat_template(..., return_assistant_tokens_mask=True)`` works), initialises a small ``Phi3ForCausalLM``
with random weights from a seed, and saves both as an ordinary Hugging Face model directory. Nothing is
downloaded. :func:`synthetic_conversations` makes a learnable chat dataset to train it on.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ...exceptions import MissingDependencyError, Problem, ValidationError

__all__ = [
    "ASSISTANT_TOKEN",
    "CHAT_TEMPLATE",
    "END_TOKEN",
    "EOS_TOKEN",
    "SPECIAL_TOKENS",
    "SYSTEM_TOKEN",
    "USER_TOKEN",
    "chat_texts",
    "make_tiny_model",
    "synthetic_conversations",
]

EOS_TOKEN = "<|endoftext|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
SYSTEM_TOKEN = "<|system|>"
END_TOKEN = "<|end|>"
SPECIAL_TOKENS = (EOS_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, SYSTEM_TOKEN, END_TOKEN)

# Phi-3's template, with the assistant's answer and its closing <|end|> inside a generation block: that is the
# span the model learns (and the span HF's assistant-token mask reports). Unknown roles are skipped, as Phi-3 does.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' }}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

_COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "grey", "pink")
_ANIMALS = ("cat", "dog", "fox", "owl", "bear", "wolf", "frog", "duck", "lion", "seal")
_COUNTRIES = {
    "France": "Paris",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Japan": "Tokyo",
    "Egypt": "Cairo",
    "Peru": "Lima",
    "Kenya": "Nairobi",
    "Chile": "Santiago",
    "Norway": "Oslo",
    "Canada": "Ottawa",
}


def synthetic_conversations(n: int, *, seed: int = 0, system_every: int = 4) -> list[dict[str, Any]]:
    """Make ``n`` small chat rows in the component's format (``{"messages": [{role, content}, ...]}``).

    The answers follow fixed patterns (arithmetic, capitals, reversing words, colours of animals), so a tiny
    model visibly learns them within a few dozen steps: the evaluation loss falls. Deterministic for a seed.

    Args:
        n: How many rows.
        seed: The random seed.
        system_every: Every ``system_every``-th row starts with a system message (0: never).

    Returns:
        The rows, each with a ``prompt_id`` and ``messages`` (some rows have two user/assistant exchanges).
    """
    rng = random.Random(seed)
    countries = sorted(_COUNTRIES)

    def exchange() -> tuple[str, str]:
        kind = rng.randrange(4)
        if kind == 0:
            a, b = rng.randrange(10, 50), rng.randrange(10, 50)
            return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
        if kind == 1:
            country = rng.choice(countries)
            return f"What is the capital of {country}?", f"The capital of {country} is {_COUNTRIES[country]}."
        if kind == 2:
            words = [rng.choice(_ANIMALS) for _ in range(3)]
            return f"Reverse these words: {' '.join(words)}", f"Reversed: {' '.join(reversed(words))}."
        animal, color = rng.choice(_ANIMALS), rng.choice(_COLORS)
        return f"Describe a {color} {animal}.", f"A {color} {animal} is a {animal} whose fur is {color}."

    rows: list[dict[str, Any]] = []
    for i in range(n):
        messages: list[dict[str, str]] = []
        if system_every and i % system_every == 0:
            messages.append({"role": "system", "content": "You are a helpful assistant. Answer briefly."})
        for _ in range(1 + (rng.random() < 0.3)):
            question, answer = exchange()
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rows.append({"prompt_id": f"synthetic-{seed}-{i}", "messages": messages})
    return rows


def chat_texts(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Return the message contents of chat rows as plain texts (for training a tokenizer on a dataset).

    Args:
        rows: Rows in the component's format; rows without a ``messages`` list are skipped.

    Returns:
        One text per message with string content.
    """
    texts: list[str] = []
    for row in rows:
        messages = row.get("messages")
        if not isinstance(messages, list):
            continue
        texts.extend(str(m["content"]) for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str))
    return texts


def read_jsonl_texts(paths: Sequence[str | Path]) -> list[str]:
    """Return :func:`chat_texts` of every row of JSONL chat files (unparsable lines are skipped)."""
    rows: list[Mapping[str, Any]] = []
    for path in paths:
        with Path(path).open(encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    return chat_texts(rows)


def make_tiny_model(
    out_dir: str | Path,
    *,
    texts: Iterable[str] | None = None,
    seed: int = 0,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 256,
    max_position_embeddings: int = 2048,
) -> Path:
    """Build a tiny random-weight Phi-3 chat model with a tokenizer trained on ``texts``, and save it.

    The directory loads with ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``
    (tokenizer with the chat template). Same ``texts`` and ``seed`` give the same files.

    Args:
        out_dir: Where to save it (created; existing files are overwritten).
        texts: Texts to train the tokenizer on; a built-in corpus of :func:`synthetic_conversations` by default.
        seed: Seed of the weights.
        vocab_size: Target vocabulary size (smaller when the texts have fewer distinct merges).
        hidden_size: Hidden size.
        num_layers: Decoder layers.
        num_heads: Attention heads (must divide ``hidden_size``).
        intermediate_size: MLP width.
        max_position_embeddings: Longest sequence.

    Returns:
        ``out_dir``.

    Raises:
        ValidationError: Sizes that do not fit together.
        MissingDependencyError: The ``local`` extra is not installed.
    """
    problems = []
    if hidden_size % num_heads or (hidden_size // num_heads) % 2:
        problems.append(
            Problem("num_heads", f"{num_heads} heads do not split hidden_size {hidden_size} into even head sizes")
        )
    if vocab_size < 300:
        problems.append(Problem("vocab_size", f"{vocab_size} is too small", "use at least 300 (256 bytes + specials)"))
    if problems:
        raise ValidationError(problems, "invalid tiny model settings")
    try:
        import torch
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import Phi3Config, Phi3ForCausalLM, PreTrainedTokenizerFast
    except ImportError as exc:
        raise MissingDependencyError(exc.name or "torch", "local") from None

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = list(texts) if texts is not None else chat_texts(synthetic_conversations(400, seed=1234))
    if not corpus:
        corpus = ["hello"]

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        eos_token=END_TOKEN,
        pad_token=EOS_TOKEN,
        unk_token=None,
        model_max_length=max_position_embeddings,
        padding_side="left",  # batched generation pads on the left
        clean_up_tokenization_spaces=False,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(out)

    end_id = tok.token_to_id(END_TOKEN)
    eos_id = tok.token_to_id(EOS_TOKEN)
    config = Phi3Config(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        original_max_position_embeddings=max_position_embeddings,
        bos_token_id=eos_id,
        eos_token_id=end_id,
        pad_token_id=eos_id,
        sliding_window=None,
        tie_word_embeddings=False,
    )
    # Seed, then restore the global RNG: the weights depend on the seed alone and the caller's RNG is untouched.
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Phi3ForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)
    model.generation_config.eos_token_id = [end_id, eos_id]
    model.generation_config.pad_token_id = eos_id
    model.save_pretrained(out)
    return out
