"""``POST /score``: Azure ML's chat-completion scoring contract, one output per conversation, key auth.

The body's contract is :func:`ftkit.serve.contract.requests.parse_score`; errors take Azure's shape.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ..contract.requests import BadRequest, ScoreRequest, parse_score
from .errors import HTTPError
from .jobs import decode_json, encode, read_body, submit, wait_all
from .openapi import route_doc
from .state import DEPLOYMENT_HEADER, Deployment, ServerState

__all__ = ["add_score_routes", "prepare_score"]


def add_score_routes(app: FastAPI, state: ServerState) -> None:
    """Add ``POST /score`` to ``app``."""

    @app.post(
        "/score",
        tags=["scoring"],
        openapi_extra=route_doc("ScoreRequest", "ScoreResponse", error_schema="AzureError"),
    )
    async def score(request: Request) -> Response:
        """Azure ML chat-completion scoring: one output per conversation."""
        state.check_key(request.headers.get("authorization"))
        raw = await read_body(request, state.max_body_bytes)
        deployment = state.pick(request.headers.get(DEPLOYMENT_HEADER))
        parsed, prompts = await state.off_loop(prepare_score, raw, deployment, state.max_new_tokens_cap)
        jobs = submit(deployment, prompts, parsed.params, stream=False)
        await wait_all(deployment, jobs)
        texts = [j.text.text for j in jobs]
        output: str | list[str] = texts[0] if parsed.single else texts
        return JSONResponse({"output": output}, headers={DEPLOYMENT_HEADER: deployment.name})


def prepare_score(raw: bytes, deployment: Deployment, cap: int) -> tuple[ScoreRequest, list[list[int]]]:
    """Off the loop: decode, check and tokenize a ``/score`` body."""
    try:
        parsed = parse_score(decode_json(raw), max_new_tokens_cap=cap)
    except BadRequest as exc:
        raise HTTPError(400, str(exc), param=exc.field) from None
    return parsed, encode(deployment, parsed.conversations, parsed.fields, parsed.params)
