"""The OpenAPI document at ``/openapi.json``: FastAPI's routes plus the bodies' schemas from the contract.

The request and response schemas are generated from the parser's definitions
(:func:`ftkit.serve.contract.openapi.body_schemas`); this module adds what each route documents (key auth, the
deployment header, the error answers).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from ..contract.openapi import body_schemas
from .state import DEPLOYMENT_HEADER

__all__ = ["install_openapi", "route_doc"]


def route_doc(
    request_schema: str, response_schema: str, *, streams: bool = False, error_schema: str = "Error"
) -> dict[str, Any]:
    """What a body-taking route documents: key auth, the deployment header, its bodies and its error answers."""
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


def install_openapi(app: FastAPI, cap: int) -> None:
    """Serve ``app``'s document with the bodies' schemas (``cap``: the endpoint's ``max_new_tokens_cap``)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {}).update(body_schemas(cap))
            components["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
