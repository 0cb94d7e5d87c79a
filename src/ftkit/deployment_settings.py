"""How a deployment serves: one typed value shared by the job file, the deployer and both backends.

:class:`DeploymentSettings` is what every backend reads from a :class:`~ftkit.backends.base.DeploymentSpec`
(Azure ML maps it onto a managed online deployment, the local backend writes it into the endpoint's record
for its server); the job file's ``deploy:`` section *is* one (with the endpoint's name and ``keep`` on top).
:class:`ServerSettings` are the local endpoint server's process-wide settings (``deploy.server:``), written
as a versioned record that the server reads back.
"""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import attrs

from .convert import BAD, bounds, convert_value
from .exceptions import Problem, ValidationError
from .serve.engines.registry import ENGINES as _REGISTERED

__all__ = [
    "DEVICE_CHOICES",
    "DEVICE_PATTERN",
    "ENGINES",
    "DeploymentSettings",
    "EngineName",
    "ServerSettings",
    "valid_device",
]

ENGINES: tuple[str, ...] = ("auto", *_REGISTERED)
"""What generates on the local server: ``auto`` is continuous batching on a GPU where the model supports it,
static batches otherwise; then every engine of :data:`ftkit.serve.engines.registry.ENGINES` (``static``,
``continuous``, ``transformers``: transformers' own continuous batching, greedy only)."""

if TYPE_CHECKING:
    EngineName = str
else:
    # A Literal built from the registry, so that registering an engine is one line: the job file's check (with its
    # did-you-mean), its JSON schema and the records enumerate whatever is registered. mypy sees a str.
    EngineName = Literal[ENGINES]

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N (N a GPU index)"
DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"


