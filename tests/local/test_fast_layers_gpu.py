"""The fused LoRA layer and ftkit's attention-layer forward on CUDA in bf16: the same losses and gradients.

Skipped without CUDA. Needs torch, transformers and peft (liger-kernel used when installed, as the loop does):
``pytest tests/local/test_fast_layers_gpu.py -m gpu``. Here the flash kernel reads key and value as strided views
of the projections' outputs (``copy_kv=False``), which the CPU tests cannot reach. The CPU side (exact float32
equality on five model types, the fallbacks, the saved adapter) is ``test_fast_layers.py``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from ftkit import flash_varlen
from ftkit.backends.local import attention
from ftkit.backends.local.training import (
    add_norm,
    attention_forward,
    budget,
    fused_lora,
    gate_up_swiglu,
    model_setup,
    train,
)

from .conftest import ChatFiles, tiny_train_config
from .test_fast_layers import lora, packed_inputs, rel, run, tiny_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _cuda(inputs: dict[str, Any]) -> dict[str, Any]:
    """The inputs on the GPU, floating ones in bf16."""
    moved = {k: v.cuda() if torch.is_tensor(v) else v for k, v in inputs.items()}
    return {k: v.bfloat16() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in moved.items()}


@pytest.mark.parametrize(
    ("kind", "switch"),
    [
        ("phi3", None),
        ("phi3", "fused_rope"),
        ("phi3", "in_epilogue"),
        ("phi3", "gate_up_swiglu"),
        ("phi3", "fused_add_norm"),
        ("llama", None),
        ("llama", "fused_add_norm"),
    ],
    ids=[
        "phi3",
        "phi3-fused-rope",
        "phi3-in-epilogue",
        "phi3-gate-up-swiglu",
        "phi3-add-norm",
        "llama",
        "llama-add-norm",
    ],
)
def test_bf16_outputs_and_gradients_match_with_the_switches(kind: str, switch: str | None) -> None:
    """bf16 on the GPU: logits and every gradient with both parts on are the stock layers', within bf16 rounding."""
    base = tiny_model(kind)
    model_setup._apply_liger(base)  # when installed, as training does (its RoPE patch is process-wide)
    wrapped = lora(base)
    inputs = _cuda(packed_inputs(wrapped))
    reference = wrapped.to("cuda", torch.bfloat16)
    fast = copy.deepcopy(reference)
    assert fused_lora.install(fast, in_epilogue=switch == "in_epilogue") > 0
    if switch == "gate_up_swiglu":
        assert gate_up_swiglu.install(fast) == fast.get_base_model().config.num_hidden_layers
    if switch == "fused_add_norm":
        if add_norm.kernel() is None:
            pytest.skip("needs liger-kernel with its fused add + RMSNorm")
        assert add_norm.install(fast) == fast.get_base_model().config.num_hidden_layers
    assert attention_forward.install(fast, switch == "fused_rope") == fast.get_base_model().config.num_hidden_layers
    calls = {"n": 0}
    varlen = attention.varlen_attention

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if not kwargs.get("copy_kv", True):  # the strided value view reaches the kernel as it is, not copied
            assert flash_varlen.strided_ok(args[2])
        return varlen(*args, **kwargs)

    expected = run(reference, inputs)
    attention.varlen_attention = spy
    try:
        got = run(fast, inputs)
    finally:
        attention.varlen_attention = varlen
    assert calls["n"] == fast.get_base_model().config.num_hidden_layers
    errors = {name: rel(got[1][name], expected[1][name]) for name in expected[1]}
    worst = max(errors, key=errors.__getitem__)
    print(f"\n{kind}: logits {rel(got[0], expected[0]):.2e}, worst gradient {worst} {errors[worst]:.2e}")
    assert rel(got[0], expected[0]) < 1e-2
    assert errors[worst] < 3e-2


