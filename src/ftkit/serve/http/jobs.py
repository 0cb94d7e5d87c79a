"""From a request's bytes to its jobs' ends: what the scoring and chat routes share.

The event loop only moves bytes: JSON decoding, body checks, chat templating and tokenization run in the
request-preparation threads (:meth:`.state.ServerState.off_loop`), decoding in the deployment's engine.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

from fastapi import Request

from ..contract.prompts import check_fits
from ..contract.requests import BadRequest, GenParams
from ..contract.stops import RowText
from ..engines.base import Job, QueueFull, Unsupported
from .errors import HTTPError
from .state import Deployment

__all__ = ["RETRY_AFTER_S", "decode_json", "encode", "finish", "read_body", "submit", "wait_all"]

RETRY_AFTER_S = 1


async def read_body(request: Request, limit: int) -> bytes:
    """Read the body, refusing it past ``limit`` bytes (declared or streamed); decoding is :func:`decode_json`."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise HTTPError(413, f"body: {length} bytes is over the limit of {limit} bytes", param="body")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"body: over the limit of {limit} bytes", param="body")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_json(raw: bytes) -> object:
    """Decode a JSON body (400 naming ``body`` when it is empty or not JSON)."""
    if not raw.strip():
        raise HTTPError(400, "body: is empty; send a JSON object", param="body")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise HTTPError(400, f"body: not valid JSON: {str(exc)[:200]}", param="body") from None


def encode(
    deployment: Deployment, conversations: Sequence[Any], fields: Sequence[str], params: GenParams
) -> list[list[int]]:
    """Off the loop: tokenize conversations, refusing any too long before tokenizing one."""
    model = deployment.model
    try:
        for c, f in zip(conversations, fields, strict=True):
            check_fits(
                c,
                f,
                max_new_tokens=params.max_new_tokens,
                context=model.max_length,
                max_token_chars=model.max_token_chars,
            )
        return [model.encode(c, f, params.max_new_tokens) for c, f in zip(conversations, fields, strict=True)]
    except BadRequest as exc:
        raise HTTPError(400, str(exc), param=exc.field) from None


def submit(deployment: Deployment, prompts: Sequence[Sequence[int]], params: GenParams, *, stream: bool) -> list[Job]:
    """Queue one job per prompt on the deployment's engine (400 for what it cannot do, 503 when it is full)."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + deployment.timeout_s
    jobs = [
        Job(
            prompt=p,
            params=params,
            loop=loop,
            events=asyncio.Queue(),
            deadline=deadline,
            text=RowText(deployment.model.decode, params.stop, streaming=stream),
            stream=stream,
        )
        for p in prompts
    ]
    try:
        deployment.engine.submit(jobs)
    except Unsupported as exc:
        raise HTTPError(400, str(exc), param=exc.param) from None
    except QueueFull:
        raise HTTPError(
            503,
            f"deployment {deployment.name!r} is at capacity ({deployment.engine.max_queue} requests queued); "
            "retry later",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ) from None
    return jobs


async def finish(job: Job) -> str:
    """Wait for a job's end; return its finish reason."""
    while True:
        kind, value = await job.events.get()
        if kind == "done":
            return str(value)
        if kind == "error":
            raise HTTPError(
                503, f"the deployment could not answer: {value}", headers={"Retry-After": str(RETRY_AFTER_S)}
            )


async def wait_all(deployment: Deployment, jobs: Sequence[Job]) -> list[str]:
    """Wait for every job's end (408 past the deployment's timeout); return their finish reasons."""
    try:
        return await asyncio.wait_for(asyncio.gather(*(finish(j) for j in jobs)), timeout=deployment.timeout_s)
    except TimeoutError:
        raise HTTPError(
            408,
            "the request took longer than the deployment's request_timeout_ms "
            f"({deployment.record.settings.request_timeout_ms})",
        ) from None
    finally:
        for job in jobs:
            job.cancelled = True
