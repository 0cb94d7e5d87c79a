"""Errors of the endpoint server: one shape per route family, whatever raised them.

Under ``/score`` Azure's ``{"error": {"code", "message", "target"}}`` (what azure-core parses into
``HttpResponseError.error``), everywhere else OpenAI's ``{"error": {"message", "type", "param", "code"}}``: for
a handler's :class:`HTTPError`, the router's 404 and 405, a validation 422, oversized headers (431, before
routing: :class:`HeaderLimit`) and an unexpected exception (500).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["MAX_HEADER_BYTES", "HTTPError", "HeaderLimit", "error_body", "error_response", "install_error_handlers"]

log = logging.getLogger("ftkit.serve")


class HTTPError(Exception):
    """An error answer of the server (status, message, field), in its route family's shape."""

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


def error_response(
    path: str, status: int, message: str, *, param: str | None = None, headers: Mapping[str, str] | None = None
) -> Response:
    """The error answer of ``path``'s route family."""
    return JSONResponse(error_body(path, status, message, param), status_code=status, headers=dict(headers or {}))


MAX_HEADER_BYTES = 65_536
"""The most bytes of request headers (names and values) the server accepts; 431 beyond (the HTTP parser sets none)."""


class HeaderLimit:
    """Answer 431 to a request whose headers exceed :data:`MAX_HEADER_BYTES` (pure ASGI)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Answer 431 past the limit, else pass the request on."""
        if scope["type"] == "http":
            size = sum(len(name) + len(value) for name, value in scope.get("headers", ()))
            if size > MAX_HEADER_BYTES:
                message = f"request headers: {size} bytes is over the limit of {MAX_HEADER_BYTES} bytes"
                await error_response(scope.get("path", "/"), 431, message, param="headers")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error on ``app`` in its route family's shape."""

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError) -> Response:
        return error_response(request.url.path, exc.status, exc.message, param=exc.param, headers=exc.headers)

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
        return error_response(path, exc.status_code, message, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "path", "query", "header"))
        message = f"{where or 'request'}: {first.get('msg', 'invalid request')}"
        return error_response(request.url.path, 422, message, param=where or None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:  # pragma: no cover - a bug if reached
        log.exception("unexpected error on %s", request.url.path)
        return error_response(request.url.path, 500, f"internal error: {type(exc).__name__}")
