"""The server's log: size-bounded (rotating) ``server.log``, with query-string values redacted.

``server.log`` is always the current file: when it passes ``max_bytes`` it becomes ``server.log.1`` (the older
ones shift up to ``backups``) and a new ``server.log`` starts. The process's own stdout and stderr (a traceback
printed by a thread, a library's warning) are pointed at the current file too, at start and after every
rollover, so nothing goes to a renamed file and ``get_logs`` (the tail of ``server.log``) sees everything.

No route takes a query string, so a query value can only be a client's mistake, such as ``/score?api-key=KEY``:
every query value in a log line (the access log prints the full path) is replaced by ``***``.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
from pathlib import Path

__all__ = ["LOG_BACKUPS", "LOG_MAX_BYTES", "RedactingFormatter", "redact_query", "setup_logging"]

LOG_MAX_BYTES = 1_048_576
"""Size at which ``server.log`` rotates."""
LOG_BACKUPS = 3
"""Rotated files kept (``server.log.1`` ... ``server.log.3``): at most about 4 MiB of log per endpoint."""

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# A query string: from '?' to the end of the path (a space, a quote or the end of the line).
_QUERY = re.compile(r"\?([^\s\"']*)")
_PAIR = re.compile(r"(^|&)([^=&]*)=([^&]*)")


def redact_query(text: str) -> str:
    """Replace every query-string value in ``text`` by ``***`` (``/score?api-key=K`` -> ``/score?api-key=***``)."""

    def one(match: re.Match[str]) -> str:
        query = _PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}=***", match.group(1))
        # A bare value (?KEY, no '=') is as secret as a named one.
        query = "&".join(p if "=" in p or not p else "***" for p in query.split("&"))
        return f"?{query}"

    return _QUERY.sub(one, text)


class RedactingFormatter(logging.Formatter):
    """A formatter whose lines (tracebacks included) carry no query-string values."""

    def format(self, record: logging.LogRecord) -> str:
        """Format the record, then redact it."""
        return redact_query(super().format(record))


class _CurrentFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating handler that keeps the process's stdout and stderr on the current file."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._point_std_streams()

    def doRollover(self) -> None:
        """Rotate, then point stdout and stderr at the new file."""
        super().doRollover()
        self._point_std_streams()

    def _point_std_streams(self) -> None:
        if self.stream is None:
            return
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        fd = self.stream.fileno()
        for target in (1, 2):
            os.dup2(fd, target)


def setup_logging(path: Path, *, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS) -> None:
    """Send every log record of this process to a rotating ``path``, redacted; stdout and stderr follow it.

    Args:
        path: The log file (``server.log``).
        max_bytes: Size at which it rotates.
        backups: Rotated files kept.
    """
    handler = _CurrentFileHandler(path, max(1024, max_bytes), max(1, backups))
    handler.setFormatter(RedactingFormatter(FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    for noisy in ("httpx", "transformers", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
