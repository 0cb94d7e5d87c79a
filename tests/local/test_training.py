"""The training loop: assistant-only labels, packing without cross-example attention, learning, resume."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import attrs
import pytest

from ftkit.backends.local import attention, registry, tracking
from ftkit.backends.local.data import (
    IGNORE_INDEX,
    EncodedSet,
    encode_conversation,
    encode_file,
    pack,
    pack_arrays,
)
from ftkit.backends.local.tiny import synthetic_conversations
from ftkit.backends.local.training import TrainConfig, latest_checkpoint, train
from ftkit.exceptions import ValidationError

from .conftest import ChatFiles, tiny_train_config

pytest.importorskip("mlflow")


class _NoGenerationBlocks:
    """The tiny tokenizer with a template like Phi-3's own: no {% generation %} markers."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok
        self.chat_template = tok.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")

    def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:
        return self.tok.apply_chat_template(*args, chat_template=self.chat_template, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.tok(*args, **kwargs)


class Recorder:
    """A metrics sink that keeps what it is given."""

    def __init__(self) -> None:
        self.points: list[tuple[str, int, float]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.points.extend((k, step, v) for k, v in metrics.items())

    def flush(self) -> None:
        pass

    def series(self, key: str) -> list[tuple[int, float]]:
        return [(s, v) for k, s, v in self.points if k == key]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _config(tiny_model_dir: Path, chat_files: ChatFiles, out: Path, **kw: Any) -> TrainConfig:
    return tiny_train_config(tiny_model_dir, chat_files, out, **{"device": "cpu", **kw})


class TestLabelsAndPacking:
    def test_template_spans_match_generation_mask(self, tokenizer: Any) -> None:
        """Without {% generation %} blocks, prefix rendering finds the same assistant tokens."""
        plain = _NoGenerationBlocks(tokenizer)
        for row in synthetic_conversations(40, seed=11):
            assert encode_conversation(plain, row["messages"], 512) == encode_conversation(
                tokenizer, row["messages"], 512
            )

    def test_only_assistant_tokens_carry_loss(self, tokenizer: Any) -> None:
        """Labels decode to the assistant answers and their end tokens, nothing else."""
        messages = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 10 plus 12?"},
            {"role": "assistant", "content": "10 plus 12 is 22."},
            {"role": "user", "content": "And the capital of Peru?"},
            {"role": "assistant", "content": "The capital of Peru is Lima."},
        ]
        ex = encode_conversation(tokenizer, messages, 512)
        assert ex is not None
        learned = tokenizer.decode([t for t in ex.labels if t != IGNORE_INDEX])
        assert learned == "10 plus 12 is 22.<|end|>The capital of Peru is Lima.<|end|>"

    def test_truncation_past_every_answer_drops_the_row(self, tokenizer: Any) -> None:
        """A row whose assistant turn is cut off entirely yields no example (as the component drops it)."""
        messages = [{"role": "user", "content": "word " * 50}, {"role": "assistant", "content": "ok"}]
        assert encode_conversation(tokenizer, messages, 8) is None

    def test_pack_restarts_positions_and_masks_boundaries(self, tokenizer: Any, chat_files: ChatFiles) -> None:
        """One row, positions restart per example, each example's first token is never a target."""
        examples, report = encode_file(tokenizer, chat_files.train, 256)
        assert report.kept == 300
        batch = pack(examples[:3])
        lengths = [len(e.input_ids) for e in examples[:3]]
        assert len(batch.input_ids) == 1
        assert batch.num_tokens == sum(lengths)
        starts = [i for i, p in enumerate(batch.position_ids[0]) if p == 0]
        assert starts == [0, lengths[0], lengths[0] + lengths[1]]
        assert all(batch.labels[0][s] == IGNORE_INDEX for s in starts)

    def test_packed_row_attends_within_examples_only(self, tiny_model_dir: Path, tokenizer: Any) -> None:
        """Logits of a packed row equal those of each example run alone: no attention across examples."""
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
        rows = synthetic_conversations(3, seed=2)
        examples = [encode_conversation(tokenizer, r["messages"], 256) for r in rows]
        batch = pack([e for e in examples if e is not None])
        with torch.no_grad():
            packed = model(
                input_ids=torch.tensor(batch.input_ids),
                position_ids=torch.tensor(batch.position_ids),
                use_cache=False,
            ).logits[0]
            offset = 0
            for ex in examples:
                assert ex is not None
                alone = model(input_ids=torch.tensor([ex.input_ids]), use_cache=False).logits[0]
                torch.testing.assert_close(packed[offset : offset + len(ex.input_ids)], alone, atol=1e-4, rtol=1e-4)
                offset += len(ex.input_ids)

    def test_unusable_file_is_reported(self, tokenizer: Any, tmp_path: Path) -> None:
        """A file with no usable conversation is a ValidationError that counts what was wrong."""
        bad = tmp_path / "bad.jsonl"
        bad.write_text('not json\n{"messages": []}\n', encoding="utf-8")
        with pytest.raises(ValidationError, match="2 unreadable"):
            encode_file(tokenizer, bad, 128)


class TestTrain:
    def test_eval_loss_falls_and_model_is_saved(
        self, tiny_model_dir: Path, chat_files: ChatFiles, tmp_path: Path
    ) -> None:
        """Two epochs on 300 conversations bring eval loss below its starting value; the model dir loads."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        sink = Recorder()
        result = train(_config(tiny_model_dir, chat_files, tmp_path / "out", num_train_epochs=2), metrics=sink)
        assert result.global_step == result.total_steps == 76  # ceil(300 / 8) * 2
        assert result.first_eval_loss is not None
        assert result.final_eval_loss is not None
        assert result.final_eval_loss < result.first_eval_loss - 0.3
        assert [s for s, _ in sink.series("eval_loss")] == [0, 38, 76]
        assert {"loss", "learning_rate", "grad_norm", "tokens_per_second"} <= {k for k, _, _ in sink.points}
        assert result.model_dir is not None
        AutoModelForCausalLM.from_pretrained(result.model_dir)
        assert AutoTokenizer.from_pretrained(result.model_dir).chat_template

    def test_stop_and_resume_reaches_the_same_end(
        self, tiny_model_dir: Path, chat_files: ChatFiles, tmp_path: Path
    ) -> None:
        """Stopped at step 10 and restarted, a run ends at the same step with the same weights as one run."""
        from safetensors.torch import load_file

        cfg = _config(tiny_model_dir, chat_files, tmp_path / "a", max_steps=20, save_steps=5, save_total_limit=2)
        whole = train(attrs.evolve(cfg, output_dir=str(tmp_path / "b")))
        first = train(cfg, stop_after_steps=10)
        assert first.stopped
        assert first.model_dir is None
        assert latest_checkpoint(cfg.output_dir) == Path(cfg.output_dir) / "checkpoints" / "checkpoint-10"
        assert sorted(p.name for p in (Path(cfg.output_dir) / "checkpoints").iterdir()) == [
            "checkpoint-10",
            "checkpoint-5",
        ]
        second = train(cfg)
        assert second.resumed_from == 10
        assert second.global_step == whole.global_step == 20
        assert second.model_dir is not None
        assert whole.model_dir is not None
        a = load_file(second.model_dir / "model.safetensors")
        b = load_file(whole.model_dir / "model.safetensors")
        for key in a:
            assert (a[key] - b[key]).abs().max() < 1e-5, key
        assert json.loads((Path(cfg.output_dir) / "result.json").read_text())["global_step"] == 20

    def test_adapter_output_loads_with_transformers(
        self, tiny_model_dir: Path, chat_files: ChatFiles, tmp_path: Path
    ) -> None:
        """merge_lora_weights=false saves an adapter that loads on its base, before and after registration."""
        from transformers import AutoModelForCausalLM

        cfg = _config(
            tiny_model_dir,
            chat_files,
            tmp_path / "out",
            max_steps=3,
            merge_lora_weights=False,
            evaluation_strategy="disable",
            lora_target_modules=("qkv_proj", "o_proj"),
        )
        result = train(cfg)
        assert result.model_dir is not None
        assert (result.model_dir / "adapter_config.json").is_file()
        assert AutoModelForCausalLM.from_pretrained(result.model_dir).config.model_type == "phi3"

        store = tracking.MlflowStore.at(tmp_path / "home")
        run = tracking.RunLogger.start(store, "adapters", run_name="r")
        run.finish()
        registered = registry.register_trained_model(
            store, "tiny-adapter", run_id=run.run_id, model_dir=result.model_dir
        )
        assert registered.tags["ftkit.kind"] == "peft-adapter"
        assert registered.path is not None
        assert AutoModelForCausalLM.from_pretrained(registered.path).config.model_type == "phi3"

    def test_the_phases_before_the_first_step_are_told(
        self, tiny_model_dir: Path, chat_files: ChatFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Tokenising, loading the model and the step-0 evaluation each say so, in order, before any step line:
        to the sink's phase (a worker's job.json progress) and, with plain progress, on stderr (train.log)."""
        from ftkit.backends.local.training import MetricsSink

        heard: list[tuple[str, str]] = []

        class Sink(MetricsSink):
            def log_metrics(self, metrics: Any, step: int) -> None:
                heard.append(("metrics", ",".join(sorted(metrics))))

            def phase(self, message: str) -> None:
                heard.append(("phase", message))

        config = tiny_train_config(tiny_model_dir, chat_files, tmp_path / "o", max_steps=2, token_cache_dir="")
        train(config, metrics=Sink(), progress="plain")
        phases = [m for kind, m in heard if kind == "phase"]
        assert [p.split()[0] for p in phases] == [
            "tokenising",
            "tokenised",
            "loading",
            "loaded",
            "evaluating",
            "training",
        ]
        assert phases[1].startswith("tokenised 300 conversations to train on and ")
        assert "on cpu (float32" in phases[2]  # (and where the CPU has native bf16: the base products in bf16)
        assert phases[5].startswith("training 2 steps (step 0: eval loss ")
        assert heard.index(("phase", phases[4])) < heard.index(("metrics", "eval_loss"))
        err = capsys.readouterr().err
        assert [line for line in err.splitlines() if line in phases] == phases

    def test_bad_settings_are_named(self, tiny_model_dir: Path, chat_files: ChatFiles, tmp_path: Path) -> None:
        """Unknown schedulers and target modules are ValidationErrors listing valid choices."""
        with pytest.raises(ValidationError, match="choose one of: linear, cosine"):
            _config(tiny_model_dir, chat_files, tmp_path, lr_scheduler_type="warm")
        with pytest.raises(ValidationError, match="qkv_proj"):
            train(_config(tiny_model_dir, chat_files, tmp_path, lora_target_modules=("q_proj",), max_steps=1))


def _losses_by_precision(
    model: Path, chat_files: ChatFiles, tmp_path: Path, precisions: tuple[str, ...], **settings: Any
) -> tuple[dict[str, dict[int, float]], dict[str, Any]]:
    """Train 8 logged steps of the tiny model at each precision: the loss at each step, and each run's result."""
    from ftkit.backends.local.training import MetricsSink

    losses: dict[str, dict[int, float]] = {}
    runs: dict[str, Any] = {}
    for precision in precisions:
        seen: dict[int, float] = {}

        class Sink(MetricsSink):
            def log_metrics(self, metrics: Any, step: int, seen: dict[int, float] = seen) -> None:
                if "loss" in metrics:
                    seen[step] = metrics["loss"]

        config = tiny_train_config(
            model,
            chat_files,
            tmp_path / precision,
            precision=precision,
            max_steps=8,
            logging_steps=1,
            evaluation_strategy="disable",
            token_cache_dir="",
            **settings,
        )
        runs[precision] = train(config, metrics=Sink(), progress="none")
        losses[precision] = seen
    return losses, runs


class TestCpuPrecision:
    def test_native_bf16_is_read_from_the_cpu_flags(self, tmp_path: Path) -> None:
        from ftkit.backends.local.training import cpu_has_native_bf16

        def has(name: str, text: str) -> bool:
            (tmp_path / name).write_text(text)
            return cpu_has_native_bf16(str(tmp_path / name))  # (cached per file)

        assert not has("avx2", "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n\nprocessor\t: 1\n")
        assert has("zen4", "processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
        assert has("sapphire-rapids", "flags\t\t: fpu amx_tile amx_bf16\n")
        assert not cpu_has_native_bf16(str(tmp_path / "absent"))

    def test_cpu_bf16_only_when_asked_and_native(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """precision 16: a bf16 model on a CPU with native bf16, float32 on others; auto and 32: a float32 model,
        with the frozen base's products in bf16 by default (auto, LoRA) where the CPU has native bf16 only."""
        import torch

        from ftkit.backends.local.training import hardware

        for native in (True, False):
            monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda native=native: native)
            assert hardware.compute_dtype(torch, "cpu", "16") is (torch.bfloat16 if native else torch.float32)
            assert hardware.compute_dtype(torch, "cpu", "auto") is torch.float32
            assert hardware.compute_dtype(torch, "cpu", "32") is torch.float32
            assert hardware.bf16_base_matmuls("cpu", "auto", apply_lora=True) is native
            assert not hardware.bf16_base_matmuls("cpu", "32", apply_lora=True)  # the opt-out
            assert not hardware.bf16_base_matmuls("cpu", "16", apply_lora=True)  # a bf16 model already
            assert not hardware.bf16_base_matmuls("cpu", "auto", apply_lora=False)  # nothing frozen
            assert not hardware.bf16_base_matmuls("cuda", "auto", apply_lora=True)  # the GPU path is unchanged

    def test_bf16_base_products_change_only_the_base_matmuls(self, tiny_model_dir: Path) -> None:
        """enable(): the LoRA layers' frozen projections compute from bf16 copies (outputs within bf16 rounding
        of float32's, float32 activations and LoRA gradients, the state dict unchanged); disable() restores the
        float32 computation exactly."""
        import peft
        import torch
        from transformers import AutoModelForCausalLM

        from ftkit.backends.local.training import cpu_bf16

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
        model = peft.get_peft_model(model, lora)
        for name, p in model.named_parameters():
            if "lora_B" in name:  # non-zero B, so the adapters take part in the output
                torch.nn.init.normal_(p, std=0.02)
        ids = torch.randint(0, model.config.vocab_size, (1, 24))
        keys = set(model.state_dict())
        with torch.no_grad():
            want = model(input_ids=ids).logits
        changed = cpu_bf16.enable(torch, model)
        assert changed == len(cpu_bf16.base_linears(torch, model)) > 0
        assert set(model.state_dict()) == keys
        assert all(layer.weight.dtype == torch.float32 for layer in cpu_bf16.base_linears(torch, model))
        logits = model(input_ids=ids).logits
        assert logits.dtype == torch.float32
        assert not torch.equal(logits, want)  # the bf16 products are in use
        torch.testing.assert_close(logits, want, rtol=0.05, atol=0.05)
        logits.float().logsumexp(-1).sum().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert grads
        assert all(g is not None and g.dtype == torch.float32 and g.abs().sum() > 0 for g in grads)
        cpu_bf16.disable(torch, model)
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).logits, want)
        assert not any(cpu_bf16.BUFFER in dict(m.named_buffers()) for m in model.modules())

    def test_bf16_base_products_train_like_float32(
        self, tiny_model_dir: Path, chat_files: ChatFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The default on a CPU with native bf16 (the frozen base's products in bf16, all else float32) follows
        float32's losses within 1% over 8 steps at lr 1e-4, where a bf16 model's lagged (docs/benchmarks.md);
        precision 32 opts out (float32's losses exactly); the saved merged model is float32.

        bf16 products are exact on any CPU (emulated where not native), so this runs everywhere."""
        import safetensors.torch

        from ftkit.backends.local.training import hardware

        monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
        losses, runs = _losses_by_precision(
            tiny_model_dir, chat_files, tmp_path, ("32", "auto"), learning_rate=1e-4, warmup_steps=0
        )
        assert sorted(losses["auto"]) == sorted(losses["32"]) == list(range(1, 9))
        assert losses["auto"] != losses["32"]  # the bf16 products were in use
        worst = max(abs(losses["auto"][s] - losses["32"][s]) / losses["32"][s] for s in losses["32"])
        assert worst < 0.01, losses
        # How far the loss fell in 8 steps: the same within a tenth (a bf16 model's fell a quarter as far).
        fell = {k: v[1] - v[8] for k, v in losses.items()}
        assert fell["32"] > 0, fell
        assert abs(fell["auto"] - fell["32"]) < 0.1 * fell["32"], fell
        saved = safetensors.torch.load_file(runs["auto"].model_dir / "model.safetensors")
        assert {str(t.dtype) for t in saved.values()} == {"torch.float32"}
        assert not any(part in key for key in saved for part in ("ftkit_bf16", "lora_"))  # merged, no copies

    def test_bf16_training_follows_float32(self, tiny_model_dir: Path, chat_files: ChatFiles, tmp_path: Path) -> None:
        """On a CPU with native bf16, precision 16 (float32 masters) at a learning rate of 1e-3: the losses of 8
        steps follow float32's within 2% (at 1e-4 on SmolLM2 they lagged: see docs/benchmarks.md)."""
        from ftkit.backends.local.training import cpu_has_native_bf16

        if not cpu_has_native_bf16():
            pytest.skip("this CPU has no native bfloat16 (AVX512-BF16 or AMX)")
        losses, _ = _losses_by_precision(tiny_model_dir, chat_files, tmp_path, ("32", "16"), learning_rate=1e-3)
        assert sorted(losses["16"]) == sorted(losses["32"]) == list(range(1, 9))
        worst = max(abs(losses["16"][s] - losses["32"][s]) / losses["32"][s] for s in losses["32"])
        assert worst < 0.02, losses
        assert losses["16"][8] < losses["16"][1]  # and it learns


class TestCompactData:
    def test_encoded_set_is_compact_and_matches_per_row_encoding(self, tokenizer: Any, chat_files: ChatFiles) -> None:
        """encode_file stores at most 8 bytes a token and gives the same examples as encode_conversation."""
        data, _ = encode_file(tokenizer, chat_files.train, 256)
        rows = [json.loads(line)["messages"] for line in chat_files.train.read_text().splitlines()]
        assert list(data) == [encode_conversation(tokenizer, m, 256) for m in rows]
        assert data.nbytes / len(data.tokens) <= 8

    def test_pack_arrays_matches_pack(self, tokenizer: Any, chat_files: ChatFiles) -> None:
        """Packing from the arrays gives pack()'s tokens, positions and labels, and the boundaries."""
        data, _ = encode_file(tokenizer, chat_files.train, 256)
        chosen = [7, 3, 11]
        arrays = pack_arrays(data, chosen)
        batch = pack([data[i] for i in chosen])
        assert arrays.input_ids.tolist() == list(batch.input_ids[0])
        assert arrays.position_ids.tolist() == list(batch.position_ids[0])
        shifted = list(batch.labels[0][1:])
        assert arrays.loss_positions.tolist() == [t for t, x in enumerate(shifted) if x != IGNORE_INDEX]
        assert arrays.targets.tolist() == [x for x in shifted if x != IGNORE_INDEX]
        assert arrays.num_labels == batch.num_labels
        lengths = [len(data[i].input_ids) for i in chosen]
        assert arrays.cu_seqlens.tolist() == [0, lengths[0], lengths[0] + lengths[1], sum(lengths)]
        assert arrays.max_seqlen == max(lengths)

    def test_parallel_encoding_equals_serial(self, tokenizer: Any, tmp_path: Path) -> None:
        """A file large enough for worker processes encodes to the same arrays as one process does."""
        rows = synthetic_conversations(2600, seed=4)
        path = tmp_path / "big.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n", encoding="utf-8")
        serial, r1 = encode_file(tokenizer, path, 128, workers=1)
        parallel, r2 = encode_file(tokenizer, path, 128, workers=2)
        assert r1 == r2
        assert r1.unreadable == 1
        assert r1.rows == 2601
        for name in ("tokens", "assistant", "offsets"):
            assert (getattr(serial, name) == getattr(parallel, name)).all(), name

    def test_cache_is_reused_and_keyed(
        self, tokenizer: Any, chat_files: ChatFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A second encoding of the same file, tokenizer and length reads the cache; another length does not."""
        from ftkit.backends.local.data import token_sets as data_module

        first, report = encode_file(tokenizer, chat_files.train, 256, cache_dir=tmp_path)
        assert len(list(tmp_path.iterdir())) == 1

        def boom(*_: Any) -> None:
            raise AssertionError("tokenised again")

        monkeypatch.setattr(data_module, "encode_conversation", boom)
        again, report2 = encode_file(tokenizer, chat_files.train, 256, cache_dir=tmp_path)
        assert report2 == report
        assert (again.tokens == first.tokens).all()
        assert (again.offsets == first.offsets).all()
        with pytest.raises(AssertionError, match="tokenised again"):
            encode_file(tokenizer, chat_files.train, 200, cache_dir=tmp_path)


def _stock_and_ours(tiny_model_dir: Path, examples: list[Any]) -> tuple[Any, Any, Any, Any]:
    """Summed loss and adapter gradients of the stock HF + PEFT forward and of the loop's, on the same batch."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    from ftkit.backends.local.training import budget, forward

    def fresh(implementation: str) -> Any:
        torch.manual_seed(0)
        if implementation == "ftkit_varlen":
            attention.register()
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=implementation)
        lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
        model = peft.get_peft_model(base, lora)
        with torch.no_grad():  # non-zero B, so every adapter gets a gradient
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.02)
        return model

    stock = fresh("sdpa")
    total = torch.zeros(())
    for ex in examples:  # the stock path: one conversation a batch, HF's mean loss times its label count
        labels = torch.tensor([ex.labels])
        n = int((labels[0, 1:] != IGNORE_INDEX).sum())
        out = stock(input_ids=torch.tensor([ex.input_ids]), labels=labels)
        total = total + out.loss * n
    total.backward()
    stock_grads = {n: p.grad.clone() for n, p in stock.named_parameters() if p.requires_grad}

    ours = fresh("ftkit_varlen")
    plan = budget.Plan(16384, False, False, True, False)
    batch = pack_arrays(EncodedSet.from_examples(examples), range(len(examples)))
    loss = forward.forward_loss(torch, ours, batch, "cpu", plan)
    loss.backward()
    our_grads = {n: p.grad.clone() for n, p in ours.named_parameters() if p.requires_grad}
    return total.detach(), loss.detach(), stock_grads, our_grads


class TestFastPathEquivalence:
    def test_packed_label_only_loss_equals_stock_loss(self, tiny_model_dir: Path, tokenizer: Any) -> None:
        """Loss and gradients of a packed row (varlen attention, head at label positions only) equal the stock
        Trainer-style forward run on each conversation alone."""
        rows = synthetic_conversations(4, seed=9)
        examples = [e for e in (encode_conversation(tokenizer, r["messages"], 256) for r in rows) if e is not None]
        stock, ours, stock_grads, our_grads = _stock_and_ours(tiny_model_dir, examples)
        assert float(ours) == pytest.approx(float(stock), rel=1e-5)
        assert stock_grads.keys() == our_grads.keys()
        for name, grad in stock_grads.items():
            torch_close(our_grads[name], grad, name)

    def test_varlen_attention_isolates_packed_examples(self, tiny_model_dir: Path, tokenizer: Any) -> None:
        """Through the ftkit_varlen implementation, a packed row's logits are each example's alone."""
        import torch
        from transformers import AutoModelForCausalLM

        attention.register()
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="ftkit_varlen").eval()
        rows = synthetic_conversations(3, seed=2)
        examples = [e for e in (encode_conversation(tokenizer, r["messages"], 256) for r in rows) if e is not None]
        batch = pack_arrays(EncodedSet.from_examples(examples), range(len(examples)))
        bounds = tuple(int(x) for x in batch.cu_seqlens)
        with torch.no_grad():
            ids = torch.from_numpy(batch.input_ids)[None]
            pos = torch.from_numpy(batch.position_ids)[None]
            packed = model(input_ids=ids, position_ids=pos, ftkit_bounds=bounds).logits[0]
            leaky = model(input_ids=ids, position_ids=pos).logits[0]  # no boundaries: one causal sequence
            for (a, b), ex in zip(itertools.pairwise(bounds), examples, strict=True):
                alone = model(input_ids=torch.tensor([ex.input_ids])).logits[0]
                torch.testing.assert_close(packed[a:b], alone, atol=1e-4, rtol=1e-4)
            assert (leaky[bounds[1] :] - packed[bounds[1] :]).abs().max() > 1e-2

    def test_step_does_not_depend_on_the_token_budget(
        self, tiny_model_dir: Path, chat_files: ChatFiles, tmp_path: Path
    ) -> None:
        """Three steps with micro-batches of ~300 tokens end with the weights of one micro-batch a step."""
        from safetensors.torch import load_file

        common = {"max_steps": 3, "evaluation_strategy": "disable", "merge_lora_weights": False}
        small = train(_config(tiny_model_dir, chat_files, tmp_path / "s", max_tokens_per_micro_batch=300, **common))
        whole = train(_config(tiny_model_dir, chat_files, tmp_path / "w", **common))
        assert small.model_dir is not None
        assert whole.model_dir is not None
        a = load_file(small.model_dir / "adapter_model.safetensors")
        b = load_file(whole.model_dir / "adapter_model.safetensors")
        for key in a:
            assert (a[key] - b[key]).abs().max() < 1e-5, key


def torch_close(actual: Any, expected: Any, name: str) -> None:
    """Gradients agree to float32 rounding, relative to their size."""
    err = float((actual - expected).norm() / expected.norm().clamp_min(1e-12))
    assert err < 1e-4, (name, err)
