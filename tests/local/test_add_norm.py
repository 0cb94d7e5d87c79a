"""The fused attention-add + MLP-norm layer forward (:mod:`ftkit.backends.local.training.add_norm`) on the CPU.

liger-kernel's kernel is Triton code for CUDA (and CI's torch has no Triton): here the layer forward runs with
:func:`add_norm.reference` in the kernel's place and must compute the stock layer's outputs and gradients exactly
(float32); which layers it goes on is checked too. The kernel itself is compared in bf16 on a GPU in
``test_fast_layers_gpu.py``.
"""

from __future__ import annotations

import copy
import types
from typing import Any

import pytest

from ftkit.backends.local.training import add_norm

from .test_fast_layers import assert_same, lora, packed_inputs, run, tiny_model

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")


def _as_liger_patches(model: Any) -> None:
    """Make the layers' norms report liger-kernel's name, as its instance patching does (its forward stays)."""
    for layer in model.get_base_model().model.layers:
        norm = layer.post_attention_layernorm
        norm._get_name = types.MethodType(lambda self: "LigerRMSNorm", norm)


@pytest.mark.parametrize("kind", ["phi3", "llama", "mistral", "qwen2", "qwen3"])
def test_the_layer_forward_is_the_stock_one(kind: str) -> None:
    """With the reference add + norm, the installed forward gives the stock logits and every gradient exactly."""
    stock = lora(tiny_model(kind))
    inputs = packed_inputs(stock)
    fused = copy.deepcopy(stock)
    _as_liger_patches(fused)
    calls = []

    def counted(hidden: Any, residual: Any, norm: Any) -> tuple[Any, Any]:
        calls.append(norm)
        return add_norm.reference(hidden, residual, norm)

    layers = fused.get_base_model().config.num_hidden_layers
    assert add_norm.install(fused, counted) == layers
    assert add_norm.install(fused, counted) == 0  # installed once: its own forward is recognised
    assert_same(run(fused, inputs), run(stock, inputs))
    assert len(calls) == layers


def test_only_layers_with_liger_norms_and_no_residual_dropout_get_it() -> None:
    """Stock norms (liger did not patch them) or a Phi-3 residual dropout: that layer keeps its own forward."""
    plain = lora(tiny_model("llama"))
    assert add_norm.install(plain, add_norm.reference) == 0
    dropping = lora(tiny_model("phi3"))
    _as_liger_patches(dropping)
    first, second = dropping.get_base_model().model.layers
    first.resid_attn_dropout.p = 0.1
    assert add_norm.install(dropping, add_norm.reference) == 1
    assert "forward" not in vars(first)  # the class's forward, which applies the dropout
    assert getattr(second.forward.__func__, "ftkit_add_norm", False)


def test_the_kernel_is_absent_without_liger(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without liger-kernel (CI, a CPU install) :func:`add_norm.kernel` is None and nothing is installed."""
    import builtins

    real_import = builtins.__import__

    def no_liger(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("liger_kernel"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_liger)
    assert add_norm.kernel() is None
    model = lora(tiny_model("llama"))
    _as_liger_patches(model)
    assert add_norm.install(model) == 0
