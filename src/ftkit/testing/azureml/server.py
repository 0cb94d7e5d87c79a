"""The fake's opt-in loopback HTTP server, for HTTP clients that take a URL but no transport (mlflow, requests).

Strictly private; use :meth:`ftkit.testing.FakeAzureML.serve`.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import FakeBase

__all__ = ["LoopbackServer"]


class LoopbackServer:
    """A ``ThreadingHTTPServer`` on 127.0.0.1 (a free port) that hands every request to the fake's dispatcher.

    Args:
        fake: The fake answering the requests.
    """

    def __init__(self, fake: FakeBase) -> None:
        self._fake = fake
        handler = _handler_for(fake)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="ftkit-fake-azureml", daemon=True)

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _handler_for(fake: FakeBase) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            from azure.core.rest import HttpRequest

            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            host = self.headers.get("Host") or "127.0.0.1"
            request = HttpRequest(self.command, f"http://{host}{self.path}", headers=dict(self.headers), content=body)
            try:
                response: Any = fake._handle(request)
            except Exception as exc:  # a scripted connection reset: drop the connection as a server would
                del exc
                self.close_connection = True
                return
            payload = response.content if hasattr(response, "content") else response.body()
            self.send_response(response.status_code)
            for k, v in response.headers.items():
                if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

        def log_message(self, format: str, *args: Any) -> None:
            del format, args  # requests are recorded in fake.requests instead

    return Handler
