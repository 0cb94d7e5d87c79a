"""The notebook's job renders byte for byte as it did before the typed loader (issue 10's golden files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftkit.cli import main

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_notebook_job_renders_byte_identically(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``ftkit render examples/phi3-ultrachat.yaml`` prints exactly the captured body."""
    assert main(["render", "--format", fmt, str(Path("examples") / "phi3-ultrachat.yaml")]) == 0
    expected = (GOLDEN / f"phi3-ultrachat.render.{fmt}").read_text(encoding="utf-8")
    assert capsys.readouterr().out == expected


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    # The body holds the data paths relative to the job file as given on the command line.
    monkeypatch.chdir(REPO)
