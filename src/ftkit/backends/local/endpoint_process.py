"""Starting, probing and stopping an endpoint's server process (client side: no torch, no fastapi).

The server is started detached (its own session), so it outlives the Python process that created it, as a
managed endpoint outlives the notebook; ``ftkit endpoint delete`` and ``ftkit cleanup`` stop it from any
process. A process counts as this endpoint's server only if its command line names the server module and the
endpoint's directory, so a recycled pid is never taken for a live server (or killed).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time

from ...serve.files import PORT_TAKEN, EndpointFiles
from .pids import owned_process_alive
from .spawn import child_env, python_command

__all__ = [
    "PORT_TAKEN",
    "SERVER_MODULE",
    "is_server_alive",
    "port_open",
    "start_server",
    "stop_server",
    "wait_listening",
]

SERVER_MODULE = "ftkit.serve"


def start_server(files: EndpointFiles, port: int | None = None) -> subprocess.Popen[bytes]:
    """Start the endpoint's server process, detached, logging to ``server.log``.

    Args:
        files: The endpoint's files (``endpoint.json`` and ``keys.json`` must exist).
        port: The port to listen on (the endpoint's own, from its first start); ``None``: a free one.

    Returns:
        The process; the caller waits for ``server.json`` (see :func:`wait_listening`).
    """
    with contextlib.suppress(FileNotFoundError):
        files.server_path.unlink()
    # The same ftkit as the caller, installed or not, and nothing from the caller's directory (see ..spawn).
    env = child_env()
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    log = files.log_path.open("ab")
    try:
        return subprocess.Popen(
            python_command(SERVER_MODULE, "--state-dir", str(files.root), "--port", str(port or 0)),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        log.close()


def wait_listening(files: EndpointFiles, proc: subprocess.Popen[bytes] | None, timeout_s: float) -> int | None:
    """Wait until the server reports its port and accepts connections.

    Args:
        files: The endpoint's files.
        proc: The process, when this process started it (to notice an early exit at once).
        timeout_s: How long to wait.

    Returns:
        The port, or ``None`` if the server exited or did not listen in time.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return None
        info = files.read_server()
        port = info.get("port")
        if isinstance(port, int) and port_open(port):
            return port
        time.sleep(0.05)
    return None


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def is_server_alive(files: EndpointFiles, pid: int | None) -> bool:
    """Whether ``pid`` is a live (not zombie) server process of this endpoint.

    Args:
        files: The endpoint's files.
        pid: The pid recorded in ``server.json``.
    """
    module, root = SERVER_MODULE, str(files.root)
    return owned_process_alive(pid, lambda args: module in args and root in args)


def stop_server(files: EndpointFiles, pid: int | None, port: int | None, *, timeout_s: float = 15.0) -> bool:
    """Stop the endpoint's server (SIGTERM, then SIGKILL) and wait until its port is closed.

    Args:
        files: The endpoint's files.
        pid: The server's pid, from ``server.json``.
        port: Its port, from ``server.json``.
        timeout_s: How long to wait for a graceful exit before killing it.

    Returns:
        Whether the process is gone and the port closed.
    """
    if is_server_alive(files, pid):
        assert pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and is_server_alive(files, pid):
            time.sleep(0.05)
        if is_server_alive(files, pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and is_server_alive(files, pid):
                time.sleep(0.05)
    if isinstance(port, int):
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and port_open(port):
            time.sleep(0.05)
        return not is_server_alive(files, pid) and not port_open(port)
    return not is_server_alive(files, pid)
