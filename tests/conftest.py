from __future__ import annotations

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
