"""The training loop's CUDA path: bf16 weights and adapters (float32 masters), varlen attention, loss, resume.

Skipped without CUDA. Needs torch, transformers and peft only (no mlflow): run them with
``pytest tests/local/test_gpu.py -m gpu``. About half a minute on one H100.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import torch

from ftkit.backends.local.data import Example, encode_conversation, pack
from ftkit.backends.local.tiny import make_tiny_model, read_jsonl_texts, synthetic_conversations
from ftkit.backends.local.training import TrainConfig, budget, checkpoints, forward, model_setup, train

from .conftest import ChatFiles, tiny_train_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@attrs.define
class Seen:
    """What the training loop's model looked like and computed in, read by hooks (not by the code under test)."""

    param_devices: set[str] = attrs.Factory(set)
    trainable_dtypes: set[torch.dtype] = attrs.Factory(set)
    frozen_dtypes: set[torch.dtype] = attrs.Factory(set)
    # (autocast enabled on cuda, autocast dtype, dtype of a base linear layer's output), per forward pass
    forwards: list[tuple[bool, torch.dtype, torch.dtype]] = attrs.Factory(list)
    optimizer_state_devices: set[str] = attrs.Factory(set)


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> Seen:
    """Wrap the loop's model building and checkpoint loading to record devices, dtypes and autocast state."""
    record = Seen()
    build, load = model_setup.build_model, checkpoints.load_checkpoint

    def spy_build(config: TrainConfig, device: str, dtype: Any) -> Any:
        model = build(config, device, dtype)
        record.param_devices |= {p.device.type for p in model.parameters()}
        record.trainable_dtypes |= {p.dtype for p in model.parameters() if p.requires_grad}
        record.frozen_dtypes |= {p.dtype for p in model.parameters() if not p.requires_grad}
        # The first decoder layer's attention input projection (the frozen base layer under LoRA).
        linear = next(
            m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lora_" not in n and "qkv" in n
        )

        def hook(_module: Any, _args: Any, output: torch.Tensor) -> None:
            record.forwards.append((torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"), output.dtype))

        linear.register_forward_hook(hook)
        return model

    def spy_load(torch_: Any, ckpt: Path, named: Any, opt: Any, sched: Any) -> int:
        step = load(torch_, ckpt, named, opt, sched)
        record.optimizer_state_devices |= {
            v.device.type for state in opt.state.values() for v in state.values() if torch.is_tensor(v) and v.ndim
        }
        return step

    monkeypatch.setattr(model_setup, "build_model", spy_build)
    monkeypatch.setattr(checkpoints, "load_checkpoint", spy_load)
    return record


@pytest.fixture(scope="module")
def wide_model_dir(tmp_path_factory: pytest.TempPathFactory, chat_files: ChatFiles) -> Path:
    """A wider Phi-3 (head size 64, as real models have) than the session's tiny one (head size 16)."""
    texts = read_jsonl_texts([chat_files.train, chat_files.test])
    return make_tiny_model(
        tmp_path_factory.mktemp("wide") / "wide-phi3",
        texts=texts,
        hidden_size=256,
        num_heads=4,
        num_layers=4,
        intermediate_size=1024,
    )


def _config(model_dir: Path, chat_files: ChatFiles, out: Path, **kw: Any) -> TrainConfig:
    return tiny_train_config(model_dir, chat_files, out, **kw)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


class TestCudaTraining:
    def test_lora_trains_on_cuda_in_bf16(
        self, tiny_model_dir: Path, chat_files: ChatFiles, tmp_path: Path, seen: Seen
    ) -> None:
        """device/precision auto: CUDA, bf16 base and adapters computing in bf16 without autocast; loss falls."""
        from transformers import AutoModelForCausalLM

        torch.cuda.reset_peak_memory_stats()
        result = train(_config(tiny_model_dir, chat_files, tmp_path / "out", num_train_epochs=2))
        print(
            f"\nLoRA on {torch.cuda.get_device_name()}: eval loss {result.first_eval_loss:.4f} -> "
            f"{result.final_eval_loss:.4f} in {result.global_step} steps, {result.runtime_s:.1f}s, "
            f"peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
        )
        assert result.global_step == result.total_steps == 76
        assert seen.param_devices == {"cuda"}
        assert seen.trainable_dtypes == {torch.bfloat16}  # the optimizer steps float32 masters of them
        assert seen.frozen_dtypes == {torch.bfloat16}
        assert seen.forwards
        assert {(enabled, out) for enabled, _, out in seen.forwards} == {(False, torch.bfloat16)}
        assert result.first_eval_loss is not None
        assert result.final_eval_loss is not None
        assert result.final_eval_loss < result.first_eval_loss - 0.3
        assert result.model_dir is not None
        merged = AutoModelForCausalLM.from_pretrained(result.model_dir)
        assert all(bool(torch.isfinite(p).all()) for p in merged.parameters())

    def test_full_finetune_keeps_float32_master_weights(
        self, tiny_model_dir: Path, chat_files: ChatFiles, tmp_path: Path, seen: Seen
    ) -> None:
        """Without LoRA, the model computes in bf16 and AdamW steps float32 masters; eval loss falls."""
        cfg = _config(tiny_model_dir, chat_files, tmp_path / "out", apply_lora=False, learning_rate=1e-3)
        result = train(cfg)
        print(f"\nfull fine-tuning: eval loss {result.first_eval_loss:.4f} -> {result.final_eval_loss:.4f}")
        assert seen.param_devices == {"cuda"}
        assert seen.trainable_dtypes == {torch.bfloat16}
        assert not seen.frozen_dtypes
        assert {(enabled, out) for enabled, _, out in seen.forwards} == {(False, torch.bfloat16)}
        assert result.first_eval_loss is not None
        assert result.final_eval_loss is not None
        assert result.final_eval_loss < result.first_eval_loss - 0.3

    def test_precision_32_computes_in_float32(
        self, tiny_model_dir: Path, chat_files: ChatFiles, tmp_path: Path, seen: Seen
    ) -> None:
        """precision 32 on CUDA: float32 weights, no autocast."""
        cfg = _config(
            tiny_model_dir, chat_files, tmp_path / "out", precision="32", max_steps=3, evaluation_strategy="disable"
        )
        assert train(cfg).global_step == 3
        assert seen.param_devices == {"cuda"}
        assert seen.frozen_dtypes == seen.trainable_dtypes == {torch.float32}
        assert {(enabled, out) for enabled, _, out in seen.forwards} == {(False, torch.float32)}

    def test_stop_and_resume_reaches_the_same_end(
        self, tiny_model_dir: Path, chat_files: ChatFiles, tmp_path: Path, seen: Seen
    ) -> None:
        """Stopped at step 10 and resumed on the GPU: same final step, adapters and eval loss as one run."""
        from safetensors.torch import load_file

        cfg = _config(
            tiny_model_dir,
            chat_files,
            tmp_path / "a",
            device="cuda",
            max_steps=20,
            save_steps=5,
            save_total_limit=2,
            merge_lora_weights=False,  # compare the adapters, not merged weights
        )
        whole = train(attrs.evolve(cfg, output_dir=str(tmp_path / "b")))
        first = train(cfg, stop_after_steps=10)
        assert first.stopped
        rng = torch.load(Path(cfg.output_dir) / "checkpoints" / "checkpoint-10" / "rng.pt", weights_only=False)
        assert "cuda" in rng
        second = train(cfg)
        assert second.resumed_from == 10
        assert second.global_step == whole.global_step == 20
        assert seen.optimizer_state_devices == {"cuda"}  # loaded with map_location=cpu, moved to the parameters
        assert second.model_dir is not None
        assert whole.model_dir is not None
        a = load_file(second.model_dir / "adapter_model.safetensors")
        b = load_file(whole.model_dir / "adapter_model.safetensors")
        assert a.keys() == b.keys()
        worst = max(_rel(a[k], b[k]) for k in a)
        print(f"\nresume: worst relative difference of adapter weights {worst:.2e}")
        # Not bit-exact: CUDA attention backward kernels accumulate in a nondeterministic order.
        assert worst < 1e-2
        assert second.final_eval_loss is not None
        assert whole.final_eval_loss is not None
        assert abs(second.final_eval_loss - whole.final_eval_loss) < 1e-2


class TestCudaPacking:
    @pytest.mark.parametrize("which", ["tiny", "wide"])
    def test_packed_row_matches_separate_runs(self, which: str, tiny_model_dir: Path, wide_model_dir: Path) -> None:
        """bf16 SDPA on CUDA: a packed row's logits are each example's alone, within bf16 rounding.

        A row without restarting positions (attention across examples) is far off, so the tolerance cannot hide
        a leak.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_dir = tiny_model_dir if which == "tiny" else wide_model_dir
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        rows = synthetic_conversations(6, seed=3)
        encoded = [encode_conversation(tokenizer, r["messages"], 256) for r in rows]
        examples: list[Example] = [e for e in encoded if e is not None]
        batch = pack(examples)
        ids = torch.tensor(batch.input_ids, device="cuda")
        pos = torch.tensor(batch.position_ids, device="cuda")

        def logits(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
            model = model.to("cuda").eval()  # type: ignore[arg-type]
            with torch.no_grad():
                packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0]
                leaky = model(input_ids=ids, use_cache=False).logits[0]
                alone = torch.cat(
                    [
                        model(input_ids=torch.tensor([e.input_ids], device="cuda"), use_cache=False).logits[0]
                        for e in examples
                    ]
                )
            return packed, leaky, alone

        packed, leaky, alone = logits(torch.bfloat16)
        _, _, reference = logits(torch.float32)
        assert packed.dtype == torch.bfloat16
        assert bool(torch.isfinite(packed).all())
        errors = {"packed": _rel(packed, alone), "vs_fp32": _rel(packed, reference), "leaky": _rel(leaky, alone)}
        print(f"\n{which}: {len(examples)} examples, {batch.num_tokens} tokens, relative errors {errors}")
        assert errors["packed"] < 2e-2
        assert errors["vs_fp32"] < 5e-2
        assert errors["leaky"] > 0.1


class TestCudaFastPath:
    def test_varlen_kernel_is_present(self) -> None:
        """This torch has the variable-length flash attention the fast path relies on."""
        from ftkit.backends.local.attention import varlen_kernel

        assert varlen_kernel() is not None

    def test_varlen_packed_row_matches_separate_runs(self, wide_model_dir: Path) -> None:
        """bf16 varlen attention on CUDA: a packed row's logits are each example's alone (SDPA), within bf16."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ftkit.backends.local import attention
        from ftkit.backends.local.data import EncodedSet, pack_arrays

        tokenizer = AutoTokenizer.from_pretrained(wide_model_dir)
        rows = synthetic_conversations(6, seed=3)
        examples = [e for e in (encode_conversation(tokenizer, r["messages"], 256) for r in rows) if e is not None]
        batch = pack_arrays(EncodedSet.from_examples(examples), range(len(examples)))
        attention.register()
        fast = AutoModelForCausalLM.from_pretrained(
            wide_model_dir, dtype=torch.bfloat16, attn_implementation="ftkit_varlen"
        ).to("cuda")
        ref = AutoModelForCausalLM.from_pretrained(wide_model_dir, dtype=torch.bfloat16, attn_implementation="sdpa")
        ref = ref.to("cuda")
        cu = torch.from_numpy(batch.cu_seqlens).cuda()
        with torch.no_grad():
            packed = fast(
                input_ids=torch.from_numpy(batch.input_ids).cuda()[None],
                position_ids=torch.from_numpy(batch.position_ids).cuda()[None],
                cu_seq_lens_q=cu,
                cu_seq_lens_k=cu,
                max_length_q=batch.max_seqlen,
                max_length_k=batch.max_seqlen,
            ).logits[0]
            alone = torch.cat([ref(input_ids=torch.tensor([e.input_ids], device="cuda")).logits[0] for e in examples])
        err = _rel(packed, alone)
        print(f"\nvarlen packed vs alone: relative error {err:.2e}")
        assert err < 2e-2

    def test_fast_loss_equals_stock_loss_in_bf16(self, wide_model_dir: Path) -> None:
        """The loop's loss (varlen, label positions, fused or chunked head) is the stock HF loss, within bf16."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ftkit.backends.local import attention
        from ftkit.backends.local.data import IGNORE_INDEX, EncodedSet, pack_arrays

        tokenizer = AutoTokenizer.from_pretrained(wide_model_dir)
        rows = synthetic_conversations(5, seed=8)
        examples = [e for e in (encode_conversation(tokenizer, r["messages"], 256) for r in rows) if e is not None]
        attention.register()
        ref = AutoModelForCausalLM.from_pretrained(wide_model_dir, dtype=torch.bfloat16, attn_implementation="sdpa")
        ref = ref.to("cuda")
        with torch.no_grad():
            stock = 0.0
            for e in examples:
                labels = torch.tensor([e.labels], device="cuda")
                n = int((labels[0, 1:] != IGNORE_INDEX).sum())
                stock += float(ref(input_ids=torch.tensor([e.input_ids], device="cuda"), labels=labels).loss) * n
        fast = AutoModelForCausalLM.from_pretrained(
            wide_model_dir, dtype=torch.bfloat16, attn_implementation="ftkit_varlen"
        ).to("cuda")
        batch = pack_arrays(EncodedSet.from_examples(examples), range(len(examples)))
        for fused in (False, True):
            plan = budget.Plan(16384, False, fused, True, False)
            with torch.no_grad():
                ours = float(forward.forward_loss(torch, fast, batch, "cuda", plan))
            print(f"\nstock {stock:.4f} vs ftkit {ours:.4f} (fused={fused})")
            assert ours == pytest.approx(stock, rel=1e-2)
