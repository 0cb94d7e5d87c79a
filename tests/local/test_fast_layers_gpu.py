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
from ftkit.backends.local.training import attention_forward, budget, fused_lora, model_setup, train

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


@pytest.mark.parametrize("kind", ["phi3", "llama"])
def test_bf16_outputs_and_gradients_match_with_the_switches(kind: str) -> None:
    """bf16 on the GPU: logits and every gradient with both parts on are the stock layers', within bf16 rounding."""
    base = tiny_model(kind)
    model_setup._apply_liger(base)  # when installed, as training does (its RoPE patch is process-wide)
    wrapped = lora(base)
    inputs = _cuda(packed_inputs(wrapped))
    reference = wrapped.to("cuda", torch.bfloat16)
    fast = copy.deepcopy(reference)
    assert fused_lora.install(fast) > 0
    assert attention_forward.install(fast) == fast.get_base_model().config.num_hidden_layers
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
        config = tiny_train_config(tiny_model_dir, chat_files, tmp_path / str(on), max_steps=20, save_steps=10**6)
        result = train(config)
        assert result.first_eval_loss is not None
        assert result.final_eval_loss is not None
        losses[on] = (result.first_eval_loss, result.final_eval_loss)
    print(f"\neval loss off {losses[False]}, on {losses[True]}")
    assert losses[True][0] == pytest.approx(losses[False][0], rel=1e-3)  # before the first step: the same model
    assert losses[True][1] == pytest.approx(losses[False][1], rel=3e-2)
    assert losses[True][1] < losses[True][0]


def test_compiled_layers_train_as_the_eager_ones(
    tiny_model_dir: Path, chat_files: ChatFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`torch_compile: true` (each decoder layer compiled) trains the same model as the eager loop, with ftkit's
    fast layers and without them, and with the flash kernel given strided or copied key/value: the same first eval
    loss, and the final one within bf16 noise."""
    losses: dict[str, tuple[float, float]] = {}
    variants = {"eager": (False, True, True), "compiled, stock layers": (True, False, True)}
    variants |= {"compiled, fast layers": (True, True, True), "compiled, fast layers, k/v copied": (True, True, False)}
    for name, (compiled, fast, strided) in variants.items():
        monkeypatch.setitem(budget.TUNING, "fused_lora", fast)
        monkeypatch.setitem(budget.TUNING, "split_qkv", fast)
        monkeypatch.setattr(flash_varlen, "strided_ok", flash_varlen.strided_ok if strided else lambda x: False)
        out = tmp_path / name.replace(" ", "_").replace(",", "").replace("/", "")
        config = tiny_train_config(
            tiny_model_dir, chat_files, out, max_steps=20, save_steps=10**6, torch_compile=compiled
        )
        result = train(config)
        assert result.first_eval_loss is not None
        assert result.final_eval_loss is not None
        losses[name] = (result.first_eval_loss, result.final_eval_loss)
    print(f"\neval losses (first, final): {losses}")
    eager = losses.pop("eager")
    for name, (first, final) in losses.items():
        assert first == pytest.approx(eager[0], rel=1e-2), name
        assert final == pytest.approx(eager[1], rel=5e-2), name
