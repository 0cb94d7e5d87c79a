"""FinetunePipelineSpec: notebook defaults, model-default precedence, display name."""

from __future__ import annotations

import pytest

from ftkit import FinetunePipelineSpec
from ftkit.exceptions import ParameterError

PHI3 = "Phi-3-mini-4k-instruct"


def test_defaults_are_the_notebooks_values_in_component_encoding() -> None:
    """The default spec encodes to the notebook's parameters."""
    assert FinetunePipelineSpec().encoded() == {
        "num_train_epochs": 3,
        "per_device_train_batch_size": 1,
        "per_device_eval_batch_size": 1,
        "learning_rate": 5e-6,
        "lr_scheduler_type": "cosine",
        "apply_lora": "true",
        "apply_deepspeed": "true",
        "deepspeed_stage": "2",
    }


class TestDisplayName:
    def test_notebook_example(self) -> None:
        """ND40rs_v2 (8 GPUs) and no overrides gives the notebook's example name."""
        name = FinetunePipelineSpec().display_name(PHI3, gpus_per_node=8)
        assert name == f"{PHI3}-ultrachat-bs8-cosine-ds2-lora-save_limit-1-seqlen-1"

    def test_total_batch_and_flags(self) -> None:
        """Total batch multiplies per-device batch, accumulation, GPUs and nodes; off flags read nods/nolora."""
        spec = FinetunePipelineSpec(
            per_device_train_batch_size=2,
            gradient_accumulation_steps=4,
            num_nodes_finetune=2,
            apply_deepspeed=False,
            apply_lora=False,
            lr_scheduler_type=None,
            save_total_limit=2,
            max_seq_length=2048,
        )
        assert spec.display_name(PHI3, 4) == f"{PHI3}-ultrachat-bs64-linear-nods-nolora-save_limit2-seqlen2048"

    def test_deepspeed_stage_three(self) -> None:
        """The stage shows in the name; a job file's encoding ("3") is typed when it is loaded."""
        spec = FinetunePipelineSpec.from_mapping({"deepspeed_stage": "3", "apply_lora": "false"})
        assert (spec.deepspeed_stage, spec.apply_lora) == (3, False)
        assert "-ds3-nolora-" in spec.display_name(PHI3, 1)


class TestModelDefaults:
    TAG = {"apply_deepspeed": "true", "learning_rate": 2e-5, "precision": "16", "deepspeed_stage": "2"}

    def test_model_wins_by_default_and_says_what_changed(self) -> None:
        """As in the notebook the tag wins, but every changed value is reported (equal values are not).

        The tag's strings are decoded to the parameters' types ("16" -> 16, "true" -> True).
        """
        merged, overrides = FinetunePipelineSpec().with_model_defaults(self.TAG)
        assert merged.learning_rate == 2e-5
        assert merged.precision == 16
        assert {o.name: (o.job_value, o.model_value, o.winner) for o in overrides} == {
            "learning_rate": (5e-6, 2e-5, "model"),
            "precision": (None, 16, "model"),
        }
        assert str(overrides[0]) == "learning_rate: 5e-06 -> 2e-05 (model_specific_defaults)"

    def test_job_wins_when_asked(self) -> None:
        """model_defaults: job keeps the job's values and only fills unset ones."""
        merged, overrides = FinetunePipelineSpec(model_defaults="job").with_model_defaults(self.TAG)
        assert merged.learning_rate == 5e-6
        assert merged.precision == 16
        assert {o.name: o.winner for o in overrides} == {"learning_rate": "job", "precision": "model"}

    def test_ignore(self) -> None:
        """model_defaults: ignore leaves the spec alone and reports each disagreement as kept."""
        spec = FinetunePipelineSpec(model_defaults="ignore")
        merged, overrides = spec.with_model_defaults(self.TAG)
        assert merged.parameters() == spec.parameters()
        assert all(o.winner == "job" for o in overrides)

    def test_tag_values_are_decoded_through_the_schema(self) -> None:
        """An extra parameter from the tag gets the component's declared type; a bad one is named."""
        schema = FinetunePipelineSpec().schema()
        merged, _ = FinetunePipelineSpec().with_model_defaults({"max_grad_norm": "0.5", "lr": "x"}, schema)
        assert merged.extra["max_grad_norm"] == 0.5
        with pytest.raises(ParameterError, match=r"tags.model_specific_defaults.precision"):
            FinetunePipelineSpec().with_model_defaults({"precision": "sixteen"}, schema)

    def test_unknown_keys_in_the_tag_are_caught_by_validation(self) -> None:
        """A tag key the component does not declare surfaces as a parameter problem."""
        merged, _ = FinetunePipelineSpec().with_model_defaults({"learning_rat": 1.0})
        with pytest.raises(ParameterError, match="learning_rat"):
            merged.encoded()


def test_extra_parameters_and_version_mismatch() -> None:
    """Any declared input is accepted through extra; a schema of another version is refused."""
    spec = FinetunePipelineSpec.from_mapping({"lora_r": 16, "optim": "adafactor", "component_version": "0.0.82"})
    assert spec.encoded()["optim"] == "adafactor"
    assert spec.lora_r == 16
    other = FinetunePipelineSpec(component_version="0.0.81")
    with pytest.raises(ParameterError, match="no bundled schema"):
        other.encoded()
