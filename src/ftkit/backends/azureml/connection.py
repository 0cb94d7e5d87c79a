"""The workspace handle: which workspace, which credential, and the clients built on them.

Where the workspace comes from, first match wins: explicit ids; environment variables
(``AZURE_SUBSCRIPTION_ID``, ``AZURE_RESOURCE_GROUP``, ``AZUREML_WORKSPACE_NAME``); a ``config.json`` as
downloaded from the Azure portal (the path given, else ``./config.json``, ``./.azureml/config.json`` or the
same in a parent directory, as ``MLClient.from_config`` searches).

Credentials: ``DefaultAzureCredential`` (environment, workload identity, managed identity, Azure CLI,
PowerShell, Developer CLI), with the interactive browser added only when the caller allows it *and* a
terminal is attached *and* this is not CI. The credential is checked once, up front, so a missing login
fails fast with a message saying what was tried and how to set one up.

Every ``MLClient`` is built with ``retry_total=0`` (ftkit's :mod:`ftkit.retry` is the one retry layer),
telemetry off, progress output off, and the injectable ``transport`` (``ftkit.testing.FakeAzureML`` uses it).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from ... import retry
from ...exceptions import AuthError, Problem, ValidationError
from .errors import CREDENTIAL_HELP, map_azure_errors

__all__ = ["ARM_SCOPE", "AzureMLConnection", "WorkspaceRef", "is_ci", "make_credential", "quiet_azure_logging"]


def quiet_azure_logging() -> None:
    """Silence azure-ai-ml's import-time warnings (one per experimental schema class: noise for users)."""
    logging.getLogger("azure.ai.ml").setLevel(logging.ERROR)
    # Older releases' msrest models warn that azure-ai-ml's own outputs carry an attribute the REST model of
    # that API version lacks (pathOnCompute); the body is right without it, and the warning is not the user's.
    logging.getLogger("msrest.serialization").setLevel(logging.ERROR)


ARM_SCOPE = "https://management.azure.com/.default"
ENV_VARS = {
    "subscription_id": ("AZURE_SUBSCRIPTION_ID", "AZUREML_SUBSCRIPTION_ID"),
    "resource_group": ("AZURE_RESOURCE_GROUP", "AZUREML_RESOURCE_GROUP"),
    "workspace_name": ("AZUREML_WORKSPACE_NAME", "AZURE_ML_WORKSPACE"),
}
CI_VARS = ("CI", "GITHUB_ACTIONS", "TF_BUILD", "BUILD_BUILDID", "JENKINS_URL", "GITLAB_CI", "BUILDKITE", "CIRCLECI")
USER_AGENT = "ftkit"


