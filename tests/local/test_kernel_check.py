"""The one-time device check of ftkit's Triton kernels (training.kernel_check), for each module that has one.

A Triton that cannot build a kernel, or builds it wrong, costs speed (the code the kernel replaces runs), not the
run; a first forward under ``no_grad`` or inference mode must not turn a kernel off for the process. The kernels
themselves are tested in their own files, against plain torch, on a GPU or under Triton's interpreter.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from ftkit.backends.local.training import gate_up_swiglu, kernel_check, label_loss, qkv_rope  # noqa: E402

# module, the kernel its check compares, what runs instead (as the warning says)
MODULES = {
    "qkv_rope": (qkv_rope, "split_rope", "the model's own rotation"),
    "gate_up_swiglu": (gate_up_swiglu, "swiglu", "the MLP's own forward"),
    "label_loss": (label_loss, "cross_entropy", "liger-kernel's fused loss"),
}


def check_with(monkeypatch: pytest.MonkeyPatch, module: Any, attr: str, kernel: Any, mode: Any) -> bool:
    """``module._self_check("cpu")``, fresh, with ``module.<attr>`` replaced by ``kernel``, inside ``mode()``."""
    monkeypatch.setattr(module, attr, kernel)
    module._self_check.cache_clear()
    try:
        with mode():
            return bool(module._self_check("cpu"))
    finally:
        module._self_check.cache_clear()


def raises(*args: Any) -> Any:
    raise RuntimeError("no kernel image")


def wrong(reference: Any) -> Any:
    """A kernel one percent off the reference in its first output."""

    def kernel(*args: Any) -> Any:
        out = reference(*args)
        return (out[0] * 1.01, *out[1:]) if isinstance(out, tuple) else out * 1.01

    return kernel


@pytest.mark.parametrize("name", list(MODULES))
@pytest.mark.parametrize(
    ("kernel", "expected", "logged"),
    [
        ("reference", True, None),
        ("raises", False, "failed on cpu (no kernel image)"),
        ("wrong", False, "disagrees with torch on cpu"),
    ],
)
def test_a_kernel_is_used_only_where_it_checks_out(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    name: str,
    kernel: str,
    expected: bool,
    logged: str | None,
) -> None:
    module, attr, fallback = MODULES[name]
    chosen = {"reference": module.reference, "raises": raises, "wrong": wrong(module.reference)}[kernel]
    with caplog.at_level("WARNING"):
        assert check_with(monkeypatch, module, attr, chosen, contextlib.nullcontext) is expected
    if logged is None:
        assert not caplog.records
    else:
        assert logged in caplog.text
        assert f"using {fallback}" in caplog.text


@pytest.mark.parametrize("name", list(MODULES))
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_the_check_needs_no_gradient_mode_of_its_caller(monkeypatch: pytest.MonkeyPatch, name: str, mode: str) -> None:
    """A first training forward under no_grad or inference mode must not turn the kernel off for the process."""
    module, attr, _ = MODULES[name]
    assert check_with(monkeypatch, module, attr, module.reference, getattr(torch, mode))


def test_not_available_on_a_cpu_without_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not kernel_check.available(torch.device("cpu"))
    assert not any(module.usable(torch.device("cpu")) for module, _, _ in MODULES.values())
