"""``python -m ftkit.backends.local.serve --state-dir DIR``: run one endpoint's server.

The server binds a free loopback port itself (no race between choosing a port and listening on it), loads
the endpoint's deployments, then writes ``server.json`` (pid, port) for its clients. SIGTERM stops it
gracefully; stdout and stderr go to the endpoint's ``server.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
from pathlib import Path

from .state import EndpointFiles


def main(argv: list[str] | None = None) -> int:
    """Run the server until it is stopped; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m ftkit.backends.local.serve")
    parser.add_argument("--state-dir", type=Path, required=True, help="the endpoint's directory under the ftkit home")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (loopback by default)")
    args = parser.parse_args(argv)
    files = EndpointFiles(args.state_dir.resolve())
    if not files.exists():
        print(f"no endpoint config at {files.config_path}", file=sys.stderr)
        return 2

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
        force=True,
    )
    for noisy in ("httpx", "transformers", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import torch
    import uvicorn

    from .app import ServerState, create_app
    from .records import read_server_settings

    threads = read_server_settings(files.read_config()).torch_threads
    # Leave a core to the event loop: with every core in torch's spinning thread pool, small models on a busy
    # two-core machine ran 15x slower than on one thread (measured; see docs/benchmarks.md).
    torch.set_num_threads(threads if threads > 0 else max(1, (os.cpu_count() or 1) - 1))

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, 0))
    port = sock.getsockname()[1]

    def ready() -> None:
        files.write_server({"pid": os.getpid(), "port": port, "host": args.host})
        logging.getLogger("ftkit.serve").info("endpoint %s listening on http://%s:%d", files.name, args.host, port)

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
