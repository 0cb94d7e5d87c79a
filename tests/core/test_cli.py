"""The ``ftkit`` command as a whole: help for every command, usage errors, and no tracebacks on bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

import ftkit.demo
from ftkit.cli import main
from ftkit.cli.main import build_parser

COMMANDS = [
    ["validate"],
    ["render"],
    ["schema"],
    ["data"],
    ["data", "build"],
    ["run"],
    ["demo"],
    ["job"],
    ["job", "list"],
    ["job", "show"],
    ["job", "logs"],
    ["job", "cancel"],
    ["endpoint"],
    ["endpoint", "list"],
    ["endpoint", "delete"],
    ["cleanup"],
]


def test_top_level_help_lists_every_command_and_where_to_start(capsys: pytest.CaptureFixture[str]) -> None:
    """``ftkit --help`` names each command and points at ``ftkit demo``."""
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("validate", "render", "data", "run", "demo", "job", "endpoint", "cleanup"):
        assert f"    {command}" in out
    assert "Start with `ftkit demo`" in out


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_a_description(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Each command's help has a description paragraph, not just the usage line and options."""
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    paragraphs = [p for p in out.split("\n\n") if p.strip()]
    assert not paragraphs[1].lstrip().startswith(("positional arguments", "options")), out


@pytest.mark.parametrize(
    "argv",
    [["run", "job.yaml", "--poll", "0"], ["run", "job.yaml", "--timeout", "-5"], ["demo", "--steps", "0"]],
    ids=" ".join,
)
def test_non_positive_numbers_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A zero poll interval would hammer the service; such values stop at the parser (exit 2)."""
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    assert "must be above 0" in capsys.readouterr().err


def test_demo_dir_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``ftkit demo --dir FILE`` says so instead of failing inside mkdir."""
    target = tmp_path / "taken"
    target.write_text("")
    assert main(["demo", "--dir", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_file_system_errors_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An OSError inside a command (no permission, full disk) prints its message and exits 1, no traceback."""

    def refuse(directory: Path, **kwargs: object) -> Path:
        raise PermissionError(13, "Permission denied", str(directory))

    monkeypatch.setattr(ftkit.demo, "prepare_demo", refuse)
    monkeypatch.setattr(ftkit.demo, "prepare_real_demo", refuse)
    assert main(["demo", "--dir", str(tmp_path / "demo")]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"error: [Errno 13] Permission denied: '{tmp_path / 'demo'}'"
