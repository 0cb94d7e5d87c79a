"""OpenAI's routes: ``POST /v1/chat/completions`` (``stream`` false or true: server-sent events) and the models.

``GET /v1/models`` and ``GET /v1/models/{id}`` list the deployments as OpenAI models. The body's contract is
:func:`ftkit.serve.contract.requests.parse_chat`; errors take OpenAI's shape.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..contract.requests import BadRequest, ChatRequest, parse_chat
from ..engines.base import Job
from .errors import HTTPError
from .jobs import decode_json, encode, read_body, submit, wait_all
from .openapi import route_doc
from .state import DEPLOYMENT_HEADER, Deployment, ServerState

__all__ = ["add_openai_routes", "parse_chat_body"]


def add_openai_routes(app: FastAPI, state: ServerState) -> None:
    """Add chat completions and the models routes to ``app``."""

    @app.post(
        "/v1/chat/completions",
        tags=["openai"],
        openapi_extra=route_doc("ChatCompletionRequest", "ChatCompletion", streams=True),
    )
    async def chat_completions(request: Request) -> Response:
        """OpenAI chat completions (``stream`` false or true)."""
        state.check_key(request.headers.get("authorization"))
        raw = await read_body(request, state.max_body_bytes)
        parsed = await state.off_loop(parse_chat_body, raw, state.max_new_tokens_cap)
        deployment = state.pick(request.headers.get(DEPLOYMENT_HEADER), parsed.model)
        (prompt,) = await state.off_loop(encode, deployment, [parsed.messages], ["messages"], parsed.params)
        (job,) = submit(deployment, [prompt], parsed.params, stream=parsed.stream)
        ident = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        headers = {DEPLOYMENT_HEADER: deployment.name}
        if parsed.stream:
            events = _stream(deployment, job, ident, created, len(prompt), include_usage=parsed.include_usage)
            return StreamingResponse(
                events, media_type="text/event-stream", headers={**headers, "Cache-Control": "no-cache"}
            )
        (reason,) = await wait_all(deployment, [job])
        return JSONResponse(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": deployment.name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": job.text.text},
                        "finish_reason": "stop" if reason == "stop" else "length",
                    }
                ],
                "usage": _usage(len(prompt), len(job.tokens)),
            },
            headers=headers,
        )

    @app.get(
        "/v1/models",
        tags=["openai"],
        openapi_extra={"security": [{"bearerAuth": []}]},
        responses={401: {"description": "No or wrong key."}},
    )
    async def models(request: Request) -> dict[str, Any]:
        """The deployments, as OpenAI models."""
        state.check_key(request.headers.get("authorization"))
        return {"object": "list", "data": [_model(state.deployments[n]) for n in sorted(state.deployments)]}

    @app.get(
        "/v1/models/{model_id}",
        tags=["openai"],
        openapi_extra={"security": [{"bearerAuth": []}]},
        responses={401: {"description": "No or wrong key."}, 404: {"description": "No such deployment."}},
    )
    async def model(model_id: str, request: Request) -> dict[str, Any]:
        """One deployment, as an OpenAI model."""
        state.check_key(request.headers.get("authorization"))
        deployment = state.deployments.get(model_id)
        if deployment is None:
            listed = ", ".join(sorted(state.deployments)) or "none"
            raise HTTPError(404, f"model {model_id[:64]!r} does not exist; models: {listed}", param="model")
        return _model(deployment)


def parse_chat_body(raw: bytes, cap: int) -> ChatRequest:
    """Off the loop: decode and check a chat completion body."""
    try:
        return parse_chat(decode_json(raw), max_new_tokens_cap=cap)
    except BadRequest as exc:
        raise HTTPError(400, str(exc), param=exc.field) from None


def _model(deployment: Deployment) -> dict[str, Any]:
    return {"id": deployment.name, "object": "model", "created": deployment.created, "owned_by": "ftkit"}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _sse(payload: Mapping[str, Any]) -> bytes:
    """Strictly private: one server-sent event carrying ``payload`` as JSON."""
    return f"data: {json.dumps(payload)}\n\n".encode()


async def _stream(
    deployment: Deployment, job: Job, ident: str, created: int, prompt_tokens: int, *, include_usage: bool
) -> AsyncIterator[bytes]:
    """Strictly private: the server-sent events of a streamed chat completion."""

    def chunk(delta: Mapping[str, str], finish: str | None) -> bytes:
        payload = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": deployment.name,
            "choices": [{"index": 0, "delta": dict(delta), "finish_reason": finish}],
        }
        return _sse(payload)

    # A content chunk is this prefix, the JSON string of the delta, this suffix: one json.dumps per piece.
    head, _, tail = chunk({"content": "\x00"}, None).decode().partition(json.dumps("\x00"))
    # One timer for the whole answer, which posts its own event: a timeout scope around every wait would
    # schedule and cancel a timer per token, on the event loop that every stream shares.
    # The deadline is the job's own (from its arrival), not this generator's start: an answer that was already
    # generated when the response began streaming is still late if it ended past it.
    late = max(0.0, job.deadline - time.monotonic())
    timer = asyncio.get_running_loop().call_later(late, job.events.put_nowait, ("timeout", None))
    try:
        yield chunk({"role": "assistant", "content": ""}, None)
        while True:
            kind, value = await job.events.get()
            # Text that queued up while this handler waited for the event loop goes out as one chunk: when the
            # server is busy, it spends less per piece (and so do its clients) instead of falling further behind.
            # Each piece is already safe to send: the worker held back partial characters and stop-string
            # beginnings.
            pieces: list[str] = []
            while kind == "text":
                pieces.append(str(value))
                if job.events.empty():
                    break
                kind, value = job.events.get_nowait()
            if pieces:
                yield f"{head}{json.dumps(''.join(pieces))}{tail}".encode()
            if kind == "text":
                continue
            if kind not in ("timeout", "error") and time.monotonic() >= job.deadline:
                kind = "timeout"  # finished, but past the deadline (its timer had not run yet): late all the same
            if kind == "timeout":
                message = "the request took longer than the deployment's request_timeout_ms"
                yield _sse({"error": {"message": message, "type": "timeout_error", "code": 408}})
                break
            if kind == "error":
                yield _sse({"error": {"message": str(value), "type": "server_error", "code": 503}})
                break
            yield chunk({}, "stop" if value == "stop" else "length")
            if include_usage:
                usage = {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": deployment.name,
                    "choices": [],
                    "usage": _usage(prompt_tokens, len(job.tokens)),
                }
                yield _sse(usage)
            break
        yield b"data: [DONE]\n\n"
    finally:
        timer.cancel()
        job.cancelled = True
