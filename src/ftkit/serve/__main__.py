"""``python -m ftkit.serve --state-dir DIR``: run one endpoint's server.

The server binds its port itself: the endpoint's recorded port (``--port``, so that its URL never changes), or on
first start a free loopback port (no race between choosing a port and listening on it). If the recorded port is
taken it exits with status :data:`~.files.PORT_TAKEN` and says so, rather than moving. It then loads the
endpoint's deployments and writes ``server.json`` (pid, port) for its clients. SIGTERM stops it gracefully.
Everything it prints or logs goes to the endpoint's ``server.log``, which rotates (see :mod:`.logs`).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import socket
import sys
from pathlib import Path

from ..exceptions import ValidationError
from .files import PORT_TAKEN, EndpointFiles
from .logs import setup_logging
from .records import read_server_settings


def main(argv: list[str] | None = None) -> int:
    """Run the server until it is stopped; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m ftkit.serve")
    parser.add_argument("--state-dir", type=Path, required=True, help="the endpoint's directory under the ftkit home")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (loopback by default)")
    parser.add_argument("--port", type=int, default=0, help="port to bind (0: a free one, on first start)")
    args = parser.parse_args(argv)
    files = EndpointFiles(args.state_dir.resolve())
    if not files.exists():
        print(f"no endpoint config at {files.config_path}", file=sys.stderr)
        return 2

    try:
        settings = read_server_settings(files.read_config())
    except ValidationError as exc:  # before logging is set up: stderr goes to server.log all the same
        print(f"endpoint {files.name}: {exc}", file=sys.stderr)
        return 2
    setup_logging(files.log_path, max_bytes=settings.log_max_bytes, backups=settings.log_backups)
    logger = logging.getLogger("ftkit.serve")

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # SO_REUSEADDR: a restart may bind the port while the dead server's connections linger in TIME_WAIT; it
    # still fails while another process listens there.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            logger.error(
                "endpoint %s: port %d is taken by another process; the endpoint keeps its URL, so it does not "
                "move to another port: free the port, or delete and recreate the endpoint",
                files.name,
                args.port,
            )
            return PORT_TAKEN
        raise
    port = sock.getsockname()[1]

    import torch
    import uvicorn

    from .http.app import ServerState, create_app

    threads = settings.torch_threads
    # Leave a core to the event loop: with every core in torch's spinning thread pool, small models on a busy
    # two-core machine ran 15x slower than on one thread (measured; see docs/benchmarks.md).
    torch.set_num_threads(threads if threads > 0 else max(1, (os.cpu_count() or 1) - 1))

    def ready() -> None:
        files.write_server({"pid": os.getpid(), "port": port, "host": args.host})
        logger.info("endpoint %s listening on http://%s:%d", files.name, args.host, port)

    app = create_app(ServerState(files), on_ready=ready)
    config = uvicorn.Config(app, log_config=None, access_log=True, timeout_graceful_shutdown=5, backlog=1024)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        with contextlib.suppress(OSError):
            if files.read_server().get("pid") == os.getpid():
                files.server_path.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
