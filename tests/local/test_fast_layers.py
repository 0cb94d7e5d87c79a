"""The fused LoRA layer and ftkit's attention-layer forward compute what peft and transformers compute.

Tiny random float32 models built in the test (Phi-3 with its fused qkv, Llama, Mistral with a sliding window,
Qwen2 with q/k/v biases, Qwen3 with per-head q/k norms; all with grouped-query attention) run one packed row of
two examples with and without each switch: outputs, every trainable gradient and the input gradient agree, the
fast paths are the ones taken, and every call they must not serve falls back to the stock code. The GPU side
(bf16, the flash kernel reading strided key/value) is ``test_fast_layers_gpu.py``.
"""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import ChatFiles, tiny_train_config

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from ftkit.backends.local import attention  # noqa: E402 - after the skips
from ftkit.backends.local.training import attention_forward, budget, fused_lora, model_setup, qkv_rope  # noqa: E402

TOKENS = (0, 11, 30)  # one packed row: examples of 11 and 19 tokens


def tiny_model(kind: str, *, seed: int = 0) -> Any:
    """A tiny random float32 causal LM of ``kind`` on the varlen attention, 4 query and 2 KV heads."""
    import transformers

    common: dict[str, Any] = {
        "vocab_size": 96,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    configs = {
        "phi3": lambda: transformers.Phi3Config(**common, sliding_window=None),
        "llama": lambda: transformers.LlamaConfig(**common),
        "mistral": lambda: transformers.MistralConfig(**common, sliding_window=6),  # shorter than an example
        "qwen2": lambda: transformers.Qwen2Config(**common, use_sliding_window=False),
        "qwen3": lambda: transformers.Qwen3Config(**common, head_dim=16),
    }
    attention.register()
    config = configs[kind]()
    config._attn_implementation = attention.IMPLEMENTATION
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attention.IMPLEMENTATION)
    finally:
        torch.random.set_rng_state(state)
    return model


