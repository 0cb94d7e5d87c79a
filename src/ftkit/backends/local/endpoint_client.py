"""The managing process's HTTP calls to an endpoint's server: the admin reload and one scoring request.

httpx loads on first use; errors become ftkit's (:class:`~ftkit.exceptions.DeploymentError` for a server that
cannot load, :class:`~ftkit.exceptions.TransientBackendError` for what the retry policy retries,
:class:`~ftkit.exceptions.AuthError`, :class:`~ftkit.exceptions.ScoringError`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...exceptions import AuthError, DeploymentError, ScoringError, TransientBackendError
from ...serve.files import EndpointFiles

__all__ = ["DEPLOYMENT_HEADER", "admin_reload", "post_score"]

DEPLOYMENT_HEADER = "azureml-model-deployment"


def admin_reload(files: EndpointFiles, port: int, timeout_s: float) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Ask the server to load the deployments ``endpoint.json`` lists, with the admin key.

    Returns:
        Each deployment's result (``Succeeded`` or ``Failed: <why>``) and placement.

    Raises:
        DeploymentError: The server did not answer, or refused (with its log).
    """
    import httpx

    admin = files.read_keys().get("admin", "")
    try:
        resp = httpx.post(
            f"http://127.0.0.1:{port}/-/admin/reload",
            headers={"Authorization": f"Bearer {admin}"},
            timeout=timeout_s,
        )
    except httpx.HTTPError as exc:
        raise DeploymentError(
            f"endpoint {files.name}: the server did not answer while loading deployments ({type(exc).__name__})",
            endpoint=files.name,
            logs=files.log_tail(50),
        ) from exc
    if resp.status_code != 200:
        raise DeploymentError(
            f"endpoint {files.name}: the server refused to reload (HTTP {resp.status_code})",
            endpoint=files.name,
            logs=files.log_tail(50),
        )
    answer = resp.json()
    result = answer.get("deployments", {})
    placement = answer.get("placement", {})
    return (
        {str(k): str(v) for k, v in result.items()},
        {str(k): dict(v) for k, v in placement.items() if isinstance(v, dict)},
    )


def post_score(
    endpoint: str,
    port: int,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    *,
    deployment: str | None,
    timeout_s: float,
) -> Any:
    """POST one scoring request to the server on ``port`` and return the decoded answer.

    Raises:
        TransientBackendError: No answer, a failed connection, or 408/429/503 (retried by the caller's policy).
        AuthError: 401.
        ScoringError: Any other error answer.
    """
    import httpx

    try:
        resp = httpx.post(f"http://127.0.0.1:{port}/score", json=dict(body), headers=dict(headers), timeout=timeout_s)
    except httpx.TimeoutException as exc:
        raise TransientBackendError(f"endpoint {endpoint}: no answer within {timeout_s}s", operation="score") from exc
    except httpx.HTTPError as exc:
        raise TransientBackendError(
            f"endpoint {endpoint}: connection failed ({type(exc).__name__})", operation="score"
        ) from exc
    answered_by = resp.headers.get(DEPLOYMENT_HEADER, deployment)
    if resp.status_code == 200:
        return resp.json()
    message = _error_message(resp)
    if resp.status_code in (408, 429, 503):
        retry_after = resp.headers.get("retry-after")
        raise TransientBackendError(
            f"endpoint {endpoint} answered {resp.status_code}: {message}",
            operation="score",
            status_code=resp.status_code,
            retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
        )
    if resp.status_code == 401:
        raise AuthError(f"endpoint {endpoint} refused the key: {message}", operation="score", status_code=401)
    raise ScoringError(
        f"endpoint {endpoint} answered {resp.status_code}: {message}",
        status_code=resp.status_code,
        endpoint=endpoint,
        deployment=answered_by,
    )


def _error_message(resp: Any) -> str:
    """Strictly private: the ``error.message`` of an error answer, else the start of its text."""
    try:
        data = resp.json()
    except ValueError:
        return str(resp.text)[:300]
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("message", ""))[:1000]
    return str(data)[:300]
