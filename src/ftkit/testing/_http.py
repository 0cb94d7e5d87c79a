"""HTTP plumbing of the fakes: a credential that issues JWTs and azure-core responses built in memory.

Strictly private; use :class:`ftkit.testing.FakeAzureML`.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["FakeCredential", "RecordedRequest", "make_response", "request_json"]

SECRET_HEADERS = frozenset({"authorization", "x-ms-authorization-auxiliary", "cookie"})


class FakeCredential:
    """A token credential that issues unsigned-in-spirit JWTs for any scope.

    azure-ai-ml decodes the token it gets for ``https://ml.azure.com/.default`` and checks its ``aud`` claim
    when submitting jobs, so the token must be a real JWT whose audience is the scope without
    ``/.default``. Tokens are HS256-signed with a fixed test key; nothing verifies them.

    Args:
        tenant_id: The ``tid`` claim.
        fail_with: When set, :meth:`get_token` raises this instead (to test credential failures).
    """

    def __init__(self, tenant_id: str = "00000000-0000-0000-0000-000000000001", fail_with: Exception | None = None):
        self.tenant_id = tenant_id
        self.fail_with = fail_with
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        """Return an ``AccessToken`` for the first scope (or raise :attr:`fail_with`)."""
        import jwt
        from azure.core.credentials import AccessToken

        del kwargs
        if self.fail_with is not None:
            raise self.fail_with
        scope = scopes[0] if scopes else "https://management.azure.com/.default"
        self.scopes.append(scope)
        now = int(time.time())
        claims = {
            "aud": scope.removesuffix("/.default"),
            "tid": self.tenant_id,
            "oid": "00000000-0000-0000-0000-0000000000aa",
            "upn": "tester@example.com",
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
        }
        token = jwt.encode(claims, "ftkit-fake-signing-key-0123456789abcdef", algorithm="HS256")
        return AccessToken(token, now + 3600)

    def close(self) -> None:
        """Nothing to close."""


@attrs.frozen
class RecordedRequest:
    """One request the fake received.

    Attributes:
        method: ``GET``, ``PUT``, ``POST``, ``DELETE``...
        url: The full URL, query included.
        path: The URL's path.
        query: The query parameters (first value of each).
        headers: The request's headers, secrets (``Authorization``) replaced by ``<redacted>``.
        body: The JSON body, if the request had one.
        status: The status the fake answered with (0 for a simulated connection failure).
    """

    method: str
    url: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: Any
    status: int


def request_json(request: Any) -> Any:
    """Return a request's JSON body, or ``None``."""
    raw = request.content if hasattr(request, "content") else None
    if raw is None:
        raw = getattr(request, "data", None) or getattr(request, "body", None)
    if raw is None:
        return None
    if isinstance(raw, bytes | bytearray):
        raw = raw.decode("utf-8")
    if isinstance(raw, str):
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def make_response(request: Any, status: int, body: Any = None, headers: Mapping[str, str] | None = None) -> Any:
    """Build the azure-core response type that matches ``request``.

    TypeSpec-generated operations send :mod:`azure.core.rest` requests and need a rest response (with
    ``.json()``); older msrest-generated ones send ``pipeline.transport`` requests and need the legacy type.

    Args:
        request: The request being answered.
        status: The HTTP status.
        body: A JSON-serialisable body (``None`` for an empty one; ``str``/``bytes`` are sent as they are).
        headers: Extra response headers.

    Returns:
        The response.
    """
    import requests
    from azure.core.pipeline._tools import is_rest
    from azure.core.pipeline.transport import RequestsTransportResponse
    from azure.core.rest._requests_basic import RestRequestsTransportResponse

    if body is None:
        payload = b""
    elif isinstance(body, bytes):
        payload = body
    elif isinstance(body, str):
        payload = body.encode("utf-8")
    else:
        payload = json.dumps(body).encode("utf-8")
    raw = requests.Response()
    raw.status_code = status
    raw.raw = io.BytesIO(payload)
    raw.headers.update({"Content-Type": "application/json", "x-ms-request-id": "fake", **(headers or {})})
    raw.url = str(request.url)
    raw.reason = _REASONS.get(status, "")
    if is_rest(request):
        response = RestRequestsTransportResponse(request=request, internal_response=raw)  # type: ignore[no-untyped-call]
        response.read()
        return response
    return RequestsTransportResponse(request, raw)


_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    424: "Failed Dependency",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
