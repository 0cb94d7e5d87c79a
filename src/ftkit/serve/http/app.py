"""The endpoint server's FastAPI application.

Routes (all JSON):

* ``POST /score`` — Azure ML's chat-completion scoring contract (see :mod:`.requests`), key auth;
* ``POST /v1/chat/completions`` — OpenAI's chat completions, ``stream`` false or true (server-sent events);
* ``GET /v1/models``, ``GET /v1/models/{id}`` — the deployments, as OpenAI models;
* ``GET /health/live``, ``GET /health/ready`` — probes (no auth, like a container's);
* ``GET /openapi.json``, ``GET /docs`` — the OpenAPI document;
* ``POST /-/admin/reload`` — strictly private: load the deployments ``endpoint.json`` now lists (admin key).

Which deployment answers: the ``azureml-model-deployment`` header if present, else (chat completions) a
``model`` that names a deployment, else a weighted random pick by the endpoint's traffic. Keys and traffic are
re-read from the state files when they change, so regenerating a key or moving traffic needs no restart.
Statuses: 400 bad body (naming the field), 401 no or wrong key, 404 unknown deployment or no traffic,
408 past ``request_timeout_ms``, 413 body too large, 503 queue full (``Retry-After``) or deployment not ready.

Errors have one shape per route family, whatever raised them (a handler, the router's 404 and 405, a validation
422, an unexpected exception): under ``/score`` Azure's ``{"error": {"code", "message", "target"}}`` (what
azure-core parses into ``HttpResponseError.error``), everywhere else OpenAI's
``{"error": {"message", "type", "param", "code"}}``.

The event loop only moves bytes: JSON decoding, body checks, chat templating and tokenization run in a small
thread pool (:meth:`ServerState.off_loop`), decoding in the deployment's worker, so probes answer at once while
the server is busy or fed megabyte prompts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hmac
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...exceptions import ValidationError
from ..contract.prompts import check_fits
from ..contract.requests import (
    MAX_STOP_CHARS,
    MAX_STOPS,
    SEED_RANGE,
    BadRequest,
    ChatRequest,
    GenParams,
    ScoreRequest,
    parse_chat,
    parse_score,
)
from ..contract.stops import RowText
from ..engines.base import Engine, Job, QueueFull, Unsupported
from ..engines.generation import LoadedModel
from ..files import EndpointFiles, stat_key
from ..placement import Placement, load_deployment
from ..records import DeploymentRecord, read_server_settings

__all__ = ["DEPLOYMENT_HEADER", "ServerState", "create_app"]

log = logging.getLogger("ftkit.serve")

DEPLOYMENT_HEADER = "azureml-model-deployment"
RETRY_AFTER_S = 1
PREPARE_THREADS = 2  # few: each one competes with the event loop for the GIL

T = TypeVar("T")


class HTTPError(Exception):
    """Strictly private: an error answer (status, message, field)."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        self.status = status
        self.message = message
        self.param = param
        self.headers = dict(headers or {})
        super().__init__(message)


_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    431: "invalid_request_error",
    503: "overloaded_error",
}
_AZURE_CODES = {
    400: "BadRequest",
    401: "Unauthorized",
    404: "NotFound",
    405: "MethodNotAllowed",
    408: "RequestTimeout",
    413: "RequestEntityTooLarge",
    422: "UnprocessableEntity",
    431: "RequestHeaderFieldsTooLarge",
    503: "ServiceUnavailable",
}


def is_azure_route(path: str) -> bool:
    """Whether errors on ``path`` take Azure's shape (the scoring route) rather than OpenAI's."""
    return path == "/score" or path.startswith("/score/")


