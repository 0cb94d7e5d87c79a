"""FoundationModelRef: parsing references and reading the tags that steer the flow."""

from __future__ import annotations

import pytest

from ftkit import FoundationModelRef
from ftkit.exceptions import TagError, ValidationError

PHI3 = "Phi-3-mini-4k-instruct"


class TestParse:
    @pytest.mark.parametrize(
        ("text", "version", "label"),
        [
            (f"azureml://registries/azureml/models/{PHI3}/versions/7", "7", None),
            (f"azureml://registries/azureml/models/{PHI3}/labels/latest", None, "latest"),
            (f"{PHI3}:7", "7", None),
            (f"{PHI3}@latest", None, "latest"),
            (PHI3, None, "latest"),
        ],
    )
    def test_forms(self, text: str, version: str | None, label: str | None) -> None:
        """Asset ids, name:version, name@label and a bare name all parse."""
        ref = FoundationModelRef.parse(text)
        assert (ref.name, ref.registry, ref.version, ref.label) == (PHI3, "azureml", version, label)

    def test_asset_id_round_trips(self) -> None:
        """asset_id gives back a parseable id, by version once resolved."""
        ref = FoundationModelRef.parse(PHI3)
        assert ref.asset_id.endswith("/labels/latest")
        resolved = ref.resolved("7", {})
        assert resolved.is_resolved
        assert FoundationModelRef.parse(resolved.asset_id) == resolved

    @pytest.mark.parametrize("text", ["azureml://registries/azureml/components/x/versions/1", "", "a/b"])
    def test_bad_references(self, text: str) -> None:
        """Anything else is a ValidationError with the accepted forms."""
        with pytest.raises(ValidationError):
            FoundationModelRef.parse(text)


class TestTags:
    def test_allow_lists_and_defaults_parse_from_python_literals(self) -> None:
        """The registry writes tags as Python literals; ftkit parses them without eval."""
        ref = FoundationModelRef(name=PHI3).resolved(
            "7",
            {
                "finetune_compute_allow_list": "['Standard_NC24ads_A100_v4', 'Standard_ND40rs_v2']",
                "inference_compute_allow_list": '["Standard_NC6s_v3"]',
                "model_specific_defaults": "{'apply_deepspeed': 'true', 'apply_lora': 'true', 'precision': '16'}",
            },
        )
        assert ref.finetune_compute_allow_list == ("Standard_NC24ads_A100_v4", "Standard_ND40rs_v2")
        assert ref.inference_compute_allow_list == ("Standard_NC6s_v3",)
        assert ref.model_specific_defaults == {"apply_deepspeed": "true", "apply_lora": "true", "precision": "16"}

    def test_missing_tags_mean_no_constraint(self) -> None:
        """Without tags there is no allow-list and no model default."""
        ref = FoundationModelRef(name=PHI3)
        assert ref.finetune_compute_allow_list is None
        assert ref.inference_compute_allow_list is None
        assert ref.model_specific_defaults == {}

    def test_legacy_allow_list_tag_is_read(self) -> None:
        """The April 2024 tag name computes_allow_list still works."""
        ref = FoundationModelRef(name=PHI3, tags={"computes_allow_list": "['Standard_NC24rs_v3']"})
        assert ref.finetune_compute_allow_list == ("Standard_NC24rs_v3",)

    @pytest.mark.parametrize(
        ("tag", "raw"),
        [
            ("finetune_compute_allow_list", "['unterminated"),
            ("finetune_compute_allow_list", "{'a': 1}"),
            ("model_specific_defaults", "__import__('os').system('true')"),
            ("model_specific_defaults", "[1, 2]"),
        ],
    )
    def test_malformed_tags_are_clear_errors(self, tag: str, raw: str) -> None:
        """A malformed tag raises TagError naming the tag, never evaluates code."""
        ref = FoundationModelRef(name=PHI3, tags={tag: raw})
        with pytest.raises(TagError, match=tag):
            _ = ref.finetune_compute_allow_list if "allow" in tag else ref.model_specific_defaults
