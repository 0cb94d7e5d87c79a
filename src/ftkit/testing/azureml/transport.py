"""The azure-core transport that hands requests to the fake.

Strictly private; use ``FakeAzureML().transport``.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["transport_class"]


class _Handler(Protocol):
    """Strictly private: what the transport hands a request to (the fake: ``FakeBase``, which builds it)."""

    def _handle(self, request: Any) -> Any: ...


class _Transport:
    """Strictly private: the azure-core transport that hands requests to the fake."""

    def __init__(self, fake: _Handler) -> None:
        self._fake = fake

    def send(self, request: Any, **kwargs: Any) -> Any:
        del kwargs
        return self._fake._handle(request)

    def sleep(self, duration: float) -> None:
        # Retry backoff and LRO polling sleep through the transport: make both instant.
        del duration

    def open(self) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> _Transport:
        return self

    def __exit__(self, *args: object) -> None:
        return None


def transport_class() -> type:
    """Return the transport class (an ``HttpTransport`` subclass, built lazily to keep imports cheap)."""
    from azure.core.pipeline.transport import HttpTransport

    return type("FakeAzureMLTransport", (_Transport, HttpTransport), {})
