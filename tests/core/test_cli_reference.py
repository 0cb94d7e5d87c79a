"""The CLI reference page is generated from the parser: every command and every option is on it."""

from __future__ import annotations

import argparse

from ftkit.cli.main import build_parser
from ftkit.cli.reference import markdown


def _walk(parser: argparse.ArgumentParser, path: str) -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _walk(sub, f"{path} {name}")
    return out


def test_every_command_and_option_is_documented() -> None:
    page = markdown()
    commands = _walk(build_parser(), "ftkit")
    assert len(commands) > 8
    for path, parser in commands[1:]:
        assert f"`{path}`" in page, path
        section = page.split(f"`{path}`\n", 1)[1]
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}" in section, (path, flag)
    assert "`--set KEY=VALUE` | replace a job-file key" in page


def test_table_cells_stay_on_one_line() -> None:
    for line in markdown().splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            assert line.endswith(" |"), line
            assert line.count(" | ") - line.count("\\|") >= 1


def test_the_committed_page_is_current() -> None:
    """docs/cli.md is rewritten by every docs build; the committed copy (linked from the README) must match."""
    from pathlib import Path

    committed = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
    assert committed.read_text(encoding="utf-8") == markdown(), "run: python -m ftkit.cli.reference > docs/cli.md"
