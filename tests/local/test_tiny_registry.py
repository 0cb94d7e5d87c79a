"""The tiny model factory and the local registry's contract: entries resolve to loadable HF directories."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ftkit.backends.local import registry
from ftkit.backends.local.tiny import CHAT_TEMPLATE, make_tiny_model, synthetic_conversations
from ftkit.exceptions import NotFoundError, ValidationError

pytest.importorskip("mlflow")


def _digest(d: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.iterdir())}


class TestTinyModel:
    def test_loads_with_auto_classes_and_masks_assistant_tokens(self, tiny_model_dir: Path) -> None:
        """The directory loads with AutoModel/AutoTokenizer and the template marks only assistant spans."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        tok = AutoTokenizer.from_pretrained(tiny_model_dir)
        assert model.config.model_type == "phi3"
        assert tok.chat_template == CHAT_TEMPLATE
        messages = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 10 plus 12?"},
            {"role": "assistant", "content": "10 plus 12 is 22."},
        ]
        out = tok.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
        learned = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
        assert tok.decode(learned) == "10 plus 12 is 22.<|end|>"
        assert tok.decode(out["input_ids"]).startswith("<|system|>\nBe brief.<|end|>\n<|user|>\n")

    def test_same_seed_same_files(self, tmp_path: Path) -> None:
        """Two builds with the same texts and seed write byte-identical files; another seed differs."""
        texts = ["hello world", "the capital of France is Paris"] * 5
        a = _digest(make_tiny_model(tmp_path / "a", texts=texts, seed=3))
        b = _digest(make_tiny_model(tmp_path / "b", texts=texts, seed=3))
        c = _digest(make_tiny_model(tmp_path / "c", texts=texts, seed=4))
        assert a == b
        assert a["model.safetensors"] != c["model.safetensors"]
        assert a["tokenizer.json"] == c["tokenizer.json"]

    def test_bad_sizes_are_reported(self, tmp_path: Path) -> None:
        """Heads that do not divide the hidden size and a tiny vocabulary are both named."""
        with pytest.raises(ValidationError) as info:
            make_tiny_model(tmp_path, hidden_size=60, num_heads=7, vocab_size=10)
        assert {p.where for p in info.value.problems} == {"num_heads", "vocab_size"}

    def test_synthetic_conversations_are_component_rows(self) -> None:
        """Rows have messages alternating user/assistant after an optional system message; seeds repeat."""
        rows = synthetic_conversations(20, seed=1)
        assert rows == synthetic_conversations(20, seed=1)
        for row in rows:
            roles = [m["role"] for m in row["messages"] if m["role"] != "system"]
            assert roles[::2] == ["user"] * (len(roles) // 2)
            assert roles[1::2] == ["assistant"] * (len(roles) // 2)


class TestRegistry:
    def test_register_dir_and_look_it_up(self, tiny_model_dir: Path, tmp_path: Path) -> None:
        """A registered directory is found by name, name:version and models:/ URI, with its path."""
        home = tmp_path / "home"
        first = registry.register_model_dir(home, "tiny", tiny_model_dir, {"origin": "test"})
        second = registry.register_model_dir(home, "tiny", tiny_model_dir)
        assert (first.version, second.version) == ("1", "2")
        assert first.path == tiny_model_dir
        assert first.id == "models:/tiny/1"
        assert registry.get_registered(home, "tiny").version == "2"
        assert registry.get_registered(home, "tiny:1").tags["origin"] == "test"
        assert registry.get_registered(home, "models:/tiny/1").path == tiny_model_dir
        assert [m.name for m in registry.list_registered(home)] == ["tiny"]

    def test_unknown_names_suggest_close_ones(self, tiny_model_dir: Path, tmp_path: Path) -> None:
        """A misspelt name and a missing version are NotFoundError naming what exists."""
        home = tmp_path / "home"
        registry.register_model_dir(home, "tiny-phi3", tiny_model_dir)
        with pytest.raises(NotFoundError, match="did you mean tiny-phi3"):
            registry.get_registered(home, "tiny-phi")
        with pytest.raises(NotFoundError, match="versions: 1"):
            registry.get_registered(home, "tiny-phi3:9")

    def test_quote_in_a_name_is_a_validation_error(self, tmp_path: Path) -> None:
        """A quote in a looked-up name is a clear ValidationError, not MLflow's filter-string exception."""
        with pytest.raises(ValidationError, match="cannot hold a quote"):
            registry.get_registered(tmp_path / "home", "o'brien")

    def test_not_a_model_directory(self, tmp_path: Path) -> None:
        """Registering a folder without config.json or tokenizer says what is missing."""
        (tmp_path / "empty").mkdir()
        with pytest.raises(ValidationError, match="no config.json"):
            registry.register_model_dir(tmp_path / "home", "x", tmp_path / "empty")

    @pytest.mark.parametrize(
        ("ref", "expected"),
        [("a", ("a", None)), ("a:3", ("a", "3")), ("models:/a/3", ("a", "3")), ("models:/a/latest", ("a", None))],
    )
    def test_parse_ref(self, ref: str, expected: tuple[str, str | None]) -> None:
        """References parse into name and optional version."""
        assert registry.parse_ref(ref) == expected
