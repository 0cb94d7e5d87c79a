"""Fixtures for the azureml backend tests: a FakeAzureML, a backend on it, and the example job with data."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import attrs
import pytest

from ftkit.backends.azureml import AzureMLBackend
from ftkit.jobfile import JobFile
from ftkit.testing import FakeAzureML, FakeClock

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "phi3-ultrachat.yaml"

CONVERSATION = [
    {"role": "user", "content": "How do I bake bread?"},
    {"role": "assistant", "content": "Mix flour, water, salt and yeast."},
    {"role": "user", "content": "How long should it rise?"},
]


@pytest.fixture
def fake() -> FakeAzureML:
    fake = FakeAzureML()
    fake.add_model("ft", "1")  # the model test_faults deploys; deploying a missing one fails as on Azure
    return fake


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend(fake: FakeAzureML, clock: FakeClock) -> AzureMLBackend:
    return AzureMLBackend(**fake.backend_settings())


@pytest.fixture
def data_files(tmp_path: Path) -> dict[str, Path]:
    rows = [{"prompt": "q", "prompt_id": str(i), "messages": CONVERSATION} for i in range(3)]
    out = {}
    for split in ("train", "test"):
        path = tmp_path / f"{split}_sft.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        out[split] = path
    return out


@pytest.fixture
def job(data_files: dict[str, Path]) -> JobFile:
    loaded = JobFile.load(EXAMPLE)
    data = attrs.evolve(loaded.data, train_file=str(data_files["train"]), test_file=str(data_files["test"]))
    return attrs.evolve(loaded, data=data)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Refuse (and remember) every name lookup that is not loopback: nothing may leave the process."""
    refused: list[str] = []
    real = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in ("127.0.0.1", "localhost", "::1"):
            refused.append(name)
            raise OSError(f"the notebook test is offline: refused to resolve {name}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    return refused
