"""The sync-free label loss (training.label_loss) against torch's cross-entropy, in value and gradient.

On CUDA the kernel runs compiled in bf16 (skipped without a GPU). Without one, where Triton is installed, the same
checks run in float32 under Triton's interpreter in a child process (``TRITON_INTERPRET`` must be set before Triton
decorates the kernel); CI's CPU-only torch has no Triton and skips them. The loop's wiring is tested on the CPU with
torch's computation standing in for the kernel.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from ftkit.backends.local.training import budget, forward, label_loss  # noqa: E402

from .conftest import kernel_device  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.mark.parametrize(
    ("rows", "width", "vocab"),
    [(5, 8, 96), (70, 16, 4096 + 77), (9, 32, 32064)],
    ids=["one-block", "chunks-and-partial-block", "phi3-vocabulary"],
)
def test_the_loss_and_its_gradient_are_torchs(rows: int, width: int, vocab: int) -> None:
    device = kernel_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # the interpreter computes through numpy
    gen = torch.Generator().manual_seed(0)
    weight = (torch.randn(vocab, width, generator=gen) / width**0.5).to(device, dtype)
    targets = torch.randint(0, vocab, (rows,), generator=gen).to(device)
    source = (torch.randn(rows, width, generator=gen) * 4).to(device, dtype)
    assert label_loss.usable(device)  # the on-device check passes where the kernel is right
    results = []
    for function in (label_loss.cross_entropy, label_loss.reference):
        hidden = source.clone().requires_grad_(True)
        loss = function(hidden * 1, weight, targets)
        (loss / rows).backward()  # an incoming gradient other than 1, as the loop's normalisation gives
        assert hidden.grad is not None
        results.append((loss.detach(), hidden.grad))
    (got, got_grad), (expected, expected_grad) = results
    assert got.dtype == torch.float32
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, expected, atol=tol * rows, rtol=tol)
    torch.testing.assert_close(got_grad, expected_grad, atol=tol, rtol=tol)


def test_evaluation_needs_no_gradient() -> None:
    device = kernel_device()
    weight = torch.randn(300, 8, device=device)
    hidden = torch.randn(6, 8, device=device)
    targets = torch.randint(0, 300, (6,), device=device)
    with torch.no_grad():
        got = label_loss.cross_entropy(hidden, weight, targets)
    torch.testing.assert_close(got, label_loss.reference(hidden, weight, targets), atol=1e-4, rtol=1e-5)


def test_a_micro_batch_without_labels_still_backpropagates() -> None:
    hidden = torch.randn(0, 8, requires_grad=True)
    loss = label_loss.cross_entropy(hidden, torch.randn(50, 8), torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert hidden.grad is not None


def test_it_applies_to_a_frozen_head_without_bias_only() -> None:
    head = torch.nn.Linear(8, 50, bias=False)
    assert not label_loss.applies(head.weight, head.bias)  # trained: its gradient is not computed here
    head.weight.requires_grad_(False)
    assert label_loss.applies(head.weight, head.bias)
    biased = torch.nn.Linear(8, 50).requires_grad_(False)
    assert not label_loss.applies(biased.weight, biased.bias)


class _Plan:
    fused_loss = False
    label_only_loss = True
    compile_layers = False

    def __init__(self, sync_free: bool) -> None:
        self.sync_free_loss = sync_free


@pytest.mark.parametrize(
    ("sync_free", "frozen", "used"), [(True, True, True), (False, True, False), (True, False, False)]
)
def test_the_loop_uses_it_where_the_plan_says_and_it_applies(
    monkeypatch: pytest.MonkeyPatch, sync_free: bool, frozen: bool, used: bool
) -> None:
    """forward_loss hands the hidden states at the label positions, the head's weight and the targets to the kernel
    (here torch's computation stands in for it), and the same value comes out either way."""
    from .test_fast_layers import tiny_model

    model = tiny_model("llama")
    model.get_output_embeddings().weight.requires_grad_(not frozen)
    calls: list[tuple[int, ...]] = []

    def stand_in(hidden: Any, weight: Any, targets: Any) -> Any:
        calls.append(tuple(hidden.shape))
        return label_loss.reference(hidden, weight, targets)

    monkeypatch.setattr(label_loss, "usable", lambda _device: True)
    monkeypatch.setattr(label_loss, "cross_entropy", stand_in)
    batch = _batch()
    got = forward.forward_loss(torch, model, batch, "cpu", _Plan(sync_free))  # type: ignore[arg-type]
    expected = forward.forward_loss(torch, model, batch, "cpu", _Plan(False))  # type: ignore[arg-type]
    torch.testing.assert_close(got, expected)
    assert calls == ([(len(batch.targets), model.config.hidden_size)] if used else [])


def _batch() -> Any:
    """One packed row of two examples with labels in their second halves, as the loop packs it."""
    import numpy as np

    from ftkit.backends.local.data.token_sets import EncodedSet, pack_arrays

    rng = np.random.default_rng(0)
    lengths = (9, 13)
    tokens = rng.integers(3, 90, size=sum(lengths)).astype(np.int32)
    assistant = np.concatenate([np.array([0] * (n // 2) + [1] * (n - n // 2), dtype=np.uint8) for n in lengths])
    offsets = np.array([0, lengths[0], sum(lengths)], dtype=np.int64)
    return pack_arrays(EncodedSet(tokens, assistant, offsets), [0, 1])


def test_the_plan_asks_for_it_on_cuda_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from .test_fast_layers import tiny_model

    monkeypatch.setitem(budget.TUNING, "sync_free_loss", True)
    config = type("Config", (), {"max_tokens_per_micro_batch": 0, "gradient_checkpointing": False})()
    config.torch_compile = False  # type: ignore[attr-defined]
    plan = budget.make_plan(torch, config, tiny_model("llama"), "cpu", 64)  # type: ignore[arg-type]
    assert plan.sync_free_loss is False


@pytest.mark.skipif(INTERPRETED, reason="runs the interpreter itself")
@pytest.mark.skipif(torch.cuda.is_available(), reason="the kernel runs compiled on this machine's GPU")
def test_under_the_triton_interpreter(under_triton_interpreter: Callable[[str], str]) -> None:
    assert "passed" in under_triton_interpreter(__file__)
