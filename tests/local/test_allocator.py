"""The CUDA allocator's expandable segments while training (hardware.cuda_allocator), without a GPU."""

from __future__ import annotations

import types
from typing import Any

import pytest

from ftkit.backends.local.training import hardware


def fake_torch(calls: list[str]) -> Any:
    memory = types.SimpleNamespace(_set_allocator_settings=calls.append)
    return types.SimpleNamespace(cuda=types.SimpleNamespace(memory=memory))


@pytest.fixture(autouse=True)
def no_user_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)


def test_set_while_training_on_cuda_and_put_back_after() -> None:
    calls: list[str] = []
    with hardware.cuda_allocator(fake_torch(calls), "cuda", expandable=True) as applied:
        assert applied
        assert calls == ["expandable_segments:True"]
    assert calls == ["expandable_segments:True", "expandable_segments:False"]


def test_put_back_when_training_fails() -> None:
    calls: list[str] = []
    with pytest.raises(RuntimeError), hardware.cuda_allocator(fake_torch(calls), "cuda", expandable=True):
        raise RuntimeError("out of memory")
    assert calls[-1] == "expandable_segments:False"


@pytest.mark.parametrize(("device", "expandable"), [("cpu", True), ("cuda", False)])
def test_left_alone_on_a_cpu_or_when_switched_off(device: str, expandable: bool) -> None:
    calls: list[str] = []
    with hardware.cuda_allocator(fake_torch(calls), device, expandable=expandable) as applied:
        assert not applied
    assert calls == []


@pytest.mark.parametrize("variable", ["PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"])
def test_a_users_allocator_setting_wins(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, "max_split_size_mb:512")
    calls: list[str] = []
    with hardware.cuda_allocator(fake_torch(calls), "cuda", expandable=True) as applied:
        assert not applied
    assert calls == []


def test_a_torch_without_the_setting_trains_as_before() -> None:
    torch = types.SimpleNamespace(cuda=types.SimpleNamespace())
    with hardware.cuda_allocator(torch, "cuda", expandable=True) as applied:
        assert not applied
