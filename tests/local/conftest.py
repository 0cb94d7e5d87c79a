"""Shared fixtures of the local backend's tests: one tiny model per session (it takes seconds to build)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("mlflow")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Phi-3 model whose tokenizer was trained on the synthetic conversations."""
    from ftkit.backends.local.tiny import chat_texts, make_tiny_model, synthetic_conversations

    return make_tiny_model(
        tmp_path_factory.mktemp("tiny") / "tiny-phi3", texts=chat_texts(synthetic_conversations(300, seed=7))
    )
