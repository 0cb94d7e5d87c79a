"""The typed, versioned records a local endpoint's ``endpoint.json`` holds for its server.

The managing process (:class:`~ftkit.backends.local.endpoints.LocalEndpoints`) writes them, the server
(:mod:`.app`) reads them back: one deployment's :class:`DeploymentRecord` (its model and its
:class:`~ftkit.deployment_settings.DeploymentSettings`) and the endpoint's
:class:`~ftkit.deployment_settings.ServerSettings`. Every setting has one typed home, so the server reads no
key with a fallback of its own; a record of another version is refused, not guessed at.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from ..deployment_settings import ENGINES, DeploymentSettings, EngineName, ServerSettings, json_object
from ..exceptions import Problem, ValidationError

__all__ = ["DeploymentRecord", "read_server_settings"]


@attrs.frozen(kw_only=True)
class DeploymentRecord:
    """One deployment of a local endpoint, as its server loads it.

    Attributes:
        model_id: The registered model's id (``models:/name/version``).
        model_name: Its name.
        model_version: Its version.
        model_path: Its local directory.
        settings: How it serves (request timeout, queue, batch size, device...).
        engine: What generates it on the server: ``auto`` (continuous batching on a GPU where the model
            supports it, static batches otherwise), ``static``, ``continuous`` or ``transformers``: the
            endpoint's ``deploy.server.engine``, or the settings of the
            :class:`~ftkit.backends.local.endpoints.LocalEndpoints` that created it when it was given some.
        provisioning_state: ``Creating``, ``Succeeded`` or ``Failed``.
        error: Why it failed, when it did.
    """

    VERSION: ClassVar[int] = 1

    model_id: str
    model_name: str
    model_version: str
    model_path: str
    settings: DeploymentSettings = attrs.field(factory=DeploymentSettings)
    engine: EngineName = "auto"
    provisioning_state: str = "Creating"
    error: str | None = None

    @property
    def timeout_s(self) -> float:
        """The per-request timeout in seconds."""
        return max(0.001, self.settings.request_timeout_ms / 1000.0)

    def reload_key(self) -> str:
        """What, when changed, means the server must load the deployment again (model, queue, batch size, device)."""
        s = self.settings
        return json.dumps([self.model_id, self.model_path, s.max_queue, s.max_batch_size, s.device, self.engine])

    def to_dict(self) -> dict[str, Any]:
        """Return the record as ``endpoint.json`` holds it (with its version)."""
        return {
            "version": self.VERSION,
            "model_id": self.model_id,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "model_path": self.model_path,
            "settings": self.settings.to_dict(),
            "engine": self.engine,
            "provisioning_state": self.provisioning_state,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeploymentRecord:
        """Read a record written by :meth:`to_dict`.

        Raises:
            ValidationError: Another version, a missing field or a bad setting (named).
        """
        if data.get("version") != cls.VERSION:
            raise ValidationError(
                [Problem("deployment", f"not a version {cls.VERSION} record", "create the deployment again")],
                "unreadable deployment record",
            )
        missing = [k for k in ("model_id", "model_name", "model_version", "model_path") if not data.get(k)]
        if missing:
            raise ValidationError(
                [Problem(f"deployment.{k}", "is missing") for k in missing], "incomplete deployment record"
            )
        settings = data.get("settings")
        error = data.get("error")
        engine = data.get("engine", "auto")
        if engine not in ENGINES:
            raise ValidationError(
                [Problem("deployment.engine", f"{engine!r} is not an engine", f"choose one of: {', '.join(ENGINES)}")],
                "unreadable deployment record",
            )
        return cls(
            model_id=str(data["model_id"]),
            model_name=str(data["model_name"]),
            model_version=str(data["model_version"]),
            model_path=str(data["model_path"]),
            settings=DeploymentSettings.from_dict(settings if isinstance(settings, Mapping) else {}),
            engine=next(e for e in ENGINES if e == engine),
            provisioning_state=str(data.get("provisioning_state") or "Creating"),
            error=str(error) if error is not None else None,
        )

    def to_json(self) -> str:
        """Return the record as JSON."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DeploymentRecord:
        """Read a record written by :meth:`to_json` (see :meth:`from_dict`)."""
        return cls.from_dict(json_object(text, "deployment", "unreadable deployment record"))


def read_server_settings(config: Mapping[str, Any]) -> ServerSettings:
    """Return the endpoint's server settings from its ``endpoint.json`` (defaults when it has none yet).

    Raises:
        ValidationError: The record is of another version or has a bad value.
    """
    if "settings" not in config:
        return ServerSettings()
    raw = config["settings"]
    if not isinstance(raw, Mapping):
        raise ValidationError([Problem("settings", "not a JSON object")], "unreadable endpoint settings")
    return ServerSettings.from_dict(raw)
