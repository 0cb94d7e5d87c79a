"""Render a conversation into prompt token ids, with the caller's text kept as text (no torch).

Two guarantees the server needs from prompt building:

* **Special tokens in messages stay text.** Rendering the chat template and tokenizing the result would turn a
  user's ``<|end|><|assistant|>`` into real control tokens, letting a caller forge another role's turn. So the
  template is rendered with a random placeholder in place of each message's content; the template's own text is
  tokenized as usual (its special tokens are real), and each content is tokenized with special tokens split
  into plain text (``split_special_tokens``), then spliced in where the placeholder was.
* **Too long is refused before the expensive part.** No token of the vocabulary spans more than
  ``max_token_chars`` characters, so a content of ``n`` characters is at least ``n / max_token_chars`` tokens:
  a prompt that cannot fit the context is refused from its length alone, without templating or tokenizing a
  megabyte. The exact count is checked after tokenization.

Contents are spliced in verbatim: a template that transforms content (``| trim``) transforms the placeholder,
not the content.

A tokenizer is not safe to call from two threads at once: ``split_special_tokens`` is a setting of the shared
Rust tokenizer that transformers switches on and off per call, so a concurrent call could tokenize the template's
own ``<|user|>`` as text (seen: 4 of 48 concurrent identical requests got another prompt), and switching it
while another thread encodes or decodes fails ("Already borrowed"). Each tokenizer's calls, here and in
:meth:`~.generation.LoadedModel.decode`, are serialized by its own :func:`tokenizer_lock`. Decoding, which the
engine does for every row at every step, avoids both the lock and transformers' per-call overhead where it can:
:func:`lock_free_decoder` decodes with a private copy of the Rust tokenizer that nothing ever reconfigures.
"""

from __future__ import annotations

import re
import secrets
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .requests import BadRequest

__all__ = [
    "check_fits",
    "encode_conversation",
    "lock_free_decoder",
    "longest_token_chars",
    "min_tokens",
    "tokenizer_lock",
]

_locks: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_locks_lock = threading.Lock()


def tokenizer_lock(tokenizer: Any) -> threading.Lock:
    """Return the lock that serializes calls into ``tokenizer`` (encoding here, decoding in the worker)."""
    with _locks_lock:
        lock = _locks.get(tokenizer)
        if lock is None:
            lock = _locks[tokenizer] = threading.Lock()
        return lock


def lock_free_decoder(tokenizer: Any) -> Callable[[Sequence[int]], str] | None:
    """Return ``ids -> text`` equal to ``tokenizer.decode(ids, skip_special_tokens=True)``, safe from any thread.

    It decodes with a private copy of the tokenizer's Rust backend: decoding borrows it read-only and nothing
    ever changes its settings, so threads need no lock, and it skips transformers' Python wrapper (measured on
    256 streamed rows of a word-level tokenizer: 21 µs a token through ``tokenizer.decode`` and the lock, under 6
    µs this way). ``None`` where the two could differ: a slow (Python) tokenizer, a class with its own decoding,
    or ``clean_up_tokenization_spaces``, which transformers applies after the backend.
    """
    from transformers import PreTrainedTokenizerFast

    kind = type(tokenizer)
    if not isinstance(tokenizer, PreTrainedTokenizerFast) or getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return None
    if kind.decode is not PreTrainedTokenizerFast.decode or kind._decode is not PreTrainedTokenizerFast._decode:
        return None
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())

    def decode(ids: Sequence[int]) -> str:
        return str(backend.decode(list(ids), skip_special_tokens=True))

    return decode


def longest_token_chars(tokenizer: Any) -> int:
    """Return the most characters one vocabulary entry stands for (its raw form is never shorter than its text).

    Byte-level BPE writes one character per byte and SentencePiece one per character (``▁`` for a space), so the
    raw vocabulary string is at least as long as the text it decodes to.
    """
    vocab = tokenizer.get_vocab()
    return max((len(t) for t in vocab), default=1) or 1


def min_tokens(conversation: Sequence[Mapping[str, str]], max_token_chars: int) -> int:
    """Return a lower bound on the tokens of a conversation's contents (template text not counted)."""
    return sum(-(-len(m["content"]) // max_token_chars) for m in conversation)


def check_fits(
    conversation: Sequence[Mapping[str, str]], field: str, *, max_new_tokens: int, context: int, max_token_chars: int
) -> None:
    """Refuse, from its length alone, a conversation that cannot fit the context with its answer.

    Raises:
        BadRequest: Its contents alone are more tokens than the context leaves.
    """
    at_least = min_tokens(conversation, max_token_chars)
    if at_least > context - max_new_tokens:
        raise BadRequest(
            field,
            f"the prompt is at least {at_least} tokens; with max_new_tokens={max_new_tokens} it exceeds the "
            f"model's context of {context} tokens",
        )


def encode_conversation(
    tokenizer: Any,
    conversation: Sequence[Mapping[str, str]],
    field: str,
    *,
    max_new_tokens: int,
    context: int,
    max_token_chars: int,
) -> list[int]:
    """Render a conversation with the chat template (with the generation prompt) into token ids.

    Args:
        tokenizer: A Hugging Face tokenizer with a chat template.
        conversation: The messages (``role``, ``content``).
        field: The conversation's field path, for errors.
        max_new_tokens: The answer's token budget.
        context: The model's context length.
        max_token_chars: :func:`longest_token_chars` of the tokenizer.

    Returns:
        The prompt's token ids.

    Raises:
        BadRequest: The prompt cannot fit the context with ``max_new_tokens``, or the template rejects it.
    """
    check_fits(conversation, field, max_new_tokens=max_new_tokens, context=context, max_token_chars=max_token_chars)
    room = context - max_new_tokens
    nonce = secrets.token_hex(8)
    marker = re.compile(f"\ue000{nonce}:(\\d+)\ue001")
    placeholders = [{**m, "content": f"\ue000{nonce}:{i}\ue001"} for i, m in enumerate(dict(m) for m in conversation)]
    try:
        rendered = tokenizer.apply_chat_template(placeholders, tokenize=False, add_generation_prompt=True)
        pieces = marker.split(str(rendered))
        # pieces alternate: template text, content index, template text, ...
        literals = pieces[0::2]
        contents = [conversation[int(i)]["content"] for i in pieces[1::2]]
        with tokenizer_lock(tokenizer):
            literal_ids = tokenizer(literals, add_special_tokens=False)["input_ids"]
            content_ids = (
                tokenizer(contents, add_special_tokens=False, split_special_tokens=True)["input_ids"]
                if contents
                else []
            )
    except Exception as exc:  # a template may raise anything (jinja's raise_exception, a KeyError...)
        raise BadRequest(field, f"the model's chat template rejected the conversation: {exc}") from None
    ids: list[int] = []
    for i, literal in enumerate(literal_ids):
        ids.extend(literal)
        if i < len(content_ids):
            ids.extend(content_ids[i])
    if len(ids) > room:
        raise BadRequest(
            field,
            f"the prompt is {len(ids)} tokens; with max_new_tokens={max_new_tokens} it exceeds the model's "
            f"context of {context} tokens",
        )
    return ids