def lora(model: Any, *, dropout: float = 0.0, seed: int = 1) -> Any:
    """``model`` under peft LoRA on every linear layer, with B initialised away from zero (so A gets gradients)."""
    wrapped = peft.get_peft_model(
        model, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear")
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return wrapped


def packed_inputs(model: Any) -> dict[str, Any]:
    """One packed row of two examples, as the training loop passes it, with input embeddings that take a gradient."""
    generator = torch.Generator().manual_seed(7)
    ids = torch.randint(3, 96, (1, TOKENS[-1]), generator=generator)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
    pos = torch.cat([torch.arange(b - a) for a, b in itertools.pairwise(TOKENS)])[None]
    cu = torch.tensor(TOKENS, dtype=torch.int32)
    longest = max(b - a for a, b in itertools.pairwise(TOKENS))
    return {
        "inputs_embeds": embeds,
        "position_ids": pos,
        "use_cache": False,
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": longest,
        "max_length_k": longest,
        "ftkit_bounds": TOKENS,
    }


def run(model: Any, inputs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Logits and the gradients of every trainable parameter and of the input embeddings, in training mode."""
    model.train()
    model.zero_grad(set_to_none=True)
    embeds = inputs["inputs_embeds"].detach().requires_grad_()
    logits = model(**{**inputs, "inputs_embeds": embeds}).logits
    (logits.float().square().mean() + logits[..., :5].sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    grads["<inputs_embeds>"] = embeds.grad.clone()
    return logits.detach(), grads


def rel(a: Any, b: Any) -> float:
    """The relative difference of two tensors, in norm (float32 rounding gives ~1e-7)."""
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def assert_same(a: tuple[Any, dict[str, Any]], b: tuple[Any, dict[str, Any]]) -> None:
    """Outputs and every gradient equal to float32 rounding (a wrong term would be off by far more)."""
    assert rel(a[0], b[0]) < 1e-6
    assert a[1].keys() == b[1].keys()
    worst = max(a[1], key=lambda name: rel(a[1][name], b[1][name]))
    assert rel(a[1][worst], b[1][worst]) < 2e-6, worst


class Count:
    """Counts calls of the fused LoRA function and of the stock attention classes' forwards."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, model: Any, *, in_epilogue: bool = False) -> None:
        self.fused = 0
        self.stock_attention = 0
        function = fused_lora.lora_linear_function(in_epilogue)
        apply = function.apply

        def counted_apply(*args: Any) -> Any:
            self.fused += 1
            return apply(*args)

        monkeypatch.setattr(function, "apply", counted_apply)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        cls = type(base.model.layers[0].self_attn)
        stock = cls.forward

        def counted_forward(*args: Any, **kwargs: Any) -> Any:
            self.stock_attention += 1
            return stock(*args, **kwargs)

        monkeypatch.setattr(cls, "forward", counted_forward)


KINDS = ["phi3", "llama", "mistral", "qwen2", "qwen3"]


class TestSameResults:
    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize("parts", ["fused_lora", "in_epilogue", "split_qkv", "both"])
    def test_outputs_and_gradients_match_the_stock_layers(
        self, kind: str, parts: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        reference = lora(tiny_model(kind))
        fast = copy.deepcopy(reference)
        count = Count(monkeypatch, fast, in_epilogue=parts == "in_epilogue")
        layers = fast.get_base_model().config.num_hidden_layers
        if parts in ("fused_lora", "in_epilogue", "both"):
            assert fused_lora.install(fast, in_epilogue=parts == "in_epilogue") > 0
        if parts in ("split_qkv", "both"):
            assert attention_forward.install(fast) == layers
        inputs = packed_inputs(reference)
        expected = run(reference, inputs)
        count.fused = count.stock_attention = 0
        assert_same(run(fast, inputs), expected)
        linears = sum(type(m) is peft.tuners.lora.layer.Linear for m in fast.modules())
        assert count.fused == (linears if parts != "split_qkv" else 0)
        assert count.stock_attention == (layers if parts in ("fused_lora", "in_epilogue") else 0)

    def test_the_fused_split_rope_path_matches(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With ``fused_rope`` the layer hands the fused qkv output, each token's cos/sin row and the head counts to
        the kernel qkv_rope.kernel resolved at install, and attends over what it returns (here its torch reference stands in for the Triton
        kernel, which needs CUDA; the kernel itself is tested against the reference in test_qkv_rope.py)."""
        reference = lora(tiny_model("phi3"))
        fast = copy.deepcopy(reference)
        calls = []

        def split_rope(*args: Any) -> Any:
            calls.append(args[0].shape)
            return qkv_rope.reference(*args)

        monkeypatch.setattr(qkv_rope, "kernel", lambda _device: split_rope)
        layers = fast.get_base_model().config.num_hidden_layers
        assert attention_forward.install(fast, fused_rope=True) == layers

        def no_lookup(*args: Any) -> Any:
            raise AssertionError("resolved at install: a compiled layer would trace a lookup in its forward")

        monkeypatch.setattr(qkv_rope, "kernel", no_lookup)
        monkeypatch.setattr(qkv_rope, "usable", no_lookup)
        inputs = packed_inputs(reference)
        assert_same(run(fast, inputs), run(reference, inputs))
        assert len(calls) == layers
        config = fast.get_base_model().config
        head_dim = config.hidden_size // config.num_attention_heads
        width = (config.num_attention_heads + 2 * config.num_key_value_heads) * head_dim
        assert calls[0] == (inputs["inputs_embeds"].shape[1], width)  # the projection's output, tokens x width

    def test_full_fine_tuning_attention_forward_matches(self) -> None:
        """Without LoRA (every weight trained), ftkit's attention forward gives transformers' gradients."""
        reference = tiny_model("phi3")
        fast = copy.deepcopy(reference)
        attention_forward.install(fast)
        inputs = packed_inputs(reference)
        assert_same(run(fast, inputs), run(reference, inputs))

    def test_compiled_layers_trace_both_forwards_whole(self) -> None:
        """torch.compile per decoder layer (``torch_compile: true``): one graph, no breaks, the same gradients."""
        from torch._dynamo.utils import counters

        reference = lora(tiny_model("phi3"))
        fast = copy.deepcopy(reference)
        fused_lora.install(fast)
        attention_forward.install(fast)
        inputs = packed_inputs(reference)
        del inputs["ftkit_bounds"]  # the loop passes no tuple to compiled layers (a recompile per batch)
        torch._dynamo.reset()
        counters.clear()
        for layer in fast.get_base_model().model.layers:
            layer.compile(backend="aot_eager")  # dynamo's tracing without a C compiler
        assert_same(run(fast, inputs), run(reference, inputs))
        assert not counters["graph_break"]
        torch._dynamo.reset()

    @pytest.mark.parametrize("in_epilogue", [False, True], ids=["adapter-after", "in-epilogue"])
    @pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
    def test_the_fused_function_has_the_exact_gradients(self, in_epilogue: bool, with_bias: bool) -> None:
        """gradcheck in float64, the frozen weight and the bias trained too (every branch of the backward)."""
        generator = torch.Generator().manual_seed(3)

        def leaf(*shape: int) -> Any:
            return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_()

        args = (leaf(5, 7), leaf(6, 7), leaf(6) if with_bias else None, leaf(3, 7), leaf(6, 3), 1.7)
        function = fused_lora.lora_linear_function(in_epilogue)
        assert torch.autograd.gradcheck(function.apply, args)
        x, w, bias, a, b, s = args
        expected = x @ w.T + (x @ a.T @ b.T) * s + (bias if bias is not None else 0.0)
        torch.testing.assert_close(function.apply(*args), expected)


class TestFallbacks:
    def test_lora_dropout_runs_peft(self, monkeypatch: pytest.MonkeyPatch) -> None:
        reference = lora(tiny_model("llama"), dropout=0.1)
        fast = copy.deepcopy(reference)
        count = Count(monkeypatch, fast)
        assert fused_lora.install(fast) > 0
        inputs = packed_inputs(reference)
        torch.manual_seed(5)
        expected = run(reference, inputs)
        torch.manual_seed(5)
        assert_same(run(fast, inputs), expected)
        assert count.fused == 0

    def test_disabled_adapters_and_evaluation_run_the_stock_code(self, monkeypatch: pytest.MonkeyPatch) -> None:
        reference = lora(tiny_model("phi3"))
        fast = copy.deepcopy(reference)
        count = Count(monkeypatch, fast)
        fused_lora.install(fast)
        attention_forward.install(fast)
        inputs = packed_inputs(reference)
        with reference.disable_adapter():
            expected = run(reference, inputs)
        reference.eval()
        with torch.no_grad():
            expected_eval = reference(**inputs).logits
        count.fused = count.stock_attention = 0
        with fast.disable_adapter():
            got = run(fast, inputs)
        assert_same(got, expected)
        assert count.fused == 0
        assert count.stock_attention == 0  # a training forward: ftkit's attention forward, adapters or not
        fast.eval()
        with torch.no_grad():
            assert rel(fast(**inputs).logits, expected_eval) < 1e-6
        assert count.fused == 0
        assert count.stock_attention == 2  # evaluation: transformers' forward in each layer

    def test_a_plain_forward_without_boundaries_runs_transformers(self, monkeypatch: pytest.MonkeyPatch) -> None:
        reference = tiny_model("llama")
        fast = copy.deepcopy(reference)
        count = Count(monkeypatch, fast)
        attention_forward.install(fast)
        ids = torch.randint(3, 96, (1, 9))  # no boundaries: one causal sequence, as in generation
        fast.train()
        reference.train()
        expected = reference(input_ids=ids).logits
        count.stock_attention = 0
        assert rel(fast(input_ids=ids).logits, expected) < 1e-6
        assert count.stock_attention == 2

    def test_merged_adapters_and_hooks_run_peft(self, monkeypatch: pytest.MonkeyPatch) -> None:
        fast = lora(tiny_model("llama"))
        count = Count(monkeypatch, fast)
        fused_lora.install(fast)
        inputs = packed_inputs(fast)
        first = next(m for m in fast.modules() if type(m) is peft.tuners.lora.layer.Linear)
        seen: list[Any] = []
        first.base_layer.register_forward_hook(lambda *_: seen.append(1))
        run(fast, inputs)
        assert seen == [1]  # the hooked layer ran peft's forward, the base layer's hook saw it
        linears = sum(type(m) is peft.tuners.lora.layer.Linear for m in fast.modules())
        assert count.fused == linears - 1
        count.fused = 0
        fast.merge_adapter()
        with torch.no_grad():
            fast.train()
            fast(**inputs)
        assert count.fused == 0

    def test_unsupported_models_and_layers_are_left_alone(self) -> None:
        import transformers

        config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)
        assert attention_forward.install(transformers.GPT2LMHeadModel(config)) == 0
        model = lora(tiny_model("llama"))
        assert fused_lora.install(model) > 0
        assert fused_lora.install(model) == 0  # installed once


class TestAdapterFormat:
    def test_saved_adapter_and_merge_are_unchanged(self, tmp_path: Path) -> None:
        from safetensors.torch import load_file

        reference = lora(tiny_model("phi3"))
        fast = copy.deepcopy(reference)
        fused_lora.install(fast)
        attention_forward.install(fast)
        inputs = packed_inputs(reference)
        for model in (reference, fast):  # one identical SGD step each
            run(model, inputs)
            with torch.no_grad():
                for p in model.parameters():
                    if p.grad is not None:
                        p -= 0.1 * p.grad
        reference.save_pretrained(tmp_path / "ref")
        fast.save_pretrained(tmp_path / "fast")
        assert sorted(p.name for p in (tmp_path / "ref").iterdir()) == sorted(
            p.name for p in (tmp_path / "fast").iterdir()
        )
        a = load_file(tmp_path / "ref" / "adapter_model.safetensors")
        b = load_file(tmp_path / "fast" / "adapter_model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)
        configs = [json.loads((tmp_path / d / "adapter_config.json").read_text()) for d in ("ref", "fast")]
        for config in configs:  # a set in peft, written in its iteration order
            config["target_modules"] = sorted(config["target_modules"])
        assert configs[0] == configs[1]
        merged_ref, merged_fast = reference.merge_and_unload(), fast.merge_and_unload()
        for (name, x), (_, y) in zip(merged_ref.state_dict().items(), merged_fast.state_dict().items(), strict=True):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


class TestBuildModel:
    def test_build_model_installs_what_the_switches_say(
        self, tiny_model_dir: Path, chat_files: ChatFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """On a CPU: ftkit's attention forward by default, never the fused LoRA layer (CUDA only)."""
        config = tiny_train_config(tiny_model_dir, chat_files, tmp_path / "out")

        def replaced(model: Any) -> tuple[int, int]:
            attn = sum("forward" in vars(m) for m in model.modules() if type(m).__name__ == "Phi3Attention")
            fused = sum("forward" in vars(m) for m in model.modules() if type(m) is peft.tuners.lora.layer.Linear)
            return attn, fused

        model = model_setup.build_model(config, "cpu", torch.float32)
        assert replaced(model) == (model.config.num_hidden_layers, 0)
        monkeypatch.setitem(budget.TUNING, "split_qkv", False)
        assert replaced(model_setup.build_model(config, "cpu", torch.float32)) == (0, 0)
        monkeypatch.setitem(budget.TUNING, "split_qkv", True)
        monkeypatch.setitem(budget.TUNING, "attention", "sdpa")
        assert replaced(model_setup.build_model(config, "cpu", torch.float32)) == (0, 0)

    def test_compiled_layers_go_without_the_fast_layers(
        self, tiny_model_dir: Path, chat_files: ChatFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A run that compiles its layers (``torch_compile``, CUDA only) keeps transformers' attention and peft's
        LoRA forward: compiled with ftkit's two forwards, an H100 run trained nothing (docs/benchmarks.md)."""
        config = tiny_train_config(tiny_model_dir, chat_files, tmp_path / "out", torch_compile=True)
        assert budget.compiles_layers(config, "cuda")
        assert not budget.compiles_layers(config, "cpu")
        assert not budget.compiles_layers(tiny_train_config(tiny_model_dir, chat_files, tmp_path / "o2"), "cuda")
        monkeypatch.setattr(model_setup, "compiles_layers", lambda _config, _device: True)
        model = model_setup.build_model(config, "cpu", torch.float32)
        assert not any("forward" in vars(m) for m in model.modules() if type(m).__name__ == "Phi3Attention")
