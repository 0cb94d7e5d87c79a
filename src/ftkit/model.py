"""`FoundationModelRef`: which registry model to fine-tune, and the tags that steer the flow."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from typing import Any

import attrs

from .exceptions import Problem, TagError, ValidationError

__all__ = ["FoundationModelRef"]

_ASSET_ID = re.compile(
    r"^azureml://registries/(?P<registry>[^/]+)/models/(?P<name>[^/]+)/(?:versions/(?P<version>[^/]+)|labels/(?P<label>[^/]+))$"
)

FINETUNE_ALLOW_LIST_TAG = "finetune_compute_allow_list"
INFERENCE_ALLOW_LIST_TAG = "inference_compute_allow_list"
MODEL_DEFAULTS_TAG = "model_specific_defaults"
# The notebook's April 2024 version read the finetune allow-list from this older tag name.
_LEGACY_FINETUNE_ALLOW_LIST_TAG = "computes_allow_list"


def _parse_literal(tag: str, raw: str) -> Any:
    """Strictly private: parse a tag value written as JSON or as a Python literal (the registry uses both)."""
    try:
        return json.loads(raw)
    except ValueError:
        pass
    try:
        # literal_eval evaluates literals only, never code: safe on registry-controlled text.
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise TagError(
            [Problem(f"tags.{tag}", f"cannot parse {raw[:80]!r}: {exc.__class__.__name__}")],
            f"malformed model tag {tag}",
        ) from None


@attrs.frozen(kw_only=True)
class FoundationModelRef:
    """A model in an Azure ML registry (or the local registry), by name and version or label.

    Build one with :meth:`parse` (``azureml://registries/...`` ids, ``name:version``, ``name@label``) or
    directly. After the backend resolves it, :attr:`version` is concrete and :attr:`tags` holds the
    registry's tags; :meth:`resolved` returns that copy.

    Attributes:
        name: The model's name, e.g. ``Phi-3-mini-4k-instruct``.
        registry: The registry, ``azureml`` by default.
        version: A concrete version, if pinned or resolved.
        label: A label such as ``latest``, used when no version is pinned.
        tags: The registry model's tags (empty until resolved).
    """

    name: str = attrs.field(validator=attrs.validators.min_len(1))
    registry: str = "azureml"
    version: str | None = None
    label: str | None = None
    tags: Mapping[str, str] = attrs.field(factory=dict, eq=False, hash=False)

    def __attrs_post_init__(self) -> None:
        if self.version is None and self.label is None:
            object.__setattr__(self, "label", "latest")

    @classmethod
    def parse(cls, text: str, *, registry: str = "azureml") -> FoundationModelRef:
        """Parse a model reference.

        Accepts ``azureml://registries/R/models/N/versions/V``, ``azureml://registries/R/models/N/labels/L``,
        ``N:V``, ``N@L`` and a bare ``N`` (label ``latest``).

        Args:
            text: The reference.
            registry: The registry for the short forms.

        Returns:
            The reference.

        Raises:
            ValidationError: The text is not a model reference.
        """
        text = text.strip()
        if text.startswith("azureml://"):
            m = _ASSET_ID.match(text)
            if m is None:
                raise ValidationError(
                    [
                        Problem(
                            "model",
                            f"not a registry model asset id: {text!r}",
                            "use azureml://registries/<registry>/models/<name>/versions/<version>",
                        )
                    ]
                )
            return cls(name=m["name"], registry=m["registry"], version=m["version"], label=m["label"])
        if not text or "/" in text:
            raise ValidationError(
                [Problem("model", f"not a model name: {text!r}", "use NAME, NAME:VERSION or NAME@LABEL")]
            )
        if ":" in text:
            name, version = text.split(":", 1)
            return cls(name=name, registry=registry, version=version)
        if "@" in text:
            name, label = text.split("@", 1)
            return cls(name=name, registry=registry, label=label)
        return cls(name=text, registry=registry)

    @property
    def asset_id(self) -> str:
        """The registry asset id (by version when known, else by label), as the pipeline's model input."""
        base = f"azureml://registries/{self.registry}/models/{self.name}"
        if self.version is not None:
            return f"{base}/versions/{self.version}"
        return f"{base}/labels/{self.label}"

    @property
    def is_resolved(self) -> bool:
        """Whether a concrete version is known."""
        return self.version is not None

    def resolved(self, version: str, tags: Mapping[str, str]) -> FoundationModelRef:
        """Return a copy pinned to ``version`` with the registry's ``tags``.

        Args:
            version: The concrete version the registry returned.
            tags: The model's tags.

        Returns:
            The resolved reference.
        """
        return attrs.evolve(self, version=str(version), label=None, tags=dict(tags))

    def _string_list_tag(self, *names: str) -> tuple[str, ...] | None:
        for tag in names:
            raw = self.tags.get(tag)
            if raw is None:
                continue
            value = _parse_literal(tag, raw)
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise TagError(
                    [Problem(f"tags.{tag}", f"expected a list of VM size names, got {raw[:80]!r}")],
                    f"malformed model tag {tag}",
                )
            return tuple(value)
        return None

    @property
    def finetune_compute_allow_list(self) -> tuple[str, ...] | None:
        """VM sizes the model may be fine-tuned on, or ``None`` when the model does not say.

        Raises:
            TagError: The tag is present but malformed.
        """
        return self._string_list_tag(FINETUNE_ALLOW_LIST_TAG, _LEGACY_FINETUNE_ALLOW_LIST_TAG)

    @property
    def inference_compute_allow_list(self) -> tuple[str, ...] | None:
        """VM sizes the model may be deployed on, or ``None`` when the model does not say.

        Raises:
            TagError: The tag is present but malformed.
        """
        return self._string_list_tag(INFERENCE_ALLOW_LIST_TAG)

    @property
    def model_specific_defaults(self) -> dict[str, object]:
        """Finetune parameters the registry recommends for this model (empty when the tag is absent).

        Raises:
            TagError: The tag is present but malformed.
        """
        raw = self.tags.get(MODEL_DEFAULTS_TAG)
        if raw is None:
            return {}
        value = _parse_literal(MODEL_DEFAULTS_TAG, raw)
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise TagError(
                [Problem(f"tags.{MODEL_DEFAULTS_TAG}", f"expected a mapping of parameters, got {raw[:80]!r}")],
                f"malformed model tag {MODEL_DEFAULTS_TAG}",
            )
        return dict(value)