def error_body(path: str, status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """The error object of ``path``'s route family (Azure's under ``/score``, else OpenAI's)."""
    if is_azure_route(path):
        error: dict[str, Any] = {"code": _AZURE_CODES.get(status, "InternalServerError"), "message": message}
        if param is not None:
            error["target"] = param
        return {"error": error}
    return {
        "error": {"message": message, "type": _OPENAI_TYPES.get(status, "server_error"), "param": param, "code": status}
    }


def _error(
    path: str, status: int, message: str, *, param: str | None = None, headers: Mapping[str, str] | None = None
) -> Response:
    return JSONResponse(error_body(path, status, message, param), status_code=status, headers=dict(headers or {}))


class Deployment:
    """Strictly private: a loaded deployment (its record from ``endpoint.json``, model and batcher)."""

    def __init__(
        self,
        name: str,
        record: DeploymentRecord,
        model: LoadedModel,
        batcher: Engine,
        placement: Placement,
    ) -> None:
        self.name = name
        self.record = record
        self.model = model
        self.batcher = batcher
        self.placement = placement
        self.created = int(time.time())

    @property
    def timeout_s(self) -> float:
        """The per-request timeout."""
        return self.record.timeout_s


class ServerState:
    """What the server knows: settings, keys, traffic and loaded deployments.

    Args:
        files: The endpoint's files.
    """

    def __init__(self, files: EndpointFiles) -> None:
        self.files = files
        settings = read_server_settings(files.read_config())
        self.settings = settings
        self.max_batch_size = settings.max_batch_size
        self.window_s = settings.batch_window_ms / 1000.0
        self.max_body_bytes = settings.max_body_bytes
        self.max_new_tokens_cap = settings.max_new_tokens_cap
        self.deployments: dict[str, Deployment] = {}
        self.failed: dict[str, str] = {}
        self.traffic: dict[str, int] = {}
        self.wanted: dict[str, DeploymentRecord] = {}
        self.unreadable: dict[str, str] = {}
        self._keys: tuple[bytes, ...] = ()
        self._admin: bytes = b""
        self._config_stat: tuple[int, int, int] | None = None
        self._keys_stat: tuple[int, int, int] | None = None
        self._reload_lock = asyncio.Lock()
        # Per-request CPU work (JSON, checks, templating, tokenization) runs here, never on the event loop.
        self._pool = concurrent.futures.ThreadPoolExecutor(PREPARE_THREADS, thread_name_prefix="ftkit-prepare")
        self.refresh()

    def __repr__(self) -> str:
        return f"ServerState({self.files.name!r}, deployments={sorted(self.deployments)})"

    def refresh(self) -> None:
        """Re-read traffic and keys if their files changed (two ``stat`` calls otherwise)."""
        cstat = stat_key(self.files.config_path)
        if cstat != self._config_stat:
            config = self.files.read_config()
            traffic = config.get("traffic", {})
            self.traffic = {k: int(v) for k, v in traffic.items() if isinstance(v, int)}
            self.wanted, self.unreadable = {}, {}
            for name, raw in (config.get("deployments") or {}).items():
                try:
                    self.wanted[name] = DeploymentRecord.from_dict(raw if isinstance(raw, dict) else {})
                except ValidationError as exc:
                    self.unreadable[name] = exc.render()
            self._config_stat = cstat
        kstat = stat_key(self.files.keys_path)
        if kstat != self._keys_stat:
            keys = self.files.read_keys()
            self._keys = tuple(keys[k].encode() for k in ("primary", "secondary") if keys.get(k))
            self._admin = keys.get("admin", "").encode()
            self._keys_stat = kstat

    def check_key(self, authorization: str | None, *, admin: bool = False) -> None:
        """Accept ``Authorization: Bearer <key>`` with the primary or secondary (or admin) key.

        Raises:
            HTTPError: 401, without ever echoing what was sent.
        """
        self.refresh()
        scheme, _, token = (authorization or "").partition(" ")
        given = token.strip().encode()
        expected = (self._admin,) if admin else self._keys
        # Compare against every key, always, in constant time: no early exit that tells which one was close.
        ok = False
        for key in expected:
            ok |= bool(key) and hmac.compare_digest(given, key)
        if scheme.lower() != "bearer" or not ok:
            raise HTTPError(
                401,
                "missing or invalid key: send 'Authorization: Bearer <key>' with the endpoint's primary or "
                "secondary key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def pick(self, header: str | None, model: str | None = None) -> Deployment:
        """Choose the deployment that answers (header, else a ``model`` naming one, else traffic).

        Raises:
            HTTPError: 404 for an unknown deployment or no traffic; 503 for one that is not ready.
        """
        self.refresh()
        names = sorted(self.wanted)
        name = header.strip() if header and header.strip() else None
        if name is None and model in self.wanted:
            name = model
        if name is not None:
            if name not in self.wanted:
                listed = ", ".join(names) or "none"
                raise HTTPError(
                    404, f"deployment {name[:64]!r} not found; deployments: {listed}", param=DEPLOYMENT_HEADER
                )
            if name not in self.deployments:
                state = "failed to load" if name in self.failed else "is not ready yet"
                raise HTTPError(503, f"deployment {name!r} {state}", headers={"Retry-After": "5"})
            return self.deployments[name]
        live = [(n, w) for n, w in sorted(self.traffic.items()) if w > 0 and n in self.deployments]
        if not live:
            raise HTTPError(
                404,
                "No valid deployments to route to. Please check that the endpoint has at least one deployment with "
                f"positive weight values or use a deployment specific header ({DEPLOYMENT_HEADER}) to route.",
            )
        chosen = random.choices([n for n, _ in live], weights=[w for _, w in live])[0]
        return self.deployments[chosen]

    async def reload(self) -> dict[str, str]:
        """Load the deployments ``endpoint.json`` lists, reload changed ones, unload removed ones.

        Returns:
            Each wanted deployment's state: ``Succeeded`` or ``Failed: <why>``.
        """
        async with self._reload_lock:
            self._config_stat = None
            self.refresh()
            for name in list(self.deployments):
                if name not in self.wanted:
                    self.deployments.pop(name).batcher.close()
                    log.info("deployment %s removed", name)
            for name in list(self.failed):
                if name not in self.wanted:
                    del self.failed[name]
            results: dict[str, str] = {name: f"Failed: {why}" for name, why in self.unreadable.items()}
            for name, record in sorted(self.wanted.items()):
                current = self.deployments.get(name)
                if current is not None and current.record.reload_key() == record.reload_key():
                    current.record = record  # timeouts apply at once
                    results[name] = "Succeeded"
                    continue
                try:
                    deployment = await run_in_threadpool(self._load, name, record)
                except Exception as exc:
                    message = f"{type(exc).__name__}: {exc}"
                    log.exception("deployment %s failed to load", name)
                    self.failed[name] = message
                    results[name] = f"Failed: {message}"
                    continue
                self.failed.pop(name, None)
                self.deployments[name] = deployment
                if current is not None:
                    current.batcher.close()
                results[name] = "Succeeded"
            return results

    def _load(self, name: str, record: DeploymentRecord) -> Deployment:
        started = time.monotonic()
        log.info("deployment %s: loading model %s from %s", name, record.model_id, record.model_path)
        model, batcher, placement = load_deployment(
            name, record, max_batch_size=self.max_batch_size, window_s=self.window_s, settings=self.settings
        )
        log.info("deployment %s: ready in %.1fs on %s", name, time.monotonic() - started, placement.as_dict())
        return Deployment(name, record, model, batcher, placement)

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the request-preparation threads and return its result (or raise its error)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))

    def close(self) -> None:
        """Stop every deployment's worker and the preparation threads."""
        for deployment in self.deployments.values():
            deployment.batcher.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


