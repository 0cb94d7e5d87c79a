"""The OpenAPI schemas of the request and response bodies, generated from the parser's own definitions.

Every honoured field's schema comes from its :class:`~.requests.Field` (kind and bounds), every default-only
field's from its default value, and the field lists are the parser's (:data:`~.requests.CHAT_HONOURED`,
:data:`~.requests.SCORE_HONOURED`...): a field the parser learns, or a bound it changes, changes the document
with it. The document is what schemathesis fuzzes the server against (``tests/serve/test_fuzz.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .requests import (
    CHAT_DEFAULT_ONLY,
    CHAT_HONOURED,
    MAX_STOP_CHARS,
    MAX_STOPS,
    ROLES,
    SCORE_DEFAULT_ONLY,
    SCORE_HONOURED,
    SCORE_NULLABLE,
    SEED_RANGE,
    Field,
)

__all__ = ["body_schemas", "default_only_schema", "field_schema"]

_CONVERSATION = {"$ref": "#/components/schemas/Conversation"}


def field_schema(field: Field, cap: int, *, nullable: bool) -> dict[str, Any]:
    """The JSON schema of one honoured field (``cap``: the endpoint's token cap; ``nullable``: ``null`` allowed)."""
    if field.kind == "messages":
        return dict(_CONVERSATION)
    if field.kind == "stop":
        stop_string = {"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS}
        return {
            "description": f"A string or up to {MAX_STOPS} strings; the answer is cut before the first one generated.",
            "anyOf": [{"type": "null"}, stop_string, {"type": "array", "maxItems": MAX_STOPS, "items": stop_string}],
        }
    if field.kind == "seed":  # null is no seed, in both contracts
        return {"type": ["integer", "null"], "minimum": SEED_RANGE[0], "maximum": SEED_RANGE[1]}
    json_type = {"number": "number", "tokens": "integer", "one": "integer", "boolean": "boolean"}.get(
        field.kind, field.kind
    )
    schema: dict[str, Any] = {"type": [json_type, "null"] if nullable else json_type}
    if field.kind == "number":
        schema["exclusiveMinimum" if field.low_open else "minimum"] = _plain(field.low)
        schema["maximum"] = _plain(field.high)
    elif field.kind == "tokens":
        schema.update(minimum=1, maximum=cap)
    elif field.kind == "one":
        schema["enum"] = [1, None] if nullable else [1]
    elif field.kind == "object":
        schema["properties"] = {k: field_schema(f, cap, nullable=nullable) for k, f in field.fields.items()}
        schema["additionalProperties"] = False
    return schema


def default_only_schema(default: object) -> dict[str, Any]:
    """The schema of a field accepted only with its default value (or ``null``)."""
    if default == {}:
        return {"type": ["object", "null"], "maxProperties": 0}
    if default == []:
        return {"type": ["array", "null"], "maxItems": 0}
    return {"enum": [default, None]}


def _plain(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def _fields(
    honoured: Mapping[str, Field], default_only: Mapping[str, object], cap: int, *, nullable: tuple[str, ...] | None
) -> dict[str, Any]:
    """Properties of an object whose fields the parser lists (``nullable`` None: every one may be null)."""
    props = {
        name: field_schema(field, cap, nullable=nullable is None or name in nullable)
        for name, field in honoured.items()
    }
    props.update({name: default_only_schema(default) for name, default in default_only.items()})
    return props


def body_schemas(cap: int) -> dict[str, Any]:
    """The ``components.schemas`` of the OpenAPI document (``cap``: the endpoint's ``max_new_tokens_cap``)."""
    message = {
        "type": "object",
        "required": ["role", "content"],
        "properties": {"role": {"type": "string", "enum": list(ROLES)}, "content": {"type": "string"}},
    }
    score_parameters = {
        "type": "object",
        "additionalProperties": False,
        "properties": _fields(SCORE_HONOURED, SCORE_DEFAULT_ONLY, cap, nullable=SCORE_NULLABLE),
    }
    input_string = {
        "description": "A list of conversations (or one flat conversation).",
        "oneOf": [{"type": "array", "minItems": 1, "items": _CONVERSATION}, _CONVERSATION],
    }
    return {
        "Message": message,
        "Conversation": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Message"}},
        "ScoreRequest": {
            "type": "object",
            "required": ["input_data"],
            "properties": {
                "input_data": {
                    "type": "object",
                    "required": ["input_string"],
                    "properties": {"input_string": input_string, "parameters": score_parameters},
                    "additionalProperties": False,
                },
                "params": {"type": "object", "maxProperties": 0},
            },
            "additionalProperties": False,
        },
        "ScoreResponse": {
            "type": "object",
            "required": ["output"],
            "properties": {"output": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}},
        },
        "ChatCompletionRequest": {
            "type": "object",
            "required": ["messages"],
            # OpenAI clients send null for options they leave unset; null means "the default".
            "properties": _fields(CHAT_HONOURED, CHAT_DEFAULT_ONLY, cap, nullable=None),
            "additionalProperties": False,
        },
        "ChatCompletion": {
            "type": "object",
            "required": ["id", "object", "created", "model", "choices", "usage"],
            "properties": {
                "id": {"type": "string"},
                "object": {"type": "string"},
                "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {"type": "array"},
                "usage": {"type": "object"},
            },
        },
        **_error_schemas(),
    }


def _error_schemas() -> dict[str, Any]:
    """The two error shapes (see :mod:`ftkit.serve.http.errors`)."""
    return {
        "Error": {
            "description": "OpenAI's error shape (every route but /score).",
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type", "param", "code"],
                    "properties": {
                        "message": {"type": "string"},
                        "type": {"type": "string"},
                        "param": {"type": ["string", "null"]},
                        "code": {"type": "integer"},
                    },
                }
            },
        },
        "AzureError": {
            "description": "Azure's error shape (/score): target names the offending field.",
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "target": {"type": "string"},
                    },
                }
            },
        },
    }
