"""Shared fixtures of the local backend's tests: one tiny model and one chat set per session."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
# mlflow: the modules that need it skip without it; the GPU tests need only torch, transformers and peft.


# liger-kernel patches transformers' modeling modules for the whole process (RMSNorm classes, the rotary function,
# the MLP), not only the model it is applied to: after a GPU test that trained with it, a CPU test building a fresh
# model in the same process would get Triton kernels on CPU tensors. GPU tests put the modules back afterwards.
_LIGER_PATCHES = tuple(f"transformers.models.{m}.modeling_{m}" for m in ("phi3", "llama", "mistral", "qwen2", "qwen3"))


@pytest.fixture(autouse=True)
def _undo_liger_patches(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("gpu") is None:
        yield
        return
    saved = {}
    for name in _LIGER_PATCHES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        saved[module] = dict(vars(module))
    yield
    for module, names in saved.items():
        vars(module).update(names)


def kernel_device() -> Any:
    """Where a Triton kernel test runs: CUDA, or the CPU under Triton's interpreter (``TRITON_INTERPRET=1``, with
    Triton installed); skips otherwise."""
    import torch

    from ftkit.backends.local.training import kernel_check

    if torch.cuda.is_available():
        return torch.device("cuda")
    if kernel_check.available(torch.device("cpu")):
        return torch.device("cpu")
    pytest.skip("the kernel needs CUDA (or Triton's interpreter)")


if TYPE_CHECKING:
    from ftkit.backends.local.training import TrainConfig

# Training settings the tiny-model tests share: enough for eval loss to fall within seconds on a CPU.
TINY_TRAINING: dict[str, Any] = {
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 32,
    "learning_rate": 3e-3,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 3,
    "lora_r": 16,
    "lora_alpha": 32,
    "max_seq_length": 256,
    "logging_steps": 5,
}


def tiny_train_config(model_dir: Path, chat_files: ChatFiles, out: Path, **overrides: Any) -> TrainConfig:
    """A TrainConfig of the tiny model on the generated chats: one epoch, evaluated each epoch."""
    from ftkit.backends.local.training import TrainConfig

    base = {"num_train_epochs": 1, "evaluation_strategy": "epoch", **TINY_TRAINING}
    return TrainConfig(
        model_dir=str(model_dir),
        train_file=str(chat_files.train),
        eval_file=str(chat_files.test),
        output_dir=str(out),
        **{**base, **overrides},
    )


@attrs.frozen
class ChatFiles:
    """Generated train/test JSONL files in the component's format."""

    train: Path
    test: Path


@pytest.fixture(scope="session")
def chat_files(tmp_path_factory: pytest.TempPathFactory) -> ChatFiles:
    """300 training and 60 test conversations (synthetic, learnable)."""
    from ftkit.backends.local.tiny import synthetic_conversations

    rows = synthetic_conversations(360, seed=5)
    root = tmp_path_factory.mktemp("data")
    train, test = root / "train_sft.jsonl", root / "test_sft.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:300]), encoding="utf-8")
    test.write_text("".join(json.dumps(r) + "\n" for r in rows[300:]), encoding="utf-8")
    return ChatFiles(train, test)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, chat_files: ChatFiles) -> Path:
    """A tiny Phi-3 model whose tokenizer was trained on the chat set's texts."""
    from ftkit.backends.local.tiny import make_tiny_model, read_jsonl_texts

    texts = read_jsonl_texts([chat_files.train, chat_files.test])
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-phi3", texts=texts)