async def _read_body(request: Request, limit: int) -> bytes:
    """Read the body, refusing it past ``limit`` bytes (declared or streamed); decoding is :func:`_decode_json`."""
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


def _decode_json(raw: bytes) -> object:
    if not raw.strip():
        raise HTTPError(400, "body: is empty; send a JSON object", param="body")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise HTTPError(400, f"body: not valid JSON: {str(exc)[:200]}", param="body") from None


def _encode(
    deployment: Deployment, conversations: Sequence[Any], fields: Sequence[str], params: GenParams
) -> list[list[int]]:
    """Strictly private, off the loop: tokenize conversations, refusing any too long before tokenizing one."""
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


def _prepare_score(raw: bytes, deployment: Deployment, cap: int) -> tuple[ScoreRequest, list[list[int]]]:
    """Strictly private, off the loop: decode, check and tokenize a ``/score`` body."""
    try:
        parsed = parse_score(_decode_json(raw), max_new_tokens_cap=cap)
    except BadRequest as exc:
        raise HTTPError(400, str(exc), param=exc.field) from None
    return parsed, _encode(deployment, parsed.conversations, parsed.fields, parsed.params)


def _parse_chat(raw: bytes, cap: int) -> ChatRequest:
    """Strictly private, off the loop: decode and check a chat completion body."""
    try:
        return parse_chat(_decode_json(raw), max_new_tokens_cap=cap)
    except BadRequest as exc:
        raise HTTPError(400, str(exc), param=exc.field) from None


