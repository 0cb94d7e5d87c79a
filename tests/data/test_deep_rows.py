"""``ftkit data build`` on hostile input: deeply nested rows are rejected with a reason and counted (never a crash),
``--rows`` below 1 and a special file as the source are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

GOOD = {
    "prompt": "hi",
    "prompt_id": "1",
    "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
}


def _lines() -> list[str]:
    good = json.dumps(GOOD)
    return [
        good,
        '{"prompt": "x", "messages": ' + "[" * 100_000 + "]" * 100_000 + "}",  # beyond json's recursion limit
        good[:-1] + ', "meta": ' + "[" * 65 + "]" * 65 + "}",  # decodes, but over the cap of 64 levels
        good[:-1] + ', "meta": ' + '{"a": ' * 20 + "1" + "}" * 20 + "}",  # deep-ish but within the cap: kept
        good,
    ]


def _build(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    source = tmp_path / "train_sft.jsonl"
    source.write_text("\n".join(_lines()) + "\n", encoding="utf-8")
    ftkit = Path(sys.executable).with_name("ftkit")
    return subprocess.run(
        [str(ftkit), "data", "build", "--source", str(source), "--out", str(tmp_path / "out"), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.timeout(120)
def test_deep_rows_are_rejected_and_counted(tmp_path: Path) -> None:
    done = _build(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    (split,) = report["splits"]
    assert split["reasons"] == {"row_too_deep": 2}
    assert split["rows_rejected"] == 2
    assert {s["line"] for s in split["samples"]} == {2, 3}
    kept = (tmp_path / "out" / "train_sft.jsonl").read_text().splitlines()
    assert len(kept) == 3
    assert "row_too_deep" in done.stdout


@pytest.mark.timeout(120)
def test_deep_rows_fail_a_strict_build_with_the_reason(tmp_path: Path) -> None:
    done = _build(tmp_path, "--strict")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert "2 row(s) rejected: row_too_deep" in done.stderr
    assert not (tmp_path / "out" / "train_sft.jsonl").exists()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("rows", ["0", "-3"])
def test_rows_below_one_are_refused_like_the_job_file(tmp_path: Path, rows: str) -> None:
    done = _build(tmp_path, "--rows", rows)
    assert done.returncode != 0
    assert f"data.rows: {rows} is below the minimum 1" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_a_special_file_as_the_source_is_refused(tmp_path: Path, kind: str) -> None:
    """/dev/zero would be read forever, a FIFO never: both refused at once, by name."""
    if kind == "device":
        source = Path("/dev/zero")
        if not source.exists():
            pytest.skip("no /dev/zero here")
    else:
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs here")
        source = tmp_path / "train_sft.jsonl"
        os.mkfifo(source)
    ftkit = Path(sys.executable).with_name("ftkit")
    done = subprocess.run(
        [str(ftkit), "data", "build", "--source", str(source), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{source}: is a device, FIFO or socket, not a data file" in done.stderr
    assert "Traceback" not in done.stderr
