"""The CLI reference page, generated from the argparse parser itself (docs/conf.py rewrites docs/cli.md with it).

Generating the page from :func:`~ftkit.cli.main.build_parser` keeps it true to the code: a new option shows up
in the documentation the next time the docs are built. ``python -m ftkit.cli.reference`` prints it.
"""

from __future__ import annotations

import argparse

from .main import build_parser

__all__ = ["markdown"]

_HEADER = """# Command-line reference

<!-- Generated from ftkit's argparse parser by ftkit.cli.reference (every docs build rewrites it; a test keeps the
committed copy current): edit the parser, then `python -m ftkit.cli.reference > docs/cli.md`. -->

Every command prints its own help with `ftkit COMMAND --help`. Errors print one line per problem and exit 1;
usage errors exit 2; `ftkit ... | head` ends quietly (exit 141, as a SIGPIPE would).
"""


def markdown() -> str:
    """Return the reference of every ``ftkit`` command as MyST Markdown."""
    parser = build_parser()
    parts = [_HEADER, _section(parser, "ftkit", level=2, top=True)]
    for name, sub in _subcommands(parser):
        parts.append(_command(sub, f"ftkit {name}", level=2))
    return "\n".join(parts).rstrip() + "\n"


def _command(parser: argparse.ArgumentParser, path: str, *, level: int) -> str:
    parts = [_section(parser, path, level=level)]
    for name, sub in _subcommands(parser):
        parts.append(_command(sub, f"{path} {name}", level=level + 1))
    return "\n".join(parts)


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            # choices keep the registration order, which is the order of the flow.
            return list(action.choices.items())
    return []


def _section(parser: argparse.ArgumentParser, path: str, *, level: int, top: bool = False) -> str:
    title = "The `ftkit` command" if top else f"`{path}`"
    lines = [f"{'#' * level} {title}", ""]
    usage = " ".join(parser.format_usage().removeprefix("usage: ").split())
    lines += ["```text", usage, "```", ""]
    description = parser.description or ""
    if description:
        lines += [_text(description), ""]
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                rows.append((f"`{choice.dest}`", _text(choice.help or "")))
            continue
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        rows.append((_flags(action), _help(action)))
    if rows:
        lines += ["| argument | meaning |", "|---|---|"]
        lines += [f"| {flags} | {meaning} |" for flags, meaning in rows]
        lines.append("")
    if parser.epilog:
        lines += [_text(parser.epilog), ""]
    return "\n".join(lines)


def _flags(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    takes_value = action.nargs != 0
    metavar = action.metavar or (action.dest.upper() if takes_value else None)
    if action.choices is not None and takes_value:
        metavar = "{" + ",".join(map(str, action.choices)) + "}"
    return ", ".join(
        f"`{flag} {metavar}`" if takes_value and metavar else f"`{flag}`" for flag in action.option_strings
    )


def _help(action: argparse.Action) -> str:
    text = (action.help or "").replace("%(default)s", str(action.default))
    if isinstance(action, argparse._AppendAction):
        text += " (repeatable)" if "repeatable" not in text else ""
    return _text(text)


def _text(text: str) -> str:
    """One Markdown-safe line: table cells cannot hold newlines or bare pipes."""
    return " ".join(text.split()).replace("|", "\\|")


if __name__ == "__main__":  # pragma: no cover
    print(markdown(), end="")