def _submit(deployment: Deployment, prompts: Sequence[Sequence[int]], params: GenParams, *, stream: bool) -> list[Job]:
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
        deployment.batcher.submit(jobs)
    except Unsupported as exc:
        raise HTTPError(400, str(exc), param=exc.param) from None
    except QueueFull:
        raise HTTPError(
            503,
            f"deployment {deployment.name!r} is at capacity ({deployment.batcher.max_queue} requests queued); "
            "retry later",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ) from None
    return jobs


async def _finish(job: Job) -> str:
    """Wait for a job's end; return its finish reason."""
    while True:
        kind, value = await job.events.get()
        if kind == "done":
            return str(value)
        if kind == "error":
            raise HTTPError(
                503, f"the deployment could not answer: {value}", headers={"Retry-After": str(RETRY_AFTER_S)}
            )


async def _wait_all(deployment: Deployment, jobs: Sequence[Job]) -> list[str]:
    try:
        return await asyncio.wait_for(asyncio.gather(*(_finish(j) for j in jobs)), timeout=deployment.timeout_s)
    except TimeoutError:
        raise HTTPError(
            408,
            "the request took longer than the deployment's request_timeout_ms "
            f"({deployment.record.settings.request_timeout_ms})",
        ) from None
    finally:
        for job in jobs:
            job.cancelled = True


