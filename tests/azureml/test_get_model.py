"""``AzureMLBackend.get_model``: the workspace's registered model, through ``ml_client.models.get``."""

from __future__ import annotations

import pytest

from ftkit.backends.azureml import AzureMLBackend
from ftkit.backends.traits import backend_traits
from ftkit.exceptions import NotFoundError
from ftkit.model import FoundationModelRef

pytest.importorskip("azure.ai.ml")


def _register(backend: AzureMLBackend, name: str, version: str) -> None:
    from azure.ai.ml.entities import Model

    path = f"azureml://datastores/workspaceblobstore/paths/models/{name}/{version}"
    model = Model(path=path, type="mlflow_model", name=name, version=version)
    backend.ml_client.models.create_or_update(model)


def test_get_model_by_version_and_latest(backend: AzureMLBackend) -> None:
    """A version asked for comes back as a RegisteredModel (``azureml:`` id); without one, the newest."""
    _register(backend, "tuned", "1")
    _register(backend, "tuned", "2")
    one = backend.get_model("tuned", "1")
    assert (one.name, one.version, one.id) == ("tuned", "1", "azureml:tuned:1")
    assert backend.get_model("tuned").version == "2"


def test_get_model_missing_is_not_found(backend: AzureMLBackend) -> None:
    """A model or version the workspace lacks is a NotFoundError (the SDK's error translated at the boundary)."""
    _register(backend, "tuned", "1")
    with pytest.raises(NotFoundError):
        backend.get_model("tuned", "7")
    with pytest.raises(NotFoundError):
        backend.get_model("absent")


def test_traits_and_model_id(backend: AzureMLBackend) -> None:
    """The live backend's traits are its name's; the base model is named by its registry asset id."""
    assert backend.traits is backend_traits("azureml")
    ref = FoundationModelRef(name="Phi-3-mini-4k-instruct", version="15")
    assert backend.model_id(ref) == "azureml://registries/azureml/models/Phi-3-mini-4k-instruct/versions/15"