def valid_device(value: str) -> bool:
    """Whether ``value`` is a device a local deployment may ask for (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""
    return re.fullmatch(DEVICE_PATTERN, value.strip().lower()) is not None


@attrs.frozen(kw_only=True)
class DeploymentSettings:
    """One deployment's serving settings.

    Attributes:
        instance_type: VM size (Azure ML; checked against the model's inference allow-list; ignored locally).
        instance_count: Instances (Azure ML; the local server runs one).
        request_timeout_ms: Scoring request timeout (both backends: the local server answers 408 past it).
        liveness_initial_delay_s: Seconds before the first liveness probe (model loading takes a while).
        max_concurrent_requests: Requests handled at once per instance (Azure ML).
        max_queue: Requests waiting beyond those being generated before the local server answers 503.
        max_batch_size: Conversations the local server generates together for this deployment
            (``None``: the endpoint's :attr:`ServerSettings.max_batch_size`).
        device: Where a local deployment runs: ``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or
            ``cuda:N`` (checked when the deployment is created; Azure ML runs on ``instance_type``).
    """

    instance_type: str = "Standard_NC6s_v3"
    instance_count: int = attrs.field(default=1, metadata=bounds(1))
    request_timeout_ms: int = attrs.field(default=90000, metadata=bounds(1))
    liveness_initial_delay_s: int = attrs.field(default=600, metadata=bounds(0))
    max_concurrent_requests: int = attrs.field(default=1, metadata=bounds(1))
    max_queue: int = attrs.field(default=64, metadata=bounds(1))
    max_batch_size: int | None = attrs.field(default=None, metadata=bounds(1))
    # A pattern rather than a Literal: ``cuda:N`` takes any GPU index (checked against the GPUs at create time).
    device: str = attrs.field(default="auto", metadata={"pattern": DEVICE_PATTERN, "choices": DEVICE_CHOICES})

    def deployment_settings(self) -> DeploymentSettings:
        """Return exactly the serving settings (a subclass such as the job's ``deploy:`` section carries more)."""
        return DeploymentSettings(**{f.name: getattr(self, f.name) for f in attrs.fields(DeploymentSettings)})

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as plain JSON values."""
        return {f.name: getattr(self, f.name) for f in attrs.fields(DeploymentSettings)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "settings") -> DeploymentSettings:
        """Read settings written by :meth:`to_dict` (missing keys take their defaults).

        Raises:
            ValidationError: A value of the wrong type or out of range (each named).
        """
        return cls(**_typed_fields(cls, data, where))


@attrs.frozen(kw_only=True)
class ServerSettings:
    """The local endpoint server's settings (one server process per endpoint).

    Attributes:
        max_batch_size: Conversations generated together, for deployments that do not set their own.
        batch_window_ms: How long a deployment waits for more requests once one arrives.
        max_body_bytes: The largest request body accepted (413 beyond).
        max_new_tokens_cap: The largest ``max_new_tokens``/``max_tokens`` a request may ask for (400 beyond).
        torch_threads: torch's intra-op threads in the server (0: one fewer than the cores, at least one).
        max_context: Most positions of one request (prompt plus answer) on the continuous engine (0: the model's).
        prefill_tokens: Prompt tokens the continuous engine admits per step (bounds the decode stall).
        gpu_memory_fraction_pct: The share of a GPU one deployment may plan for.
        cuda_graphs: Replay the continuous engine's decode step as CUDA graphs.
        engine: What generates for the deployments created on this endpoint: ``auto`` (continuous batching
            on a GPU where the model supports it, static batches otherwise), ``static``, ``continuous`` or
            ``transformers`` (transformers' own continuous batching, greedy only).
        log_max_bytes: Size at which the server's ``server.log`` rotates.
        log_backups: Rotated logs kept (``server.log.1`` ...).
    """

    VERSION: ClassVar[int] = 1

    max_batch_size: int = attrs.field(default=16, metadata=bounds(1))
    batch_window_ms: int = attrs.field(default=5, metadata=bounds(0))
    max_body_bytes: int = attrs.field(default=1_048_576, metadata=bounds(1))
    max_new_tokens_cap: int = attrs.field(default=1024, metadata=bounds(1))
    torch_threads: int = attrs.field(default=0, metadata=bounds(0))
    max_context: int = attrs.field(default=0, metadata=bounds(0))
    prefill_tokens: int = attrs.field(default=8192, metadata=bounds(1))
    gpu_memory_fraction_pct: int = attrs.field(default=90, metadata=bounds(1, 100))
    cuda_graphs: bool = True
    engine: EngineName = "auto"
    log_max_bytes: int = attrs.field(default=1_048_576, metadata=bounds(1024))
    log_backups: int = attrs.field(default=3, metadata=bounds(0))

    def to_dict(self) -> dict[str, Any]:
        """Return the versioned record the server reads (see :meth:`from_dict`)."""
        return {"version": self.VERSION, **attrs.asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServerSettings:
        """Read a record written by :meth:`to_dict` (settings it lacks take their defaults).

        Raises:
            ValidationError: Not a record of this version, or a bad value (each named).
        """
        if data.get("version") != cls.VERSION:
            raise ValidationError(
                [Problem("settings", f"not a version {cls.VERSION} server settings record", "recreate the endpoint")],
                "unreadable endpoint settings",
            )
        return cls(**_typed_fields(cls, {k: v for k, v in data.items() if k != "version"}, "settings"))

    def to_json(self) -> str:
        """Return :meth:`to_dict` as JSON."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ServerSettings:
        """Read a record written by :meth:`to_json` (see :meth:`from_dict`)."""
        return cls.from_dict(json_object(text, "settings", "unreadable endpoint settings"))


def json_object(text: str, where: str, message: str) -> dict[str, Any]:
    """Parse a record's JSON text, which must be an object.

    Raises:
        ValidationError: Not JSON, or not an object (named ``where``, with ``message``).
    """
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ValidationError([Problem(where, "not a JSON object")], message)
    return data


def _typed_fields(cls: type, data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Strictly private: convert a record's values to ``cls``'s field types, reporting every problem."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in attrs.fields(cls)}
    problems: list[Problem] = []
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            problems.append(Problem(f"{where}.{key}", "unknown setting", f"valid: {', '.join(fields)}"))
            continue
        converted, reason = convert_value(value, hints[key], fields[key].metadata)
        if converted is BAD:
            problems.append(Problem(f"{where}.{key}", reason or "bad value"))
        else:
            out[key] = converted
    if problems:
        raise ValidationError(problems, f"bad {where}")
    return out
