"""``ftkit eval``'s errors, from a real subprocess: one error line naming the problem, exit 1, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _ftkit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FTKIT_HOME": str(cwd / "home")}
    return subprocess.run([sys.executable, "-m", "ftkit", *args], cwd=cwd, env=env, capture_output=True, text=True)


def _held_out(path: Path, rows: int) -> Path:
    path.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]})
            + "\n"
            for i in range(rows)
        ),
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval"], "--tuned: is required without --run"),
        (["eval", "--tuned", "a/b", "--base", "a/c", "--data", "held.jsonl", "--prompts", "9"],
         "--prompts: 9 prompts requested but held.jsonl holds 4 usable conversation(s)"),
        (["eval", "--tuned", "nosuch/green", "--base", "nosuch/blue", "--data", "held.jsonl", "--prompts", "2"],
         "--tuned: endpoint nosuch"),
        (["eval", "--run", "missing-run"], "--run: missing-run does not exist; give a run's directory"),
        (["eval", "--run", "r", "--tuned", "a"], "--run: give either --run or --tuned/--base, not both"),
    ],
)  # fmt: skip
def test_bad_invocations_are_one_clear_error(tmp_path: Path, args: list[str], message: str) -> None:
    _held_out(tmp_path / "held.jsonl", 4)
    (tmp_path / "r").mkdir()
    done = _ftkit(*args, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
