"""The endpoint server's FastAPI application.

Routes (all JSON):

* ``POST /score`` — Azure ML's chat-completion scoring contract, key auth (:mod:`.score`);
* ``POST /v1/chat/completions`` — OpenAI's chat completions, ``stream`` false or true (server-sent events), and
  ``GET /v1/models``, ``GET /v1/models/{id}`` — the deployments, as OpenAI models (:mod:`.chat`);
* ``GET /health/live``, ``GET /health/ready`` — probes (no auth, like a container's), and
  ``POST /-/admin/reload`` — strictly private: load the deployments ``endpoint.json`` now lists, admin key
  (:mod:`.probes`);
* ``GET /openapi.json``, ``GET /docs`` — the OpenAPI document, its bodies' schemas generated from the request
  parser's definitions (:mod:`.openapi`).

Which deployment answers, keys and traffic: :mod:`.state`. The work a request shares (body limits, tokenizing off
the event loop, queuing on the deployment's engine, waiting): :mod:`.jobs`.

Statuses: 400 bad body (naming the field), 401 no or wrong key, 404 unknown deployment or no traffic,
408 past ``request_timeout_ms``, 413 body too large, 503 queue full (``Retry-After``) or deployment not ready.

Errors have one shape per route family, whatever raised them (:mod:`.errors`): under ``/score`` Azure's, everywhere
else OpenAI's.

The event loop only moves bytes: JSON decoding, body checks, chat templating and tokenization run in a small
thread pool (:meth:`.state.ServerState.off_loop`), decoding in the deployment's engine, so probes answer at once while
the server is busy or fed megabyte prompts.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from .chat import add_openai_routes
from .errors import HeaderLimit, install_error_handlers
from .openapi import install_openapi
from .probes import add_probe_routes
from .score import add_score_routes
from .state import DEPLOYMENT_HEADER, ServerState

__all__ = ["DEPLOYMENT_HEADER", "ServerState", "create_app"]

log = logging.getLogger("ftkit.serve")


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
    app.add_middleware(HeaderLimit)

    install_error_handlers(app)
    add_probe_routes(app, state)
    add_score_routes(app, state)
    add_openai_routes(app, state)
    install_openapi(app, state.max_new_tokens_cap)
    return app