def _openapi_schemas(cap: int) -> dict[str, Any]:
    message = {
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "role": {"type": "string", "enum": ["system", "user", "assistant"]},
            "content": {"type": "string"},
        },
    }
    conversation = {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Message"}}
    stop_string = {"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS}
    stop = {
        "description": f"A string or up to {MAX_STOPS} strings; the answer is cut before the first one generated.",
        "anyOf": [{"type": "null"}, stop_string, {"type": "array", "maxItems": MAX_STOPS, "items": stop_string}],
    }
    seed = {"type": ["integer", "null"], "minimum": SEED_RANGE[0], "maximum": SEED_RANGE[1]}
    # Accepted only with their default value (what this endpoint does); any other value is a 400 naming them.
    default_only = {
        "presence_penalty": {"enum": [0, None]},
        "frequency_penalty": {"enum": [0, None]},
        "logprobs": {"enum": [False, None]},
        "logit_bias": {"type": ["object", "null"], "maxProperties": 0},
        "tools": {"type": ["array", "null"], "maxItems": 0},
        "tool_choice": {"enum": ["none", None]},
        "response_format": {"enum": [{"type": "text"}, None]},
        "modalities": {"enum": [["text"], None]},
        "store": {"enum": [False, None]},
    }
    return {
        "Message": message,
        "Conversation": conversation,
        "ScoreRequest": {
            "type": "object",
            "required": ["input_data"],
            "properties": {
                "input_data": {
                    "type": "object",
                    "required": ["input_string"],
                    "properties": {
                        "input_string": {
                            "description": "A list of conversations (or one flat conversation).",
                            "oneOf": [
                                {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {"$ref": "#/components/schemas/Conversation"},
                                },
                                {"$ref": "#/components/schemas/Conversation"},
                            ],
                        },
                        "parameters": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "temperature": {"type": "number", "minimum": 0, "maximum": 100},
                                "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                                "do_sample": {"type": "boolean"},
                                "max_new_tokens": {"type": "integer", "minimum": 1, "maximum": cap},
                                "max_gen_len": {"type": "integer", "minimum": 1, "maximum": cap},
                                "stop": stop,
                                "seed": seed,
                                "return_full_text": {"enum": [False, None]},
                                "num_return_sequences": {"enum": [1, None]},
                            },
                        },
                    },
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
            "properties": {
                "model": {"type": ["string", "null"]},
                "messages": {"$ref": "#/components/schemas/Conversation"},
                "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
                "top_p": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1},
                "max_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": cap},
                "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": cap},
                "n": {"type": ["integer", "null"], "enum": [1, None]},
                "stream": {"type": ["boolean", "null"]},
                "stream_options": {
                    "type": ["object", "null"],
                    "properties": {"include_usage": {"type": ["boolean", "null"]}},
                    "additionalProperties": False,
                },
                "stop": stop,
                "seed": seed,
                "user": {"type": ["string", "null"]},
                **default_only,
            },
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


def _route_doc(
    request_schema: str, response_schema: str, *, streams: bool = False, error_schema: str = "Error"
) -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{error_schema}"}}}}
    ok: dict[str, Any] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{response_schema}"}}}
    if streams:
        # Server-sent events: chat.completion.chunk objects, then the literal [DONE] (no one schema fits both).
        ok["text/event-stream"] = {}
    return {
        "security": [{"bearerAuth": []}],
        "parameters": [{"name": DEPLOYMENT_HEADER, "in": "header", "required": False, "schema": {"type": "string"}}],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{request_schema}"}}},
        },
        "responses": {
            "200": {"description": "The answer.", "content": ok},
            **{
                str(code): {"description": text, **error}
                for code, text in (
                    (400, "Malformed body; the message names the field."),
                    (401, "No or wrong key."),
                    (404, "Unknown deployment, or no deployment has traffic."),
                    (408, "Past the deployment's request_timeout_ms."),
                    (413, "Body too large."),
                    (503, "Queue full (Retry-After) or deployment not ready."),
                )
            },
        },
    }


MAX_HEADER_BYTES = 65_536
"""The most bytes of request headers (names and values) the server accepts; 431 beyond (the HTTP parser sets none)."""


