"""Parse and check the bodies of ``/score`` and ``/v1/chat/completions`` (pure: no torch, no HTTP).

Every problem becomes a :class:`BadRequest` naming the field (``input_data.input_string[0][1].role``), which
the server answers with 400. The server never lets anything else escape as a 500.

``/score`` (the Azure ML chat-completion contract) accepts ``input_string`` in both shapes seen in Azure's
samples: a list of conversations (``[[{role, content}, ...], ...]``, what the fine-tuning notebook sends) and
one flat conversation (``[{role, content}, ...]``, the Llama chat sample). The answer is
``{"output": "<text>"}`` for one conversation and ``{"output": ["<text>", ...]}`` (same order) for several.

Every field a body may carry is either honoured or rejected with a 400 naming it, never silently ignored: a client
that asks for ``tools`` or ``logprobs`` learns at once that this endpoint cannot give them. Fields whose only
supported value is their default (``presence_penalty: 0``, ``logprobs: false``...) are accepted with that value,
as clients and frameworks send them spelled out; ``null`` means "the default" for every OpenAI field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

import attrs

__all__ = [
    "CHAT_DEFAULT_ONLY",
    "CHAT_FIELDS",
    "CHAT_HONOURED",
    "MAX_CONVERSATIONS",
    "MAX_STOPS",
    "MAX_STOP_CHARS",
    "ROLES",
    "SCORE_DEFAULT_ONLY",
    "SCORE_HONOURED",
    "SCORE_NULLABLE",
    "SCORE_PARAMETERS",
    "SEED_RANGE",
    "BadRequest",
    "ChatRequest",
    "Field",
    "GenParams",
    "ScoreRequest",
    "Stops",
    "parse_chat",
    "parse_score",
]

ROLES = ("system", "user", "assistant")
"""The roles a message may have."""

DEFAULT_MAX_NEW_TOKENS = 256
MAX_CONVERSATIONS = 64
MAX_STOPS = 4
MAX_STOP_CHARS = 200
SEED_RANGE = (-(2**63), 2**63 - 1)

Stops = tuple[str, ...]


@attrs.frozen
class Field:
    """One field a body may carry, honoured: its JSON kind and bounds.

    The one definition both the parser (:func:`parse_score`, :func:`parse_chat`) and the OpenAPI document
    (:mod:`.openapi`) read, so the schema a client sees is the check the server makes.

    Attributes:
        kind: ``number`` (in ``[low, high]``, or ``(low, high]`` with ``low_open``), ``tokens`` (an integer in
            ``[1, the endpoint's cap]``), ``boolean``, ``string``, ``stop`` (a string or up to
            :data:`MAX_STOPS` strings), ``seed`` (a 64-bit integer), ``one`` (the integer 1: ``n``),
            ``messages`` (a conversation) or ``object`` (of the honoured fields in ``fields``).
        low: A number's lowest value.
        high: A number's highest value.
        low_open: Whether ``low`` itself is out of range.
        fields: An object's own fields.
    """

    kind: Literal["number", "tokens", "boolean", "string", "stop", "seed", "one", "messages", "object"]
    low: float = 0.0
    high: float = 0.0
    low_open: bool = False
    fields: Mapping[str, Field] = attrs.field(factory=dict)


# /v1/chat/completions: what each OpenAI field does here. Honoured fields are parsed below; these are accepted
# only with their default value (the behaviour this endpoint has), anything else is a 400 naming the field.
CHAT_HONOURED: Mapping[str, Field] = {
    "messages": Field("messages"),
    "model": Field("string"),
    "temperature": Field("number", 0, 2),
    "top_p": Field("number", 0, 1, low_open=True),
    "max_tokens": Field("tokens"),
    "max_completion_tokens": Field("tokens"),
    "n": Field("one"),
    "stream": Field("boolean"),
    "stream_options": Field("object", fields={"include_usage": Field("boolean")}),
    "stop": Field("stop"),
    "seed": Field("seed"),
    "user": Field("string"),  # an end-user id for the caller's records: it does not change the answer (nor at OpenAI)
}
"""The chat completion fields this endpoint honours (every OpenAI field may also be ``null``: the default)."""
CHAT_DEFAULT_ONLY: Mapping[str, object] = {
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logprobs": False,
    "logit_bias": {},
    "tools": [],
    "tool_choice": "none",
    "response_format": {"type": "text"},
    "modalities": ["text"],
    "store": False,
}
"""Chat completion fields accepted only with their default value (what this endpoint does)."""
# /score: input_data.parameters keys (Hugging Face generation names, as Azure's chat-completion models take them).
SCORE_HONOURED: Mapping[str, Field] = {
    "max_new_tokens": Field("tokens"),
    "max_gen_len": Field("tokens"),
    "do_sample": Field("boolean"),
    "temperature": Field("number", 0, 100),
    "top_p": Field("number", 0, 1, low_open=True),
    "stop": Field("stop"),
    "seed": Field("seed"),
}
"""The ``input_data.parameters`` keys this endpoint honours (``null`` only for ``stop`` and ``seed``)."""
SCORE_DEFAULT_ONLY: Mapping[str, object] = {"return_full_text": False, "num_return_sequences": 1}
"""``input_data.parameters`` keys accepted only with their default value."""
SCORE_NULLABLE = ("stop", "seed")
"""The ``input_data.parameters`` keys that may be ``null`` (meaning: none)."""

CHAT_FIELDS = (*CHAT_HONOURED, *CHAT_DEFAULT_ONLY)
"""Every field a chat completion body may carry."""
SCORE_PARAMETERS = (*SCORE_HONOURED, *SCORE_DEFAULT_ONLY)
"""Every key ``input_data.parameters`` may carry."""


class BadRequest(Exception):
    """A request the server answers with 400.

    Args:
        field: The offending field's path, e.g. ``messages[1].role`` (``body`` for the whole body).
        message: What is wrong with it.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@attrs.frozen
class GenParams:
    """How to generate one answer.

    Attributes:
        max_new_tokens: Most tokens to generate.
        do_sample: Sample (else greedy).
        temperature: Sampling temperature (``do_sample`` only).
        top_p: Nucleus sampling mass (``do_sample`` only).
        stop: Strings that end the answer (cut before the first one found).
        seed: Seeds this row's own sampling generator (``do_sample`` only): equal requests, equal answers.
    """

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    stop: Stops = ()
    seed: int | None = None


Conversation = tuple[Mapping[str, str], ...]


@attrs.frozen
class ScoreRequest:
    """A parsed ``/score`` body.

    Attributes:
        conversations: The conversations to answer, in order.
        params: Generation parameters (shared by all conversations).
        single: Whether the answer is one string (one conversation sent) rather than a list.
        fields: Each conversation's field path, for errors found later (a prompt too long).
    """

    conversations: tuple[Conversation, ...]
    params: GenParams
    single: bool
    fields: tuple[str, ...]


@attrs.frozen
class ChatRequest:
    """A parsed ``/v1/chat/completions`` body.

    Attributes:
        messages: The conversation.
        params: Generation parameters.
        model: The ``model`` field, if given (names a deployment when it matches one).
        stream: Answer with server-sent events.
        include_usage: With ``stream``, send a last chunk with token counts (``stream_options.include_usage``).
    """

    messages: Conversation
    params: GenParams
    model: str | None = None
    stream: bool = False
    include_usage: bool = False


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _object(value: object, field: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(field, f"expected an object, got {_type_name(value)}")
    return value


def _number(
    value: object, field: str, *, low: float, high: float, low_open: bool = False, integer: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        raise BadRequest(field, f"expected {'an integer' if integer else 'a number'}, got {_type_name(value)}")
    if value != value or value < low or value > high or (low_open and value == low):  # value != value: NaN
        lo = "(" if low_open else "["
        raise BadRequest(field, f"{value} is out of range {lo}{low:g}, {high:g}]")
    return float(value)


def _bounded(specs: Mapping[str, Field], given: Mapping[str, Any], key: str, prefix: str) -> float:
    """A number field of ``given`` checked against its :class:`Field` bounds (``prefix``: its parent's path)."""
    spec = specs[key]
    where = f"{prefix}.{key}" if prefix else key
    return _number(given[key], where, low=spec.low, high=spec.high, low_open=spec.low_open)


def _bool(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(field, f"expected true or false, got {_type_name(value)}")
    return value


def _content(value: object, field: str) -> str:
    if isinstance(value, str):
        return value
    # OpenAI clients may send content as a list of parts; text parts are all a chat model can read.
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            p = _object(part, f"{field}[{i}]")
            if p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise BadRequest(f"{field}[{i}]", 'only text parts are supported: {"type": "text", "text": "..."}')
            texts.append(p["text"])
        return "".join(texts)
    raise BadRequest(field, f"expected a string, got {_type_name(value)}")


def _message(value: object, field: str) -> Mapping[str, str]:
    msg = _object(value, field)
    if "role" not in msg:
        raise BadRequest(f"{field}.role", "is required")
    role = msg["role"]
    if not isinstance(role, str):
        raise BadRequest(f"{field}.role", f"expected a string, got {_type_name(role)}")
    if role not in ROLES:
        raise BadRequest(f"{field}.role", f"unknown role {role[:40]!r}; valid roles: {', '.join(ROLES)}")
    if "content" not in msg:
        raise BadRequest(f"{field}.content", "is required")
    return {"role": role, "content": _content(msg["content"], f"{field}.content")}


def _conversation(value: object, field: str) -> Conversation:
    if not isinstance(value, list):
        raise BadRequest(field, f"expected a list of messages, got {_type_name(value)}")
    if not value:
        raise BadRequest(field, "the conversation is empty; send at least one message")
    return tuple(_message(m, f"{field}[{i}]") for i, m in enumerate(value))


def _check_fields(
    given: Mapping[str, Any], prefix: str, honoured: tuple[str, ...], default_only: Mapping[str, object]
) -> None:
    """Reject a field this endpoint does not honour, naming it (``null`` is the default for OpenAI fields)."""
    for key in given:
        value = given[key]
        field = f"{prefix}{key}"
        if key in honoured:
            continue
        if key in default_only:
            default = default_only[key]
            if value is None or _same(value, default):
                continue
            raise BadRequest(
                field, f"only {_json(default)} is supported by this endpoint (got {_json(value, limit=60)})"
            )
        if value is None and not prefix.startswith("input_data"):
            continue
        valid = ", ".join((*honoured, *default_only))
        raise BadRequest(field, f"is not supported by this endpoint; supported fields: {valid}")


def _same(value: object, default: object) -> bool:
    # bool is an int in Python: false must not pass for 0, nor 0 for false; 0.0 is 0.
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool) and value == default
    if isinstance(default, int | float):
        return isinstance(value, int | float) and value == default
    return value == default


def _json(value: object, *, limit: int = 200) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _stops(value: object, field: str) -> Stops:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise BadRequest(field, f"expected a string or a list of strings, got {_type_name(value)}")
    if len(items) > MAX_STOPS:
        raise BadRequest(field, f"{len(items)} stop strings is more than the {MAX_STOPS} allowed")
    stops = []
    for i, item in enumerate(items):
        where = field if isinstance(value, str) else f"{field}[{i}]"
        if not isinstance(item, str):
            raise BadRequest(where, f"expected a string, got {_type_name(item)}")
        if not item:
            raise BadRequest(where, "an empty stop string would stop before the first character")
        if len(item) > MAX_STOP_CHARS:
            raise BadRequest(where, f"a stop string of {len(item)} characters is longer than {MAX_STOP_CHARS}")
        stops.append(item)
    return tuple(dict.fromkeys(stops))


def _seed(value: object, field: str) -> int:
    # Not through _number: a JSON integer past float's range would overflow float().
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(field, f"expected an integer, got {_type_name(value)}")
    low, high = SEED_RANGE
    if not low <= value <= high:
        raise BadRequest(field, "is out of range: use a 64-bit signed integer")
    return value


def _max_tokens(value: object, field: str, cap: int) -> int:
    # Not through _number: JSON integers are unbounded, and float() of a 400-digit one raises OverflowError.
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(field, f"expected an integer, got {_type_name(value)}")
    if value < 1:
        raise BadRequest(field, f"{value} is out of range [1, {cap}]")
    if value > cap:
        shown = value if value < 10**12 else "the value"
        raise BadRequest(field, f"{shown} is above this endpoint's cap of {cap} tokens")
    return value


def parse_score(body: object, *, max_new_tokens_cap: int) -> ScoreRequest:
    """Check a ``/score`` body and return what to generate.

    Args:
        body: The decoded JSON body.
        max_new_tokens_cap: The endpoint's cap on ``max_new_tokens``.

    Returns:
        The parsed request.

    Raises:
        BadRequest: Naming the first offending field.
    """
    top = _object(body, "body")
    if "input_data" not in top:
        raise BadRequest(
            "input_data", 'is required: {"input_data": {"input_string": [[{"role": ..., "content": ...}]]}}'
        )
    for key in top:
        if key not in ("input_data", "params"):
            raise BadRequest(key, "is not part of the scoring contract; valid fields: input_data, params")
    data = _object(top["input_data"], "input_data")
    for key in data:
        if key not in ("input_string", "parameters"):
            raise BadRequest(
                f"input_data.{key}", "is not part of the scoring contract; valid fields: input_string, parameters"
            )
    if "params" in top:
        for key in _object(top["params"], "params"):
            raise BadRequest(f"params.{key}", "is not supported; generation parameters go in input_data.parameters")
    if "input_string" not in data:
        raise BadRequest("input_data.input_string", "is required (a list of conversations)")
    items = data["input_string"]
    field = "input_data.input_string"
    if not isinstance(items, list):
        raise BadRequest(field, f"expected a list of conversations, got {_type_name(items)}")
    if not items:
        raise BadRequest(field, "is empty; send at least one conversation")
    if all(isinstance(item, dict) for item in items):
        conversations: tuple[Conversation, ...] = (_conversation(items, field),)
        single = True
        fields: tuple[str, ...] = (field,)
    elif all(isinstance(item, list) for item in items):
        if len(items) > MAX_CONVERSATIONS:
            raise BadRequest(field, f"{len(items)} conversations is more than the {MAX_CONVERSATIONS} allowed at once")
        fields = tuple(f"{field}[{i}]" for i in range(len(items)))
        conversations = tuple(_conversation(c, f) for c, f in zip(items, fields, strict=True))
        single = len(conversations) == 1
    else:
        odd = [i for i, item in enumerate(items) if not isinstance(item, list | dict)]
        raise BadRequest(
            f"{field}[{odd[0]}]" if odd else field,
            "expected a list of conversations (each a list of {role, content} messages) or one conversation",
        )
    params = _score_params(data.get("parameters", {}), max_new_tokens_cap)
    return ScoreRequest(conversations=conversations, params=params, single=single, fields=fields)


def _score_params(value: object, cap: int) -> GenParams:
    field = "input_data.parameters"
    p = _object(value, field)
    _check_fields(p, f"{field}.", tuple(SCORE_HONOURED), SCORE_DEFAULT_ONLY)
    max_new = DEFAULT_MAX_NEW_TOKENS
    # max_gen_len is Azure's deprecated spelling of max_new_tokens; max_new_tokens wins when both are given.
    for key in ("max_gen_len", "max_new_tokens"):
        if key in p:
            max_new = _max_tokens(p[key], f"{field}.{key}", cap)
    do_sample = _bool(p["do_sample"], f"{field}.do_sample") if "do_sample" in p else False
    temperature = _bounded(SCORE_HONOURED, p, "temperature", field) if "temperature" in p else 1.0
    top_p = _bounded(SCORE_HONOURED, p, "top_p", field) if "top_p" in p else 1.0
    stop = _stops(p["stop"], f"{field}.stop") if p.get("stop") is not None else ()
    seed = _seed(p["seed"], f"{field}.seed") if p.get("seed") is not None else None
    return GenParams(
        max_new_tokens=min(max_new, cap),
        do_sample=do_sample and temperature > 0,
        temperature=temperature,
        top_p=top_p,
        stop=stop,
        seed=seed,
    )


def parse_chat(body: object, *, max_new_tokens_cap: int) -> ChatRequest:
    """Check a ``/v1/chat/completions`` body (OpenAI's shape) and return what to generate.

    ``temperature`` 0 means greedy decoding (OpenAI's default temperature, 1, samples). A field this endpoint
    does not honour is rejected naming it (see :data:`CHAT_FIELDS`); fields with the wrong type are rejected too.

    Args:
        body: The decoded JSON body.
        max_new_tokens_cap: The endpoint's cap on ``max_tokens``.

    Returns:
        The parsed request.

    Raises:
        BadRequest: Naming the first offending field.
    """
    top = _object(body, "body")
    _check_fields(top, "", tuple(CHAT_HONOURED), CHAT_DEFAULT_ONLY)
    if "messages" not in top:
        raise BadRequest("messages", "is required (a list of {role, content} messages)")
    messages = _conversation(top["messages"], "messages")
    model = top.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("model", f"expected a string, got {_type_name(model)}")
    if top.get("n", 1) is not None and _number(top.get("n", 1), "n", low=1, high=1, integer=True) != 1:
        raise BadRequest("n", "only n=1 is supported")
    max_new = DEFAULT_MAX_NEW_TOKENS
    for key in ("max_tokens", "max_completion_tokens"):
        if top.get(key) is not None:
            max_new = _max_tokens(top[key], key, max_new_tokens_cap)
    temperature = 1.0
    if top.get("temperature") is not None:
        temperature = _bounded(CHAT_HONOURED, top, "temperature", "")
    top_p = 1.0
    if top.get("top_p") is not None:
        top_p = _bounded(CHAT_HONOURED, top, "top_p", "")
    stream = _bool(top["stream"], "stream") if top.get("stream") is not None else False
    include_usage = False
    if top.get("stream_options") is not None:
        opts = _object(top["stream_options"], "stream_options")
        _check_fields(opts, "stream_options.", tuple(CHAT_HONOURED["stream_options"].fields), {})
        if opts.get("include_usage") is not None:
            include_usage = _bool(opts["include_usage"], "stream_options.include_usage")
    if top.get("user") is not None and not isinstance(top["user"], str):
        raise BadRequest("user", f"expected a string, got {_type_name(top['user'])}")
    stop = _stops(top["stop"], "stop") if top.get("stop") is not None else ()
    seed = _seed(top["seed"], "seed") if top.get("seed") is not None else None
    return ChatRequest(
        messages=messages,
        params=GenParams(
            max_new_tokens=min(max_new, max_new_tokens_cap),
            do_sample=temperature > 0,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            seed=seed,
        ),
        model=model,
        stream=stream,
        include_usage=include_usage,
    )
