"""QLoRA without a GPU: the setting, its errors, the memory planner for 4-bit weights, and the merge check.

The GPU side (4-bit training, resume, the merged model's loss) is ``test_qlora_gpu.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import attrs
import pytest

from ftkit import JobFile
from ftkit.cli import main
from ftkit.exceptions import JobFileError, MissingDependencyError, ValidationError

from .conftest import ChatFiles, tiny_train_config

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from ftkit.backends.local import qlora  # noqa: E402 - after the skips
from ftkit.backends.local.data import encode_file  # noqa: E402
from ftkit.backends.local.training import TrainConfig, budget, finish, model_setup, train  # noqa: E402
from ftkit.backends.local.training.forward import evaluate, forward_loss  # noqa: E402
from ftkit.backends.local.training.ranks import Ranks  # noqa: E402

JOB = """\
name: q
backend: local
model: {{name: tiny, path: {model}}}
data: {{train_file: {train}, test_file: {test}}}
finetune: {{max_seq_length: 256{finetune}}}
local: {{device: {device}, quantize: 4bit}}
"""


def _job(tmp_path: Path, model: Path, files: ChatFiles, *, device: str = "cuda", finetune: str = "") -> Path:
    path = tmp_path / "job.yaml"
    text = JOB.format(model=model, train=files.train, test=files.test, device=device, finetune=finetune)
    path.write_text(text, encoding="utf-8")
    return path


class TestSetting:
    def test_the_job_file_takes_4bit_and_names_the_choices_otherwise(self) -> None:
        job = JobFile.from_yaml("name: x\nmodel: {name: m}\nlocal: {quantize: 4bit}\n")
        assert job.local.quantize == "4bit"
        with pytest.raises(JobFileError) as info:
            JobFile.from_yaml("name: x\nmodel: {name: m}\nlocal: {quantize: 3bit}\n")
        text = info.value.render()
        assert ":3: local.quantize" in text
        assert "4bit" in text

    def test_train_config_checks_the_value(self, tmp_path: Path) -> None:
        with pytest.raises(ValidationError, match="quantize.*unknown value '8-bit'.*none, 4bit"):
            TrainConfig(model_dir="m", train_file="t", output_dir=str(tmp_path), quantize="8-bit")
        config = TrainConfig(model_dir="m", train_file="t", output_dir=str(tmp_path), quantize="4bit")
        assert TrainConfig.from_json(config.to_json()).quantize == "4bit"

    def test_the_backend_maps_it_onto_the_train_config(self) -> None:
        from ftkit.backends.local.train_mapping import TRAIN_CONFIG_TABLE

        row = TRAIN_CONFIG_TABLE["local.quantize"]
        assert row is not None
        field, spell = row
        assert (field, spell("4bit")) == ("quantize", "4bit")


class TestErrors:
    def test_validate_names_a_cpu_device_and_full_finetuning(
        self, tmp_path: Path, tiny_model_dir: Path, chat_files: ChatFiles, capsys: pytest.CaptureFixture[str]
    ) -> None:
        job = _job(tmp_path, tiny_model_dir, chat_files, device="cpu", finetune=", apply_lora: false")
        assert main(["validate", str(job)]) == 1
        err = capsys.readouterr().err
        line = next(i for i, t in enumerate(job.read_text().splitlines(), 1) if t.startswith("local:"))
        assert f"{job}:{line}: local.quantize: 4bit weights need a CUDA GPU; device is cpu" in err, err
        assert "train only with LoRA (apply_lora is false)" in err, err

    def test_validate_names_the_missing_package(
        self,
        tmp_path: Path,
        tiny_model_dir: Path,
        chat_files: ChatFiles,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        import importlib.util

        real = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
        )
        assert main(["validate", str(_job(tmp_path, tiny_model_dir, chat_files))]) == 1
        assert "local.quantize: bitsandbytes is not installed; pip install 'ftkit[qlora]'" in capsys.readouterr().err

    def test_training_on_a_cpu_fails_before_loading_anything(
        self, tmp_path: Path, tiny_model_dir: Path, chat_files: ChatFiles, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def no_build(*_: Any) -> Any:
            raise AssertionError("the model was loaded")

        monkeypatch.setattr(model_setup, "build_model", no_build)
        cfg = tiny_train_config(tiny_model_dir, chat_files, tmp_path / "out", device="cpu", quantize="4bit")
        with pytest.raises(ValidationError) as info:
            train(cfg)
        assert "local.quantize: 4bit weights need a CUDA GPU (bitsandbytes' kernels); this run is on the cpu" in str(
            info.value
        )
        with pytest.raises(ValidationError, match="train only with LoRA"):
            train(attrs.evolve(cfg, apply_lora=False))

    def test_a_missing_bitsandbytes_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
        with pytest.raises(
            MissingDependencyError, match=r"bitsandbytes is not installed: pip install 'ftkit\[qlora\]'"
        ):
            qlora.bitsandbytes()


# Llama-3-8B's shape: 32 layers, hidden 4096, 32 query and 8 KV heads of 128, MLP 14336, vocabulary 128256.
LLAMA3_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "kv": 1024, "vocab": 128256}


class _Weights:
    """A stand-in for a loaded model: meta tensors of a Llama-3-8B's sizes, linear weights bf16 or NF4-packed."""

    def __init__(self, quantized: bool, lora_r: int = 8) -> None:
        h, i, n, kv, v = (
            LLAMA3_8B[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "kv", "vocab")
        )
        self.config = SimpleNamespace(hidden_size=h, intermediate_size=i, num_hidden_layers=n)
        self.shapes = [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)]  # q k v o gate up down
        meta = {"device": "meta"}
        embed = torch.empty(v, h, dtype=torch.bfloat16, **meta)
        self.params = [embed]
        for _ in range(n):
            for out, inp in self.shapes:
                if quantized:  # bitsandbytes' Params4bit: two weights a byte
                    self.params.append(torch.empty(out * inp // 2, 1, dtype=torch.uint8, **meta))
                else:
                    self.params.append(torch.empty(out, inp, dtype=torch.bfloat16, **meta))
                for shape in ((lora_r, inp), (out, lora_r)):
                    self.params.append(torch.empty(*shape, dtype=torch.bfloat16, **meta).requires_grad_(True))
            self.params += [torch.empty(h, dtype=torch.bfloat16, **meta) for _ in range(2)]
        self.head = SimpleNamespace(weight=torch.empty(v, h, dtype=torch.bfloat16, **meta))
        self.params.append(self.head.weight)
        self.embed = SimpleNamespace(weight=embed)

    def parameters(self) -> list[Any]:
        return self.params

    def get_output_embeddings(self) -> Any:
        return self.head

    def get_input_embeddings(self) -> Any:
        return self.embed


def _fake_linears(model: _Weights) -> dict[str, Any]:
    return {
        f"{n}": SimpleNamespace(weight=SimpleNamespace(quant_state=SimpleNamespace(shape=torch.Size(s))))
        for n, s in enumerate(model.shapes)
    }


class TestPlanner:
    def _plan(self, model: _Weights, monkeypatch: pytest.MonkeyPatch, gib: float) -> Any:
        monkeypatch.setattr(qlora, "quantized_linears", lambda m: _fake_linears(m) if m is model else {})
        monkeypatch.setitem(budget.TUNING, "liger", False)  # a chunked head: counted, not fused
        cfg = TrainConfig(model_dir="m", train_file="t", output_dir="o", gpu_memory_gib=gib, quantize="4bit")
        return budget.make_plan(torch, cfg, model, "cuda", 4096)

    def test_llama3_8b_in_4bit_fits_22_gib_at_4k_with_checkpointing(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The planner counts packed 4-bit weights and their de-quantization scratch: 4k tokens fit 22 GiB."""
        plan = self._plan(_Weights(quantized=True), monkeypatch, 22)
        assert plan.checkpointing
        assert plan.budget >= 4096

    def test_llama3_8b_in_bf16_does_not_fit_22_gib(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The same model in bf16 (15 GiB of weights) cannot take a 4k conversation in 22 GiB: a clear error."""
        with pytest.raises(ValidationError, match=r"a 4096-token conversation needs about .* GiB .* 22.0 GiB"):
            self._plan(_Weights(quantized=False), monkeypatch, 22)

    def test_the_scratch_is_two_dequantized_copies_of_the_largest_weight(self, monkeypatch: pytest.MonkeyPatch) -> None:
        assert qlora.scratch_bytes(torch.nn.Linear(64, 64), 2) == 0  # no 4-bit layers: nothing extra
        model = _Weights(quantized=True)
        monkeypatch.setattr(qlora, "quantized_linears", _fake_linears)
        assert qlora.scratch_bytes(model, 2) == 2 * 2 * 14336 * 4096


class TestMergeCheck:
    def test_the_tolerance(self) -> None:
        qlora.check_merge(2.0, 2.0 + 0.0099)
        qlora.check_merge(0.1, 0.1019)  # the absolute floor near zero
        with pytest.raises(ValidationError) as info:
            qlora.check_merge(2.0, 2.05, saved_adapter="/out/adapter")
        text = str(info.value)
        assert "merged model's held-out loss 2.0500 differs from the adapter model's 2.0000 by 0.0500" in text
        assert "over the tolerance 0.0100" in text
        assert "the adapter is saved in /out/adapter" in text
        assert "merge_lora_weights: false" in text
        with pytest.raises(ValidationError):
            qlora.check_merge(2.0, float("nan"))

    @pytest.fixture
    def trained(self, tmp_path: Path, tiny_model_dir: Path, chat_files: ChatFiles) -> Any:
        """A tiny LoRA model trained on the CPU, its held-out batches, and the adapter model's loss on them."""
        import peft
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        cfg = tiny_train_config(
            tiny_model_dir, chat_files, tmp_path / "out", device="cpu", quantize="4bit", evaluation_strategy="disable"
        )
        plain = attrs.evolve(cfg, quantize="none", merge_lora_weights=False)
        result = train(attrs.evolve(plain, output_dir=str(tmp_path / "lora")), progress="none")
        assert result.model_dir is not None
        model = model_setup.build_model(plain, "cpu", torch.float32)
        peft.set_peft_model_state_dict(model, load_file(result.model_dir / "adapter_model.safetensors"))
        tok = AutoTokenizer.from_pretrained(tiny_model_dir)
        encoded, _ = encode_file(tok, str(chat_files.test), 256)
        plan = budget.make_plan(torch, plain, model, "cpu", 256)
        check = finish.check_batches(encoded, plan)

        def forward(b: Any) -> Any:
            return forward_loss(torch, model, b, "cpu", plan)

        loss = evaluate(torch, model, forward, check, "cpu", Ranks())
        adapters = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
        return SimpleNamespace(cfg=cfg, model=model, tok=tok, check=check, plan=plan, loss=loss, adapters=adapters)

    def _merge(self, trained: Any, base: dict[str, Any], adapters: dict[str, Any], adapter_dir: Path) -> Path:
        weights = (base, adapters)
        adapter = (trained.loss, adapter_dir)
        return finish.save_merged(torch, trained.cfg, trained.tok, weights, trained.check, adapter, "cpu", trained.plan)

    def test_a_right_merge_is_saved(self, trained: Any, tmp_path: Path) -> None:
        """The merged model (base + adapters, peft's merge) computes the adapter model's loss; it is saved plain."""
        out = self._merge(trained, {}, trained.adapters, tmp_path / "out" / "adapter")
        assert out == tmp_path / "out" / "model"
        assert (out / "config.json").is_file()
        assert not (out / "adapter_config.json").exists()

    @pytest.mark.parametrize("mistake", ["adapter lost", "mlp adapters lost"])
    def test_a_wrong_merge_fails_and_saves_nothing(self, trained: Any, tmp_path: Path, mistake: str) -> None:
        """A merge that lost adapters (peft issues 1043, 2105): the check fails, names both losses, writes no model."""
        dropped = "lora_B" if mistake == "adapter lost" else "mlp"
        wrong = {k: torch.zeros_like(v) if dropped in k and "lora_B" in k else v for k, v in trained.adapters.items()}
        with pytest.raises(ValidationError, match="the merged model does not match the trained adapter") as info:
            self._merge(trained, {}, wrong, tmp_path / "a")
        assert f"adapter model's {trained.loss:.4f}" in str(info.value)
        assert not (tmp_path / "out" / "model").exists()
        assert not (tmp_path / "out" / ".model.tmp").exists()

    def test_the_base_weights_given_replace_the_loaded_ones(self, trained: Any, tmp_path: Path) -> None:
        """The de-quantized weights go into the base before the merge: a base far from the trained one fails."""
        names = [n for n, _ in trained.model.named_modules() if n.endswith(".base_layer")]
        assert names
        torch.manual_seed(1)
        other = {n: torch.randn_like(trained.model.get_submodule(n).weight) for n in names}
        with pytest.raises(ValidationError, match="does not match"):
            self._merge(trained, other, trained.adapters, tmp_path / "a")

    def test_merging_places_every_weight_or_says_which_not(self, trained: Any) -> None:
        with pytest.raises(ValueError, match="no place for 1 weights, e.g. nowhere.weight"):
            qlora.load_merged(trained.model, {}, {"nowhere.weight": torch.zeros(1)})
