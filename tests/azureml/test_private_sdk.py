"""The one private azure-ai-ml function ftkit calls: present in the installed version, and a clear error if not."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from ftkit.backends.azureml import backend as azure_backend
from ftkit.exceptions import BackendError


def test_the_installed_azure_ai_ml_has_the_upload_function_ftkit_calls() -> None:
    """Runs at every azure-ai-ml the CI installs (newest, and the floor in `nox -s mindeps`)."""
    function = azure_backend.private_upload_function()
    parameters = inspect.signature(function).parameters
    assert len([p for p in parameters.values() if p.default is inspect.Parameter.empty]) == 3  # scope, datastores, path
    assert set(azure_backend.PRIVATE_UPLOAD_KEYWORDS) <= set(parameters)


def test_a_release_without_it_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    module_name, attr = azure_backend.PRIVATE_UPLOAD
    monkeypatch.delattr(importlib.import_module(module_name), attr)
    uploader = azure_backend.DatastoreUploader(connection=None)  # type: ignore[arg-type]
    with pytest.raises(BackendError, match=r"azure-ai-ml \S+ changed .*_upload_and_generate_remote_uri") as info:
        uploader(tmp_path / "train.jsonl", "train")
    assert "azure-ai-ml>=1.20,<2" in str(info.value)
    assert info.value.operation == "upload_data"


def test_a_changed_signature_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    module_name, attr = azure_backend.PRIVATE_UPLOAD

    def renamed(asset_scope: object, datastore_operation: object, path: object, *, datastore: str) -> str:
        raise AssertionError("never called")

    monkeypatch.setattr(importlib.import_module(module_name), attr, renamed)
    with pytest.raises(BackendError, match="no datastore_name, show_progress"):
        azure_backend.private_upload_function()
