"""Parameters are checked against the component's declared inputs (the real spec and ftkit's snapshot)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ftkit.component import ComponentSchema, encode_parameters
from ftkit.exceptions import ParameterError


@pytest.fixture(scope="module")
def schema() -> ComponentSchema:
    return ComponentSchema.bundled()


class TestSnapshot:
    def test_bundled_snapshot_matches_the_real_spec(self, pipeline_spec: Path) -> None:
        """The shipped 0.0.82 snapshot holds exactly what azure-ai-ml's load_component reads from the spec."""
        logging.getLogger("azure.ai.ml").setLevel(logging.ERROR)
        from azure.ai.ml import load_component

        component = load_component(source=pipeline_spec)
        real = ComponentSchema.from_input_dicts(
            component.name,
            component.version,
            {name: port._to_dict() for name, port in component.inputs.items()},
            {name: port.type for name, port in component.outputs.items()},
        )
        bundled = ComponentSchema.bundled()
        assert (bundled.name, bundled.version) == ("chat_completion_pipeline", "0.0.82")
        assert dict(bundled.inputs) == dict(real.inputs)
        assert dict(bundled.outputs) == dict(real.outputs)
        assert len(bundled.inputs) == 69

    def test_plain_yaml_reading_agrees_with_the_sdk(self, pipeline_spec: Path) -> None:
        """from_spec_file (PyYAML, where 1e-8 is a string) gives the same schema as the snapshot."""
        from_file = ComponentSchema.from_spec_file(pipeline_spec)
        assert dict(from_file.inputs) == dict(ComponentSchema.bundled().inputs)
        assert from_file.inputs["adam_epsilon"].default == pytest.approx(1e-8)

    def test_unknown_version_names_the_bundled_ones(self) -> None:
        """Asking for a version ftkit does not ship says which it has."""
        with pytest.raises(ParameterError, match=r"bundled: chat_completion_pipeline-0\.0\.82"):
            ComponentSchema.bundled(version="9.9.9")

    def test_a_file_that_is_not_a_spec_is_a_clear_error(self, tmp_path: Path) -> None:
        """A missing or non-component file is reported with its path."""
        with pytest.raises(ParameterError, match="cannot read component spec"):
            ComponentSchema.from_spec_file(tmp_path / "missing.yaml")
        (tmp_path / "x.yaml").write_text("just: text\n")
        with pytest.raises(ParameterError, match="not a component spec"):
            ComponentSchema.from_spec_file(tmp_path / "x.yaml")

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("name: x\ninputs: [a, b]\n", "not a component spec"),
            ("name: x\nversion: 1\ninputs:\n  lr: {type: number, min: abc}\n", "malformed component spec"),
            ("name: x\nversion: 1\ninputs:\n  lr: {type: number, default: fast}\n", "malformed component spec"),
            ("name: x\nversion: 1\ninputs:\n  lr: 5\n", "malformed component spec"),
            ("name: x\nversion: 1\ninputs: {}\noutputs: [a]\n", "malformed component spec"),
        ],
    )
    def test_a_malformed_spec_is_a_parameter_error(self, tmp_path: Path, text: str, message: str) -> None:
        """Inputs that are not a mapping, or bounds and defaults that are not numbers, never escape as tracebacks."""
        path = tmp_path / "spec.yaml"
        path.write_text(text)
        with pytest.raises(ParameterError, match=message) as info:
            ComponentSchema.from_spec_file(path)
        assert info.value.problems[0].source == str(path)


class TestEncoding:
    def test_python_values_become_the_component_encoding(self, schema: ComponentSchema) -> None:
        """Booleans become "true"/"false", deepspeed_stage 2 becomes "2", precision 16 becomes "16"."""
        out = encode_parameters(
            {
                "apply_lora": True,
                "apply_deepspeed": False,
                "deepspeed_stage": 2,
                "precision": 16,
                "learning_rate": "5e-6",
            },
            schema,
        )
        assert out == {
            "apply_lora": "true",
            "apply_deepspeed": "false",
            "deepspeed_stage": "2",
            "precision": "16",
            "learning_rate": 5e-6,
        }

    def test_component_encoding_passes_through(self, schema: ComponentSchema) -> None:
        """Values already in the component's encoding are accepted unchanged ("TRUE" normalised)."""
        out = encode_parameters({"apply_lora": "TRUE", "deepspeed_stage": "3", "optim": "adafactor"}, schema)
        assert out == {"apply_lora": "true", "deepspeed_stage": "3", "optim": "adafactor"}

    def test_every_problem_is_reported_at_once(self, schema: ComponentSchema) -> None:
        """Unknown names, bad enums, out-of-range and wrong types all come back in one error."""
        with pytest.raises(ParameterError) as info:
            encode_parameters(
                {
                    "learning_rat": 1e-5,
                    "lr_scheduler_type": "cosin",
                    "num_train_epochs": 0,
                    "per_device_train_batch_size": "abc",
                    "apply_lora": "maybe",
                    "deepspeed_stage": 4,
                    "lora_dropout": float("nan"),
                    "optim": "adamw_hf",
                },
                schema,
            )
        by_key = {p.where.removeprefix("finetune."): p for p in info.value.problems}
        assert set(by_key) == {
            "learning_rat",
            "lr_scheduler_type",
            "num_train_epochs",
            "per_device_train_batch_size",
            "apply_lora",
            "deepspeed_stage",
            "lora_dropout",
            "optim",
        }
        assert by_key["learning_rat"].suggestion == "did you mean learning_rate?"
        assert "did you mean cosine?" in (by_key["lr_scheduler_type"].suggestion or "")
        assert "below the minimum 1" in by_key["num_train_epochs"].message
        assert "expected an integer" in by_key["per_device_train_batch_size"].message
        assert "choose one of: true, false" in (by_key["apply_lora"].suggestion or "")
        assert "choose one of: 2, 3" in (by_key["deepspeed_stage"].suggestion or "")
        assert "adamw_torch" in (by_key["optim"].suggestion or "")

    def test_reserved_inputs_point_to_the_right_section(self, schema: ComponentSchema) -> None:
        """Inputs ftkit wires itself are refused with a pointer to where to set them."""
        with pytest.raises(ParameterError, match="set it with compute.cluster instead"):
            encode_parameters({"compute_finetune": "x"}, schema, reserved={"compute_finetune": "compute.cluster"})

    def test_integers_accept_integral_floats_only(self, schema: ComponentSchema) -> None:
        """3.0 is an integer, 2.5 is not."""
        assert encode_parameters({"num_train_epochs": 3.0}, schema) == {"num_train_epochs": 3}
        with pytest.raises(ParameterError, match="expected an integer"):
            encode_parameters({"num_train_epochs": 2.5}, schema)

    def test_file_inputs_take_paths(self, schema: ComponentSchema) -> None:
        """Port inputs such as the DeepSpeed config take a path or URI."""
        assert encode_parameters({"deepspeed": "ds.json"}, schema) == {"deepspeed": "ds.json"}
        with pytest.raises(ParameterError, match="expected a path or URI"):
            encode_parameters({"deepspeed": 3}, schema)
