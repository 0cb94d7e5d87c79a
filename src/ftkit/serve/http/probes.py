"""The probes (``/health/live``, ``/health/ready``, no auth, like a container's) and the admin route.

``POST /-/admin/reload`` is strictly private: the managing process (:mod:`ftkit.backends.local.endpoints`) asks
the server, with a key of its own, to load the deployments ``endpoint.json`` now lists.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from .state import ServerState

__all__ = ["add_probe_routes"]


def add_probe_routes(app: FastAPI, state: ServerState) -> None:
    """Add the probes and the admin reload route to ``app``."""

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

    @app.post("/-/admin/reload", include_in_schema=False)
    async def admin_reload(request: Request) -> dict[str, Any]:
        state.check_key(request.headers.get("authorization"), admin=True)
        results = await state.reload()
        placement = {n: d.placement.as_dict() for n, d in state.deployments.items()}
        return {"deployments": results, "placement": placement}
