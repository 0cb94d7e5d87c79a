"""An endpoint's files under the ftkit home, shared by the server process and every client process.

Layout, for an endpoint named ``NAME``::

    {home}/endpoints/NAME/endpoint.json   what the endpoint should be: deployments, traffic, settings
    {home}/endpoints/NAME/keys.json       primary, secondary and admin keys (mode 0600, never logged)
    {home}/endpoints/NAME/server.json     what is running: pid and port (written by the server once listening)
    {home}/endpoints/NAME/server.log      the server's log (``get_logs``)

Files are replaced atomically (write, fsync, rename), so a reader never sees half a file; read-modify-write
cycles hold an ``flock`` on ``.lock``. The server re-reads ``endpoint.json`` and ``keys.json`` when their
``stat`` changes, which is how traffic changes and key regeneration take effect without a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "PORT_TAKEN",
    "EndpointFiles",
    "new_key",
]

PORT_TAKEN = 3
"""The server's exit status when its recorded port is taken by another process."""

# The server-wide settings are a typed record: ftkit.deployment_settings.ServerSettings (see .records).


def new_key() -> str:
    """Return a fresh random endpoint key (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


class EndpointFiles:
    """The files of one local endpoint (see the module docstring for the layout).

    Args:
        root: The endpoint's directory, ``{home}/endpoints/NAME``.
    """

    def __init__(self, root: Path) -> None:
        # Resolved, because the server's command line names it and liveness checks compare against it.
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"EndpointFiles({str(self.root)!r})"

    @property
    def name(self) -> str:
        """The endpoint's name (its directory's name)."""
        return self.root.name

    @property
    def config_path(self) -> Path:
        """``endpoint.json``."""
        return self.root / "endpoint.json"

    @property
    def keys_path(self) -> Path:
        """``keys.json`` (mode 0600)."""
        return self.root / "keys.json"

    @property
    def server_path(self) -> Path:
        """``server.json``, written by the running server."""
        return self.root / "server.json"

    @property
    def log_path(self) -> Path:
        """``server.log``."""
        return self.root / "server.log"

    def exists(self) -> bool:
        """Whether the endpoint has been created (its config is on disk)."""
        return self.config_path.is_file()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the endpoint's lock for a read-modify-write cycle (across processes)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def read_config(self) -> dict[str, Any]:
        """Return ``endpoint.json`` (``{}`` if absent or unreadable)."""
        return _read_json(self.config_path)

    def write_config(self, config: dict[str, Any]) -> None:
        """Replace ``endpoint.json`` atomically."""
        _write_json(self.config_path, config, mode=0o644)

    def read_keys(self) -> dict[str, str]:
        """Return ``keys.json`` (``{}`` if absent or unreadable)."""
        return {k: v for k, v in _read_json(self.keys_path).items() if isinstance(v, str)}

    def write_keys(self, keys: dict[str, str]) -> None:
        """Replace ``keys.json`` atomically, readable by this user only."""
        _write_json(self.keys_path, keys, mode=0o600)

    def read_server(self) -> dict[str, Any]:
        """Return ``server.json`` (``{}`` when no server has reported)."""
        return _read_json(self.server_path)

    def write_server(self, info: dict[str, Any]) -> None:
        """Replace ``server.json`` atomically (called by the server once it listens)."""
        _write_json(self.server_path, info, mode=0o644)

    def log_tail(self, lines: int = 200) -> str:
        """Return the last ``lines`` lines of the server log (empty if there is none)."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 256 * 1024))
                data = f.read()
        except OSError:
            return ""
        text = data.decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""


def stat_key(path: Path) -> tuple[int, int, int] | None:
    """Return what changes when ``path`` is replaced or edited (inode, mtime, size), or ``None`` if absent."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, Any], *, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # Create with the final mode so the keys are never readable by others, not even for a moment.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        tmp.chmod(mode)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
