"""Workspace resolution, credential selection and the fail-fast credential check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from azure.identity import CredentialUnavailableError

from ftkit.backends import get_backend
from ftkit.backends.azureml import AzureMLBackend, AzureMLConnection, WorkspaceRef
from ftkit.backends.azureml.connection import is_ci, make_credential
from ftkit.exceptions import AuthError, ValidationError
from ftkit.testing import FakeAzureML, FakeCredential

CONFIG = {"subscription_id": "sub-c", "resource_group": "rg-c", "workspace_name": "ws-c"}


class TestWorkspaceRef:
    def test_explicit(self) -> None:
        """Explicit ids win and need nothing else."""
        ref = WorkspaceRef.resolve(subscription_id="s", resource_group="g", workspace_name="w", environ={})
        assert (ref.subscription_id, ref.resource_group, ref.workspace_name, ref.source) == ("s", "g", "w", "explicit")

    def test_environment(self, tmp_path: Path) -> None:
        """Environment variables fill what is not given."""
        env = {"AZURE_SUBSCRIPTION_ID": "s", "AZURE_RESOURCE_GROUP": "g", "AZUREML_WORKSPACE_NAME": "w"}
        ref = WorkspaceRef.resolve(environ=env, cwd=tmp_path)
        assert ref.workspace_name == "w"
        assert ref.source == "environment"

    def test_config_json_found_upwards(self, tmp_path: Path) -> None:
        """A portal config.json in a parent's .azureml directory is found, and explicit ids override it."""
        (tmp_path / ".azureml").mkdir()
        (tmp_path / ".azureml" / "config.json").write_text(json.dumps(CONFIG))
        deep = tmp_path / "a" / "b"
        deep.mkdir(parents=True)
        ref = WorkspaceRef.resolve(workspace_name="other", environ={}, cwd=deep)
        assert (ref.subscription_id, ref.workspace_name) == ("sub-c", "other")

    def test_missing_lists_every_id(self, tmp_path: Path) -> None:
        """Without any source, the error names each missing id and how to set it."""
        with pytest.raises(ValidationError) as info:
            WorkspaceRef.resolve(environ={}, cwd=tmp_path)
        text = str(info.value)
        assert "azureml.subscription_id" in text
        assert "azureml.workspace_name" in text
        assert "config.json" in text
        # each id names its own environment variables
        problems = {p.where: p.suggestion or "" for p in info.value.problems}
        assert "AZURE_RESOURCE_GROUP" in problems["azureml.resource_group"]
        assert "AZUREML_WORKSPACE_NAME" in problems["azureml.workspace_name"]
        assert "AZURE_SUBSCRIPTION_ID" not in problems["azureml.workspace_name"]

    def test_bad_config(self, tmp_path: Path) -> None:
        """An unreadable config.json is a ValidationError naming the file."""
        bad = tmp_path / "config.json"
        bad.write_text("{not json")
        with pytest.raises(ValidationError, match="config.json"):
            WorkspaceRef.resolve(config_path=bad, environ={})


class TestCredentials:
    def test_browser_only_in_a_terminal_outside_ci(self) -> None:
        """The browser joins the chain only when allowed, in a TTY, outside CI."""
        from azure.identity import ChainedTokenCredential, DefaultAzureCredential

        assert isinstance(make_credential(interactive=True, environ={}, isatty=lambda: True), ChainedTokenCredential)
        for kwargs in (
            {"interactive": False, "environ": {}, "isatty": lambda: True},
            {"interactive": True, "environ": {}, "isatty": lambda: False},
            {"interactive": True, "environ": {"CI": "true"}, "isatty": lambda: True},
        ):
            assert isinstance(make_credential(**kwargs), DefaultAzureCredential)  # type: ignore[arg-type]

    def test_is_ci(self) -> None:
        """CI is recognised from the usual variables."""
        assert is_ci({"GITHUB_ACTIONS": "true"})
        assert not is_ci({"CI": "false"})

    def test_fail_fast(self) -> None:
        """A credential that cannot produce a token fails before any request, saying what was tried."""
        fake = FakeAzureML()
        credential = FakeCredential(fail_with=CredentialUnavailableError("Please run 'az login'"))
        settings = {**fake.backend_settings(), "credential": credential}
        backend = AzureMLBackend(**settings)
        with pytest.raises(AuthError) as info:
            backend.describe_compute("gpu")
        text = str(info.value)
        assert "Azure CLI" in text
        assert "AZURE_CLIENT_ID" in text
        assert fake.requests == []

    def test_clients_do_not_retry(self) -> None:
        """MLClients are built with retry_total=0: ftkit's retry layer is the only one."""
        fake = FakeAzureML()
        connection = AzureMLConnection(
            WorkspaceRef(
                subscription_id=fake.subscription_id,
                resource_group=fake.resource_group,
                workspace_name=fake.workspace_name,
            ),
            credential=fake.credential,
            transport=fake.transport,
        )
        fake.fail("GET", r"/computes/x$", status=503, times=10)
        from azure.core.exceptions import HttpResponseError

        with pytest.raises(HttpResponseError):
            connection.ml_client.compute.get("x")
        assert len(fake.calls("GET", r"/computes/x$")) == 1

    def test_get_backend_by_name(self) -> None:
        """The backend registry builds AzureMLBackend from keyword settings."""
        fake = FakeAzureML()
        backend = get_backend("azureml", **fake.backend_settings())
        assert backend.name == "azureml"
        assert isinstance(backend, AzureMLBackend)
