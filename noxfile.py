"""Developer tasks: ``nox -s tests``, ``nox -s lint``, ``nox -s typing``, ``nox -s docs``, ``nox -s demo``.

Sessions install the CPU build of torch first (``FTKIT_TORCH`` overrides the pin, e.g. ``FTKIT_TORCH=torch``
for a CUDA build), then ftkit with its ``local`` extra. ``nox -R`` reuses the environments.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typing", "tests"]
nox.options.default_venv_backend = "venv"

PYTHON = "3.11"
TORCH = os.environ.get("FTKIT_TORCH", "torch==2.13.0")


def _install(session: nox.Session, *groups: str, extras: str = "local") -> None:
    session.install("-U", "pip>=25.1")  # --group (PEP 735) needs pip 25.1
    if "local" in extras:
        session.install(TORCH)
    args = ["-e", f".[{extras}]"] if extras else ["-e", "."]
    for group in groups:
        args += ["--group", group]
    session.install(*args)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite (GPU and live-Azure tests skip themselves when there is no GPU/credential)."""
    _install(session, "tests")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "src", "tests", "benchmarks", "scripts", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "scripts", "noxfile.py")


@nox.session(python=PYTHON)
def typing(session: nox.Session) -> None:
    """mypy --strict on the package."""
    _install(session, "typing")
    session.run("mypy", "--strict", "src/ftkit")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation with Sphinx, warnings as errors."""
    _install(session, "docs", extras="")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The README's main command: the whole flow on the local backend, on this machine."""
    _install(session)
    session.run("ftkit", "demo", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Run the benchmarks in benchmarks/ (by hand; results go in docs/benchmarks.md)."""
    _install(session, "tests")
    scripts = session.posargs or sorted(str(p) for p in Path("benchmarks").glob("bench_*.py"))
    for script in scripts:
        session.run("python", script)
