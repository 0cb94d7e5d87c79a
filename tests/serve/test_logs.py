"""The server's log: query-string values redacted, size-bounded rotation, stdout and stderr on the current file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ftkit.serve.files import EndpointFiles
from ftkit.serve.logs import redact_query


def test_query_values_are_redacted() -> None:
    """Every query value in a line is replaced; paths, names and the rest of the line are kept."""
    line = '127.0.0.1:5000 - "POST /score?api-key=SECRET&code=abc&flag HTTP/1.1" 401'
    assert redact_query(line) == '127.0.0.1:5000 - "POST /score?api-key=***&code=***&*** HTTP/1.1" 401'
    assert redact_query("GET /v1/models?SECRET") == "GET /v1/models?***"
    assert redact_query('"GET /health/live HTTP/1.1" 200') == '"GET /health/live HTTP/1.1" 200'
    assert redact_query("what? nothing") == "what? nothing"


# A server-like process: logs through setup_logging and also prints, past several rollovers.
WRITER = """
import logging, sys
from pathlib import Path
from ftkit.serve.logs import setup_logging
path = Path(sys.argv[1])
setup_logging(path, max_bytes=4096, backups=2)
log = logging.getLogger("uvicorn.access")
for i in range(400):
    log.info('127.0.0.1:1 - "POST /score?api-key=TOPSECRET HTTP/1.1" 200 line %d', i)
print("printed after the rollovers", flush=True)
sys.stderr.write("stderr after the rollovers\\n")
sys.stderr.flush()
log.info("last line")
"""


def test_log_rotates_and_get_logs_reads_the_current_file(tmp_path: Path) -> None:
    """The log stays bounded (current file plus backups); what the process prints lands in the current file,
    which is what log_tail (get_logs) reads; no secret from a query string is written anywhere."""
    files = EndpointFiles(tmp_path / "ep")
    files.root.mkdir()
    subprocess.run([sys.executable, "-c", WRITER, str(files.log_path)], check=True, timeout=60)
    logs = sorted(p.name for p in files.root.iterdir())
    assert logs == ["server.log", "server.log.1", "server.log.2"]
    for name in logs:
        text = (files.root / name).read_text()
        assert (files.root / name).stat().st_size <= 4096 + 200
        assert "TOPSECRET" not in text
    tail = files.log_tail(5)
    assert "printed after the rollovers" in tail
    assert "stderr after the rollovers" in tail
    assert tail.splitlines()[-1].endswith("last line")
    assert "api-key=***" in files.log_tail(50)
