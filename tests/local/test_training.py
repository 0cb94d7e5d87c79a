"""The training loop: assistant-only labels, packing without cross-example attention, learning, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest

from ftkit.backends.local import registry, tracking
from ftkit.backends.local.data import IGNORE_INDEX, encode_conversation, encode_file, pack
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

    def test_bad_settings_are_named(self, tiny_model_dir: Path, chat_files: ChatFiles, tmp_path: Path) -> None:
        """Unknown schedulers and target modules are ValidationErrors listing valid choices."""
        with pytest.raises(ValidationError, match="choose one of: linear, cosine"):
            _config(tiny_model_dir, chat_files, tmp_path, lr_scheduler_type="warm")
        with pytest.raises(ValidationError, match="qkv_proj"):
            train(_config(tiny_model_dir, chat_files, tmp_path, lora_target_modules=("q_proj",), max_steps=1))
