"""Hostile and broken job files: ``ftkit validate`` and ``ftkit run --dry-run`` give one error, never a traceback.

Every case runs both commands as real subprocesses. Each must exit 1 with exactly one ``error:`` line, name the
file (and the key and line where there is one) and say what is wrong. Hang cases (alias bombs, deep nesting) are
bounded by pytest-timeout, not by a wall-clock assertion (speed is a benchmark's business).
"""

from __future__ import annotations

import codecs
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

BASE = "name: t\nmodel: {name: a}\n"


def _laughs(levels: int, kind: str) -> str:
    """The "billion laughs": each level ten aliases of the one before (levels of ten -> 10**levels values)."""
    if kind == "list":
        lines = ["x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        lines += [f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    else:
        lines = ["x0: &a0 {k: lol}"]
        lines += [f"x{i}: &a{i} {{{', '.join(f'k{j}: *a{i - 1}' for j in range(10))}}}" for i in range(1, levels)]
    return "finetune:\n  extra_stuff:\n" + "".join(f"    {ln}\n" for ln in lines)


# (id, file content (bytes or text appended to nothing), fragments expected in the error output, expected line)
CASES: list[tuple[str, bytes | str, tuple[str, ...], int | None]] = [
    ("binary", bytes(range(256)) * 8, ("NUL byte",), 1),
    ("invalid-utf8", (BASE + "register: {description: caf\xe9}\n").encode("latin-1"), ("not UTF-8", "0xe9"), 3),
    ("utf16-bom", (BASE + "data: {percent: 5}\n").encode("utf-16"), ("UTF-16", "save it as UTF-8"), 1),
    ("utf16-no-bom", (BASE + "data: {percent: 5}\n").encode("utf-16-le"), ("NUL byte",), 1),
    ("utf32-bom", (BASE).encode("utf-32"), ("UTF-32",), 1),
    ("nul-byte", (BASE + "register: {description: a\0b}\n").encode(), ("NUL byte",), 3),
    ("control-character", BASE + "register: {description: a\x01b}\n", ("not valid YAML", "not allowed"), 3),
    ("nested-lists", "name: t\nmodel: " + "[" * 20_000, ("nested more than 64 levels",), 2),
    ("nested-maps", "name: t\nmodel: " + "{a: " * 20_000, ("nested more than 64 levels",), 2),
    ("nested-blocks", BASE + "".join(f"{'  ' * i}k{i}:\n" for i in range(200)), ("nested more than 64",), None),
    ("billion-laughs", BASE + _laughs(9, "list"), ("expands to more than 100,000 values",), None),
    ("billion-laughs-maps", BASE + _laughs(9, "map"), ("expands to more than 100,000 values",), None),
    ("recursive-alias", BASE + "register: &r {description: *r}\n", ("refers to a value that contains it",), 3),
    ("too-large", BASE + "# " + "x" * 2_000_000 + "\n", ("larger than 1024 KiB",), None),
    ("huge-integer", BASE + "finetune: {seed: " + "9" * 5000 + "}\n", ("not valid YAML", "value cannot be read"), None),
    (
        "duplicate-key",
        BASE + "finetune:\n  learning_rate: 1e-4\n  max_steps: 5\n  learning_rate: 2e-4\n",
        ("finetune.learning_rate: is given twice (lines 4 and 6)",),
        6,
    ),
    (
        "duplicate-section",
        BASE + "finetune: {learning_rate: 1e-4}\ndata: {percent: 5}\nfinetune: {learning_rate: 1}\n",
        ("finetune: is given twice (lines 3 and 5)",),
        5,
    ),
    ("duplicate-name", BASE + "name: u\n", ("name: is given twice (lines 1 and 3)",), 3),
    ("max-queue-0", BASE + "deploy: {max_queue: 0}\n", ("deploy.max_queue: 0 is below the minimum 1",), 3),
    ("seed-2**70", BASE + "finetune: {seed: 1180591620717411303424}\n", ("finetune.seed", "maximum 4294967295"), 3),
    ("seed-negative", BASE + "finetune: {seed: -1}\n", ("finetune.seed: -1 is below the minimum 0",), 3),
    ("data-seed-2**32", BASE + "data: {seed: 4294967296}\n", ("data.seed", "maximum 4294967295"), 3),
    ("name-nul", 'name: "run\\0x"\nmodel: {name: a}\n', ("name: contains a NUL character",), 1),
    ("path-nul", BASE + 'local: {home: "/tmp/a\\0b"}\n', ("local.home: contains a NUL character",), 3),
    ("lr-1e308", BASE + "finetune: {learning_rate: 1e308}\n", ("finetune.learning_rate", "above the maximum 1"), 3),
    ("lr-inf", BASE + "finetune: {learning_rate: .inf}\n", ("finetune.learning_rate: expected a number",), 3),
    ("lr-1e400", BASE + "finetune: {learning_rate: 1e400}\n", ("finetune.learning_rate: expected a number",), 3),
    ("max-steps-1e20", BASE + "finetune: {max_steps: 1e20}\n", ("finetune.max_steps", "above the maximum"), 3),
    ("batch-1e12", BASE + "finetune: {per_device_train_batch_size: 1e12}\n", ("per_device_train_batch_size",), 3),
    ("lora-r-1e6", BASE + "finetune: {lora_r: 1e6}\n", ("finetune.lora_r: 1000000 is above the maximum 4096",), 3),
    ("extra-int-2**70", BASE + "finetune: {batch_size: 1180591620717411303424}\n", ("finetune.batch_size",), 3),
    ("processes-1000", BASE + "local: {processes: 1000}\n", ("local.processes: 1000 is above the maximum 64",), 3),
    ("epochs-1e9", BASE + "finetune: {num_train_epochs: 1e9}\n", ("finetune.num_train_epochs",), 3),
    ("endpoint-path", BASE + "deploy: {endpoint_name: ../../x}\n", ("deploy.endpoint_name", "cannot be a name"), 3),
    ("register-path", BASE + "register: {name: ../evil}\n", ("register.name", "cannot be a name"), 3),
    ("register-dotdot", BASE + "register: {name: ..}\n", ("register.name: '..' is not a name",), 3),
    ("run-name-slash", "name: a/b\nmodel: {name: a}\n", ("name: 'a/b' cannot be a name",), 1),
    ("deployment-name", BASE + "deploy: {deployment_name: 'a\\\\b'}\n", ("deploy.deployment_name",), 3),
    ("timeout-2**40", BASE + "deploy: {request_timeout_ms: 1099511627776}\n", ("deploy.request_timeout_ms",), 3),
    ("source-dev-zero", BASE + "data: {source: /dev/zero}\n", ("data.source", "device, FIFO or socket"), 3),
]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    ftkit = Path(sys.executable).with_name("ftkit")
    env = {**os.environ, "FTKIT_HOME": os.devnull + "-never-used"}
    return subprocess.run([str(ftkit), *args], capture_output=True, text=True, timeout=120, env=env, check=False)


def _assert_one_error(done: subprocess.CompletedProcess[str], path: Path, fragments: tuple[str, ...]) -> None:
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "Traceback" not in out, out
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, out
    assert path.name in done.stderr, out
    for fragment in fragments:
        assert fragment in done.stderr, out


COMMANDS: dict[str, Callable[[Path], tuple[str, ...]]] = {
    "validate": lambda p: ("validate", str(p)),
    "dry-run": lambda p: ("run", "--dry-run", str(p)),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(("content", "fragments", "line"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_one_clear_error(
    tmp_path: Path, command: str, content: bytes | str, fragments: tuple[str, ...], line: int | None
) -> None:
    path = tmp_path / "job.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    done = _cli(*COMMANDS[command](path))
    _assert_one_error(done, path, fragments)
    if line is not None:
        assert f"{path}:{line}:" in done.stderr, done.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", ["directory", "device", "fifo"])
def test_a_job_file_that_is_not_a_regular_file(tmp_path: Path, command: str, kind: str) -> None:
    """A directory, /dev/zero or a FIFO given as the job file: refused at once (a FIFO would block a reader)."""
    if kind == "directory":
        path = tmp_path / "dir.yaml"
        path.mkdir()
    elif kind == "device":
        path = Path("/dev/zero")
        if not path.exists():
            pytest.skip("no /dev/zero here")
    else:
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs here")
        path = tmp_path / "fifo.yaml"
        os.mkfifo(path)
    done = _cli(*COMMANDS[command](path))
    _assert_one_error(done, path, ("is not a regular file",))


def test_aliases_and_merge_keys_within_the_limits_still_work(tmp_path: Path) -> None:
    """A file that shares settings through an anchor and a merge key is read as YAML says."""
    from ftkit.jobfile import JobFile

    path = tmp_path / "job.yaml"
    path.write_text(
        codecs.BOM_UTF8.decode("utf-8")
        + "name: t\nmodel: {name: a}\n"
        + "x-common: &common {learning_rate: 1e-4, max_steps: 7}\n".replace("x-common: ", "finetune:\n  <<: ")
        + "  seed: 3\n",
        encoding="utf-8",
    )
    job = JobFile.load(path)
    assert (job.finetune.learning_rate, job.finetune.max_steps, job.finetune.seed) == (1e-4, 7, 3)