def test_training_with_and_without_the_switches_gives_the_same_losses(
    tiny_model_dir: Path, chat_files: ChatFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop on the GPU (bf16, varlen, liger when installed): eval losses with both parts on and off agree."""
    losses = {}
    for on in (False, True):
        monkeypatch.setitem(budget.TUNING, "fused_lora", on)
        monkeypatch.setitem(budget.TUNING, "split_qkv", on)
        monkeypatch.setitem(budget.TUNING, "split_rope", on)
        monkeypatch.setitem(budget.TUNING, "lora_in_epilogue", on)
        monkeypatch.setitem(budget.TUNING, "gate_up_swiglu", on)
        monkeypatch.setitem(budget.TUNING, "sync_free_loss", on)
        monkeypatch.setitem(budget.TUNING, "fused_add_norm", on)
        config = tiny_train_config(tiny_model_dir, chat_files, tmp_path / str(on), max_steps=20, save_steps=10**6)
        result = train(config)
        assert result.first_eval_loss is not None
        assert result.final_eval_loss is not None
        losses[on] = (result.first_eval_loss, result.final_eval_loss)
    print(f"\neval loss off {losses[False]}, on {losses[True]}")
    assert losses[True][0] == pytest.approx(losses[False][0], rel=1e-3)  # before the first step: the same model
    assert losses[True][1] == pytest.approx(losses[False][1], rel=3e-2)
    assert losses[True][1] < losses[True][0]


def _eval_losses(
    tiny_model_dir: Path,
    chat_files: ChatFiles,
    out: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    compiled: bool,
    strided: bool = True,
) -> tuple[float, float]:
    """The first and final eval losses of 20 steps on the GPU (both fast layers switched on)."""
    monkeypatch.setitem(budget.TUNING, "fused_lora", True)
    monkeypatch.setitem(budget.TUNING, "split_qkv", True)
    monkeypatch.setattr(flash_varlen, "strided_ok", flash_varlen.strided_ok if strided else lambda x: False)
    config = tiny_train_config(tiny_model_dir, chat_files, out, max_steps=20, save_steps=10**6, torch_compile=compiled)
    result = train(config)
    assert result.first_eval_loss is not None
    assert result.final_eval_loss is not None
    return result.first_eval_loss, result.final_eval_loss


def test_a_compiled_run_trains_as_the_eager_one(
    tiny_model_dir: Path, chat_files: ChatFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`torch_compile: true` as a run builds it (each decoder layer compiled, without ftkit's fast layers: see
    model_setup.build_model) trains the eager loop's model: the same first eval loss, the final one within bf16
    noise."""
    eager = _eval_losses(tiny_model_dir, chat_files, tmp_path / "eager", monkeypatch, compiled=False)
    compiled = _eval_losses(tiny_model_dir, chat_files, tmp_path / "compiled", monkeypatch, compiled=True)
    print(f"\neval losses (first, final): eager {eager}, compiled {compiled}")
    assert compiled[0] == pytest.approx(eager[0], rel=1e-2)
    assert compiled[1] == pytest.approx(eager[1], rel=5e-2)


@pytest.mark.xfail(
    reason="compiled together with ftkit's fast layers, an H100 run trained nothing (docs/benchmarks.md); an XPASS "
    "here says the guard in model_setup.build_model can go",
    strict=False,
)
@pytest.mark.parametrize("strided", [True, False], ids=["kv-strided", "kv-copied"])
def test_compiled_fast_layers_train_as_the_eager_ones(
    tiny_model_dir: Path, chat_files: ChatFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strided: bool
) -> None:
    """The diagnosis the guard waits for: compiled layers *with* the fused LoRA and attention forwards (the guard
    bypassed), with key/value handed to the flash kernel strided or copied, against the eager loop."""
    eager = _eval_losses(tiny_model_dir, chat_files, tmp_path / "eager", monkeypatch, compiled=False)
    monkeypatch.setattr(model_setup, "compiles_layers", lambda _config, _device: False)  # install them anyway
    got = _eval_losses(tiny_model_dir, chat_files, tmp_path / "compiled", monkeypatch, compiled=True, strided=strided)
    print(f"\neval losses (first, final): eager {eager}, compiled with the fast layers {got}")
    assert got[0] == pytest.approx(eager[0], rel=1e-2)
    assert got[1] == pytest.approx(eager[1], rel=5e-2)