@attrs.frozen(kw_only=True)
class WorkspaceRef:
    """Which Azure ML workspace to use.

    Attributes:
        subscription_id: The subscription.
        resource_group: The resource group.
        workspace_name: The workspace.
        source: Where these came from (``explicit``, ``environment`` or a config.json path).
    """

    subscription_id: str
    resource_group: str
    workspace_name: str
    source: str = "explicit"

    @classmethod
    def resolve(
        cls,
        *,
        subscription_id: str | None = None,
        resource_group: str | None = None,
        workspace_name: str | None = None,
        config_path: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> WorkspaceRef:
        """Find the workspace: explicit ids, then environment variables, then ``config.json``.

        Each id is taken from the first source that has it, so an explicit workspace name can complete a
        config.json's subscription and group.

        Args:
            subscription_id: Explicit subscription.
            resource_group: Explicit resource group.
            workspace_name: Explicit workspace.
            config_path: A config.json (or a directory holding one); searched for when not given.
            environ: The environment (default ``os.environ``).
            cwd: Where the config.json search starts (default: the current directory).

        Returns:
            The workspace.

        Raises:
            ValidationError: Some id is missing everywhere, or the config.json is unreadable.
        """
        env = os.environ if environ is None else environ
        given = {"subscription_id": subscription_id, "resource_group": resource_group, "workspace_name": workspace_name}
        sources = {k: "explicit" for k, v in given.items() if v}
        for key, names in ENV_VARS.items():
            if not given[key]:
                value = next((env[n] for n in names if env.get(n)), None)
                if value:
                    given[key], sources[key] = value, "environment"
        config = _find_config(config_path, cwd or Path.cwd()) if not all(given.values()) or config_path else None
        if config is not None:
            data = _read_config(config)
            for key in given:
                if not given[key] and data.get(key):
                    given[key], sources[key] = str(data[key]), str(config)
        missing = [k for k, v in given.items() if not v]
        if missing:
            raise ValidationError(
                [
                    Problem(
                        f"azureml.{k}",
                        "is not set",
                        f"pass it explicitly, set {' / '.join(ENV_VARS[k])}, or download the workspace's "
                        "config.json from the Azure portal into this directory",
                    )
                    for k in missing
                ],
                "cannot tell which workspace to use",
            )
        source = "explicit" if set(sources.values()) == {"explicit"} else ", ".join(sorted(set(sources.values())))
        return cls(
            subscription_id=str(given["subscription_id"]),
            resource_group=str(given["resource_group"]),
            workspace_name=str(given["workspace_name"]),
            source=source,
        )


def _find_config(config_path: str | Path | None, cwd: Path) -> Path | None:
    if config_path is not None:
        path = Path(config_path).expanduser()
        return path / "config.json" if path.is_dir() else path
    for directory in (cwd, *cwd.parents):
        for candidate in (directory / "config.json", directory / ".azureml" / "config.json"):
            if candidate.is_file():
                return candidate
    return None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValidationError([Problem("", f"cannot read workspace config: {exc}", source=str(path))]) from None
    if not isinstance(data, dict):
        raise ValidationError([Problem("", "expected a JSON object", source=str(path))])
    # The portal writes subscription_id/resource_group/workspace_name; older files use camelCase.
    aliases = {
        "subscriptionId": "subscription_id",
        "resourceGroup": "resource_group",
        "workspaceName": "workspace_name",
    }
    return {aliases.get(str(k), str(k)): v for k, v in data.items()}


def is_ci(environ: Mapping[str, str] | None = None) -> bool:
    """Return whether this looks like a CI run (where nobody can answer a browser login)."""
    env = os.environ if environ is None else environ
    return any(env.get(name, "").lower() not in ("", "0", "false") for name in CI_VARS)


def make_credential(
    *,
    interactive: bool = False,
    environ: Mapping[str, str] | None = None,
    isatty: Callable[[], bool] | None = None,
) -> Any:
    """Build the credential chain: ``DefaultAzureCredential``, then the browser only where it can work.

    Args:
        interactive: Whether the caller allows an interactive browser login.
        environ: The environment (default ``os.environ``), for the CI check.
        isatty: Whether a terminal is attached (default: stdin and stdout are TTYs).

    Returns:
        An azure-identity credential.
    """
    from azure.identity import ChainedTokenCredential, DefaultAzureCredential, InteractiveBrowserCredential

    default = DefaultAzureCredential(exclude_interactive_browser_credential=True)
    tty = isatty() if isatty is not None else sys.stdin.isatty() and sys.stdout.isatty()
    if interactive and tty and not is_ci(environ):
        return ChainedTokenCredential(default, InteractiveBrowserCredential())
    return default


class AzureMLConnection:
    """A workspace client and registry clients sharing one credential and transport.

    Args:
        workspace: Which workspace.
        credential: A token credential; built by :func:`make_credential` when not given.
        transport: An azure-core transport for every request (tests pass ``FakeAzureML().transport``).
        interactive: Allow the interactive browser login (only in a terminal outside CI).
        check_credential: Fetch a token up front so a missing login fails before any work.
    """

    def __init__(
        self,
        workspace: WorkspaceRef,
        *,
        credential: Any = None,
        transport: Any = None,
        interactive: bool = False,
        check_credential: bool = True,
    ) -> None:
        self.workspace = workspace
        self.transport = transport
        self._interactive = interactive
        self.credential = credential if credential is not None else make_credential(interactive=interactive)
        self._ml_client: Any = None
        self._registries: dict[str, Any] = {}
        self._checked = not check_credential

    def _client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "retry_total": 0,  # ftkit.retry is the one retry layer
            "enable_telemetry": False,
            "show_progress": False,
            "user_agent": USER_AGENT,
        }
        if self.transport is not None:
            kwargs["transport"] = self.transport
        return kwargs

    def check_credential(self) -> None:
        """Fetch an ARM token once, so a missing login fails fast.

        Raises:
            AuthError: No credential in the chain produced a token; says which were tried.
        """
        if self._checked:
            return
        tried = (
            "environment variables, workload identity, managed identity, Azure CLI, Azure PowerShell, "
            "Azure Developer CLI"
        )
        if self._interactive:
            tried += (
                ", interactive browser" if not is_ci() and sys.stdin.isatty() else " (browser skipped: no terminal/CI)"
            )
        try:
            self.credential.get_token(ARM_SCOPE)
        except Exception as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise AuthError(
                f"no Azure credential worked (tried: {tried}): {detail}; {CREDENTIAL_HELP}", operation="connect"
            ) from exc
        self._checked = True

    @property
    def ml_client(self) -> Any:
        """The workspace ``MLClient`` (built on first use; construction makes no request)."""
        if self._ml_client is None:
            self.check_credential()
            from azure.ai.ml import MLClient

            quiet_azure_logging()
            ws = self.workspace
            self._ml_client = MLClient(
                self.credential, ws.subscription_id, ws.resource_group, ws.workspace_name, **self._client_kwargs()
            )
        return self._ml_client

    def registry(self, name: str = "azureml") -> Any:
        """Return the ``MLClient`` of registry ``name`` (construction asks the registry discovery service)."""
        client = self._registries.get(name)
        if client is None:
            self.check_credential()
            from azure.ai.ml import MLClient

            def build() -> Any:
                with map_azure_errors("connect_registry", resource=f"registry {name}"):
                    return MLClient(self.credential, registry_name=name, **self._client_kwargs())

            client = retry.call(build)
            self._registries[name] = client
        return client

    def pipeline_client(self) -> Any:
        """An azure-core ``PipelineClient`` on the same transport, for requests azure-ai-ml does not make.

        It has no retry policy (ftkit retries) and no authentication policy: callers add the header each
        request needs (the endpoint key for scoring, an ARM token for the MLflow API). Nor has it azure-core's
        ``NetworkTraceLoggingPolicy``, which would log those headers, the endpoint key included, in clear.
        """
        from azure.core import PipelineClient
        from azure.core.pipeline import policies

        kwargs: dict[str, Any] = {}
        if self.transport is not None:
            kwargs["transport"] = self.transport
        return PipelineClient(
            base_url="https://management.azure.com",
            policies=[
                policies.HeadersPolicy(),
                policies.UserAgentPolicy(base_user_agent=USER_AGENT),
                policies.ContentDecodePolicy(),
                policies.RedirectPolicy(),
            ],
            **kwargs,
        )

    def arm_token(self) -> str:
        """Return an ARM bearer token from the credential (for the MLflow REST API)."""
        with map_azure_errors("get_token"):
            return str(self.credential.get_token(ARM_SCOPE).token)
