"""``ftkit cleanup --backend azureml``: delete the workspace's ftkit-tagged endpoints, and nothing else."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from azure.ai.ml.entities import ManagedOnlineEndpoint

from ftkit.backends.azureml import AzureMLBackend
from ftkit.backends.base import EndpointSpec
from ftkit.cli import endpoint as endpoint_cli
from ftkit.cli import main
from ftkit.testing import FakeAzureML


@pytest.fixture
def workspace(fake: FakeAzureML, backend: AzureMLBackend, monkeypatch: pytest.MonkeyPatch) -> FakeAzureML:
    """Two ftkit endpoints and one someone else made; the CLI reaches the fake through the backend fixture."""
    backend.endpoints.create_endpoint(EndpointSpec(name="ft-one", tags={"ftkit.job": "a"}))
    backend.endpoints.create_endpoint(EndpointSpec(name="ft-two", tags={"ftkit.job": "b"}))
    fake.ml_client().online_endpoints.begin_create_or_update(
        ManagedOnlineEndpoint(name="not-ftkit", auth_mode="key")
    ).result()

    def factory(args: argparse.Namespace) -> AzureMLBackend:
        del args
        return backend

    monkeypatch.setattr(endpoint_cli, "_azureml_backend", factory)
    return fake


def test_dry_run_lists_only_ftkit_endpoints(workspace: FakeAzureML, capsys: pytest.CaptureFixture[str]) -> None:
    """--dry-run names the tagged endpoints and deletes nothing."""
    assert main(["cleanup", "--backend", "azureml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == ["would delete endpoint ft-one", "would delete endpoint ft-two"]
    assert not workspace.calls("DELETE")
    assert workspace.endpoint("ft-one") is not None


def test_deletes_ftkit_endpoints_and_leaves_others(workspace: FakeAzureML, capsys: pytest.CaptureFixture[str]) -> None:
    """Every ftkit-tagged endpoint is deleted; an endpoint ftkit did not create is untouched."""
    assert main(["cleanup", "--backend", "azureml"]) == 0
    assert capsys.readouterr().out.splitlines() == ["deleted endpoint ft-one", "deleted endpoint ft-two"]
    assert workspace.endpoint("ft-one") is None
    assert workspace.endpoint("ft-two") is None
    assert workspace.endpoint("not-ftkit") is not None
    assert main(["cleanup", "--backend", "azureml"]) == 0
    assert "nothing to clean up in workspace ws-ftkit" in capsys.readouterr().out


def test_a_failed_delete_is_reported_and_the_rest_go_on(
    workspace: FakeAzureML, capsys: pytest.CaptureFixture[str]
) -> None:
    """One endpoint refusing deletion exits 1 with its reason; the other is still deleted."""
    workspace.fail("DELETE", r"/onlineEndpoints/ft-one$", status=409, message="endpoint is being updated")
    assert main(["cleanup", "--backend", "azureml"]) == 1
    captured = capsys.readouterr()
    assert "error: endpoint ft-one:" in captured.err
    assert "endpoint is being updated" in captured.err
    assert captured.out.splitlines() == ["deleted endpoint ft-two"]
    assert workspace.endpoint("ft-one") is not None
    assert workspace.endpoint("ft-two") is None


def test_no_workspace_is_a_clean_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without env vars or config.json the command says which ids are missing and how to set each; exit 1."""
    for name in ("AZURE_SUBSCRIPTION_ID", "AZUREML_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_RESOURCE_GROUP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AZUREML_WORKSPACE_NAME", raising=False)
    monkeypatch.delenv("AZURE_ML_WORKSPACE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["cleanup", "--backend", "azureml"]) == 1
    err = capsys.readouterr().err
    assert "cannot tell which workspace to use" in err
    assert "azureml.workspace_name: is not set; pass it explicitly, set AZUREML_WORKSPACE_NAME" in err
    assert "Traceback" not in err


def test_options_of_the_other_backend_are_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--home is for local endpoints and --config for Azure ML; mixing them up is a usage error (exit 2)."""
    assert main(["cleanup", "--backend", "azureml", "--home", str(tmp_path)]) == 2
    assert main(["cleanup", "--config", str(tmp_path / "config.json")]) == 2
    err = capsys.readouterr().err
    assert "--home applies to local endpoints only" in err
    assert "--config applies to --backend azureml only" in err