class _HeaderLimit:
    """Strictly private: answer 431 to a request whose headers exceed :data:`MAX_HEADER_BYTES` (pure ASGI)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            size = sum(len(name) + len(value) for name, value in scope.get("headers", ()))
            if size > MAX_HEADER_BYTES:
                message = f"request headers: {size} bytes is over the limit of {MAX_HEADER_BYTES} bytes"
                await _error(scope.get("path", "/"), 431, message, param="headers")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(state: ServerState, *, on_ready: Any = None) -> FastAPI:
    """Build the application over a server state.

    Args:
        state: The endpoint's state (deployments are loaded at startup).
        on_ready: Called with no arguments once startup is complete (the server writes ``server.json`` then).

    Returns:
        The FastAPI application.
    """

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        results = await state.reload()
        for name, result in results.items():
            log.info("deployment %s: %s", name, result)
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            state.close()

    app = FastAPI(
        title=f"ftkit local endpoint {state.files.name}",
        version="1",
        description="Azure ML chat-completion scoring (/score) and OpenAI chat completions, behind key auth.",
        lifespan=lifespan,
    )
    app.add_middleware(_HeaderLimit)

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError) -> Response:
        return _error(request.url.path, exc.status, exc.message, param=exc.param, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _routing_error(request: Request, exc: StarletteHTTPException) -> Response:
        # The router's own answers (404 no such route, 405 wrong method), in the route family's shape.
        path = request.url.path
        shown = path if len(path) <= 100 else path[:100] + "..."
        if exc.status_code == 404:
            message = f"no route {request.method} {shown}; see /openapi.json for the routes"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("allow", (exc.headers or {}).get("Allow", ""))
            message = f"method {request.method} is not allowed on {shown}; allowed: {allowed}"
        else:
            message = str(exc.detail)
        return _error(path, exc.status_code, message, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "path", "query", "header"))
        message = f"{where or 'request'}: {first.get('msg', 'invalid request')}"
        return _error(request.url.path, 422, message, param=where or None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:  # pragma: no cover - a bug if reached
        log.exception("unexpected error on %s", request.url.path)
        return _error(request.url.path, 500, f"internal error: {type(exc).__name__}")

    @app.get("/health/live", tags=["probes"])
    async def live() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "alive"}

    @app.get("/health/ready", tags=["probes"], responses={503: {"description": "Some deployment is not loaded."}})
    async def ready() -> Response:
        """Readiness: every deployment the endpoint lists is loaded."""
        state.refresh()
        pending = sorted(n for n in state.wanted if n not in state.deployments)
        body = {
            "status": "ready" if not pending else "not ready",
            "deployments": sorted(state.deployments),
            "pending": pending,
        }
        return JSONResponse(body, status_code=200 if not pending else 503)

    @app.post(
        "/score",
        tags=["scoring"],
        openapi_extra=_route_doc("ScoreRequest", "ScoreResponse", error_schema="AzureError"),
    )
    async def score(request: Request) -> Response:
        """Azure ML chat-completion scoring: one output per conversation."""
        state.check_key(request.headers.get("authorization"))
        raw = await _read_body(request, state.max_body_bytes)
        deployment = state.pick(request.headers.get(DEPLOYMENT_HEADER))
        parsed, prompts = await state.off_loop(_prepare_score, raw, deployment, state.max_new_tokens_cap)
        jobs = _submit(deployment, prompts, parsed.params, stream=False)
        await _wait_all(deployment, jobs)
        texts = [j.text.text for j in jobs]
        output: str | list[str] = texts[0] if parsed.single else texts
        return JSONResponse({"output": output}, headers={DEPLOYMENT_HEADER: deployment.name})

    @app.post(
        "/v1/chat/completions",
        tags=["openai"],
        openapi_extra=_route_doc("ChatCompletionRequest", "ChatCompletion", streams=True),
    )
    async def chat_completions(request: Request) -> Response:
        """OpenAI chat completions (``stream`` false or true)."""
        state.check_key(request.headers.get("authorization"))
        raw = await _read_body(request, state.max_body_bytes)
        parsed = await state.off_loop(_parse_chat, raw, state.max_new_tokens_cap)
        deployment = state.pick(request.headers.get(DEPLOYMENT_HEADER), parsed.model)
        (prompt,) = await state.off_loop(_encode, deployment, [parsed.messages], ["messages"], parsed.params)
        (job,) = _submit(deployment, [prompt], parsed.params, stream=parsed.stream)
        ident = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        headers = {DEPLOYMENT_HEADER: deployment.name}
        if parsed.stream:
            events = _stream(deployment, job, ident, created, len(prompt), include_usage=parsed.include_usage)
            return StreamingResponse(
                events, media_type="text/event-stream", headers={**headers, "Cache-Control": "no-cache"}
            )
        (reason,) = await _wait_all(deployment, [job])
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

    @app.post("/-/admin/reload", include_in_schema=False)
    async def admin_reload(request: Request) -> dict[str, Any]:
        state.check_key(request.headers.get("authorization"), admin=True)
        results = await state.reload()
        placement = {n: d.placement.as_dict() for n, d in state.deployments.items()}
        return {"deployments": results, "placement": placement}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {}).update(_openapi_schemas(state.max_new_tokens_cap))
            components["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


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
