"""Local online endpoints: a real HTTP server process per endpoint, managed like Azure's.

:class:`LocalEndpoints` implements the endpoint half of :class:`~ftkit.backends.base.Backend` for the local
backend. Creating an endpoint generates its keys and starts its server (``python -m
ftkit.serve``) on a free loopback port, which becomes the endpoint's for its whole life: a
restart (``create_endpoint`` after a crash) listens on the same port, so clients' saved URLs keep working, and
fails with :class:`~ftkit.exceptions.ConflictError` if another process took it meanwhile. Creating a
deployment records it in the endpoint's ``endpoint.json`` and asks the server (over an admin route with a key
of its own) to load the model, waiting until it serves or failed. Traffic and keys live in files the server
re-reads when they change, so moving traffic or regenerating a key takes effect without a restart.
Everything is persisted under ``{home}/endpoints/NAME/`` (see :mod:`ftkit.serve.files`), so another process
(``ftkit endpoint list``, ``ftkit endpoint delete``, ``ftkit cleanup``) sees and manages the same endpoints;
a server that died is reported with provisioning state ``Failed`` and its log tail.

The server process itself is started, probed and stopped by :mod:`.endpoint_process`; the HTTP calls to it
(the admin reload, a scoring request) are :mod:`.endpoint_client`. Importing this module is cheap: no torch, no
FastAPI (those load in the server process); httpx loads on first use.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from ...deployment_settings import DEVICE_CHOICES, ENGINES, EngineName, ServerSettings, valid_device
from ...exceptions import (
    ConflictError,
    DeploymentError,
    NotFoundError,
    ProbeFailedError,
    Problem,
    ValidationError,
    closest,
)
from ...interrupts import deferred
from ...retry import call as retry_call
from ...serve.files import EndpointFiles, new_key
from ...serve.records import DeploymentRecord, read_server_settings
from ..base import DeploymentInfo, DeploymentSpec, EndpointInfo, EndpointKeys, EndpointSpec
from .endpoint_client import DEPLOYMENT_HEADER, admin_reload, post_score
from .endpoint_process import PORT_TAKEN, is_server_alive, port_open, start_server, stop_server, wait_listening

__all__ = ["LocalEndpoints"]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]$")


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValidationError(
            [
                Problem(
                    f"{kind}.name",
                    f"{name!r} is not a valid {kind} name",
                    "use 3 to 32 letters, digits and hyphens, starting with a letter and not ending with a hyphen",
                )
            ],
            f"invalid {kind} name",
        )


class LocalEndpoints:
    """Online endpoints served from this machine, one server process per endpoint.

    Args:
        home: The ftkit home; endpoints live under ``{home}/endpoints``.
        settings: The server settings of the endpoints this object creates (or restarts) when their
            :class:`~ftkit.backends.base.EndpointSpec` brings none (a job's ``deploy.server:``), and the engine of
            the deployments it creates. ``None``: the defaults, and each deployment takes the engine its endpoint
            was created with.
        start_timeout_s: How long to wait for a server to start listening.
        load_timeout_s: How long to wait for a deployment's model to load.
    """

    def __init__(
        self,
        home: Path,
        settings: ServerSettings | None = None,
        *,
        start_timeout_s: float = 120.0,
        load_timeout_s: float = 600.0,
    ) -> None:
        self.home = Path(home)
        self.root = self.home / "endpoints"
        self.settings = settings if settings is not None else ServerSettings()
        if self.settings.engine not in ENGINES:  # built in Python, not converted: checked here as the job file is
            near = closest(str(self.settings.engine), ENGINES)
            hint = f"did you mean {near[0]}? " if near else ""
            raise ValidationError(
                [
                    Problem(
                        "engine",
                        f"{self.settings.engine!r} is not an engine",
                        f"{hint}choose one of: {', '.join(ENGINES)}",
                    )
                ],
                "invalid local endpoint settings",
            )
        # Whose engine a new deployment takes: this object's when it was given settings, else its endpoint's.
        self._engine: EngineName | None = settings.engine if settings is not None else None
        self.start_timeout_s = start_timeout_s
        self.load_timeout_s = load_timeout_s
        # Servers this object started: polled so that an exited child is reaped rather than left a zombie.
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def __repr__(self) -> str:
        return f"LocalEndpoints({str(self.home)!r})"

    # -- helpers -------------------------------------------------------------------------------------------

    def _files(self, name: str) -> EndpointFiles:
        return EndpointFiles(self.root / name)

    def _existing(self, name: str) -> EndpointFiles:
        # Only a valid endpoint name can exist; anything else ("..", "a/b") must not become a path.
        files = self._files(name) if isinstance(name, str) and _NAME.match(name) else None
        if files is None or not files.exists():
            raise NotFoundError(
                f"endpoint {name!r} not found; endpoints: {', '.join(self.names()) or 'none'}",
                operation="get_endpoint",
                status_code=404,
            )
        return files

    def names(self) -> list[str]:
        """Return the names of the endpoints under this home, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "endpoint.json").is_file())

    def _server(self, files: EndpointFiles) -> tuple[int | None, int | None, bool]:
        """Return ``(pid, port, alive)`` of the endpoint's server."""
        proc = self._procs.get(files.name)
        if proc is not None and proc.poll() is not None:
            del self._procs[files.name]
        info = files.read_server()
        pid, port = info.get("pid"), info.get("port")
        pid = pid if isinstance(pid, int) else None
        port = port if isinstance(port, int) else None
        alive = is_server_alive(files, pid) and port is not None and port_open(port)
        return pid, port, alive

    def server_error(self, name: str) -> str | None:
        """Say why an endpoint's server is not serving, or ``None`` when it is.

        Args:
            name: The endpoint.

        Returns:
            ``None`` for a live server; else what is wrong and the last lines of its log.
        """
        files = self._existing(name)
        pid, port, alive = self._server(files)
        if alive:
            return None
        what = f"server process {pid} is gone" if pid is not None else "the server never reported that it listens"
        if pid is not None and is_server_alive(files, pid):
            what = f"server process {pid} does not accept connections on port {port}"
        return f"{what}; last log lines:\n{files.log_tail(20)}"

    def _ensure_server(self, files: EndpointFiles) -> int:
        pid, port, alive = self._server(files)
        if alive and port is not None:
            return port
        # Under the lock, and checked again there: two processes (or threads) finding the server down must not
        # both start one, or the first one's server.json is overwritten and its process and port left behind.
        with files.locked():
            pid, port, alive = self._server(files)
            if alive and port is not None:
                return port
            return self._start_server(files, pid, port)

    def _start_server(self, files: EndpointFiles, pid: int | None, port: int | None) -> int:
        if pid is not None:  # a half-dead server: make sure it is gone before starting another
            stop_server(files, pid, port, timeout_s=5.0)
        # The endpoint's port is fixed at its first start (recorded in endpoint.json): its URL never changes.
        own = _recorded_port(files)
        # The pid goes on disk before anything else can happen (signals are held until it is there): a
        # delete or `ftkit cleanup` while the server is still loading must find it, or it would outlive
        # the endpoint's state. The server replaces the record with its port once it listens.
        with deferred():
            proc = start_server(files, own)
            self._procs[files.name] = proc
            try:
                files.write_server({"pid": proc.pid, "port": None, "starting": True})
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        port = wait_listening(files, proc, self.start_timeout_s)
        if port is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            if proc.poll() == PORT_TAKEN:
                raise ConflictError(
                    f"endpoint {files.name}: its port {own} (http://127.0.0.1:{own}) is taken by another process; "
                    "an endpoint keeps its URL, so it does not move to another port: free the port, or delete and "
                    "recreate the endpoint (it then gets a new URL)",
                    operation="create_endpoint",
                )
            raise ProbeFailedError(
                f"endpoint {files.name}: the server did not start listening within {self.start_timeout_s:.0f}s "
                f"(exit status {proc.poll()}); see the logs",
                endpoint=files.name,
                logs=files.log_tail(50),
            )
        if own is None:
            config = files.read_config()  # the caller holds the endpoint's lock
            config["port"] = port
            files.write_config(config)
        return port

    def _info(self, files: EndpointFiles) -> EndpointInfo:
        config = files.read_config()
        _, port, alive = self._server(files)
        port = port if port is not None else _recorded_port(files, config)
        base = f"http://127.0.0.1:{port}" if port is not None else "http://127.0.0.1:0"
        deployments = config.get("deployments", {})
        return EndpointInfo(
            name=files.name,
            scoring_uri=f"{base}/score",
            provisioning_state="Succeeded" if alive else "Failed",
            traffic=dict(config.get("traffic", {})),
            deployments=tuple(sorted(deployments)),
            openai_uri=f"{base}/v1/chat/completions",
            tags=dict(config.get("tags", {})),
        )

    def _admin_reload(self, files: EndpointFiles, port: int) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
        return admin_reload(files, port, self.load_timeout_s)

    # -- the Backend protocol's endpoint operations --------------------------------------------------------

    def create_endpoint(self, spec: EndpointSpec) -> EndpointInfo:
        """Create (or update) an endpoint with two keys and start its server.

        Args:
            spec: The endpoint.

        Returns:
            The endpoint, serving (with no deployments yet if new).

        Raises:
            ValidationError: A bad name or auth mode.
            ConflictError: Restarting, the endpoint's port is taken by another process.
            ProbeFailedError: The server did not start (with its log).
        """
        _check_name("endpoint", spec.name)
        if spec.auth_mode != "key":
            raise ValidationError(
                [Problem("endpoint.auth_mode", f"{spec.auth_mode!r} is not supported locally", "use 'key'")]
            )
        files = self._files(spec.name)
        with files.locked():
            config = files.read_config()
            config.setdefault("created_at", time.time())
            config.update(
                name=spec.name,
                description=spec.description,
                auth_mode=spec.auth_mode,
                tags=dict(spec.tags),
                # The job's deploy.server settings when it has them, else this object's.
                settings=(spec.server or self.settings).to_dict(),
            )
            config.setdefault("deployments", {})
            config.setdefault("traffic", {})
            files.write_config(config)
            keys = files.read_keys()
            if not all(keys.get(k) for k in ("primary", "secondary", "admin")):
                files.write_keys({"primary": new_key(), "secondary": new_key(), "admin": new_key()})
        self._ensure_server(files)
        return self._info(files)

    def create_deployment(self, spec: DeploymentSpec) -> DeploymentInfo:
        """Create (or update) a deployment and wait until the server serves it.

        Args:
            spec: The deployment; ``spec.model.path`` must be a local model directory.

        Returns:
            The deployment, ``Succeeded``.

        Raises:
            NotFoundError: The endpoint does not exist.
            ValidationError: A bad name, or a model without a local directory.
            DeploymentError: The model failed to load (with the server's log).
        """
        _check_name("deployment", spec.name)
        if not valid_device(spec.settings.device):
            raise ValidationError(
                [Problem("deploy.device", f"{spec.settings.device!r} is not a device", f"use {DEVICE_CHOICES}")],
                "invalid deployment",
            )
        files = self._existing(spec.endpoint)
        path = spec.model.path
        if path is None or not Path(path).is_dir():
            raise ValidationError(
                [
                    Problem(
                        "deployment.model.path",
                        f"model {spec.model.id} has no local directory ({path})",
                        "register the model with the local backend",
                    )
                ]
            )
        with files.locked():
            config = files.read_config()
            record = DeploymentRecord(
                model_id=spec.model.id,
                model_name=spec.model.name,
                model_version=spec.model.version,
                model_path=str(Path(path).resolve()),
                settings=spec.settings,
                engine=self._engine or read_server_settings(config).engine,
            ).to_dict()
            config.setdefault("deployments", {})[spec.name] = record
            files.write_config(config)
        port = self._ensure_server(files)
        results, placements = self._admin_reload(files, port)
        result = results.get(spec.name, "Failed: the server did not load it")
        state = "Succeeded" if result == "Succeeded" else "Failed"
        with files.locked():
            config = files.read_config()
            current = config.get("deployments", {}).get(spec.name)
            if current is not None:
                current["provisioning_state"] = state
                current["error"] = None if state == "Succeeded" else result.removeprefix("Failed: ")
                current["placement"] = placements.get(spec.name)
                files.write_config(config)
        if state != "Succeeded":
            raise DeploymentError(
                f"deployment {spec.name} of endpoint {spec.endpoint} failed: {result.removeprefix('Failed: ')}",
                endpoint=spec.endpoint,
                deployment=spec.name,
                logs=files.log_tail(50),
            )
        return DeploymentInfo(
            name=spec.name,
            endpoint=spec.endpoint,
            provisioning_state=state,
            model_id=spec.model.id,
            instance_type=spec.settings.instance_type,
        )

    def get_deployment(self, endpoint: str, name: str) -> DeploymentInfo:
        """Return a deployment (``Failed`` when the endpoint's server is down).

        Raises:
            NotFoundError: The endpoint or deployment does not exist.
        """
        files = self._existing(endpoint)
        record = files.read_config().get("deployments", {}).get(name)
        if not isinstance(record, dict):
            raise NotFoundError(f"deployment {name!r} of endpoint {endpoint!r} not found", operation="get_deployment")
        _, _, alive = self._server(files)
        deployment = DeploymentRecord.from_dict(record)
        return DeploymentInfo(
            name=name,
            endpoint=endpoint,
            provisioning_state=deployment.provisioning_state if alive else "Failed",
            model_id=deployment.model_id,
            instance_type=deployment.settings.instance_type,
        )

    def set_traffic(self, endpoint: str, traffic: Mapping[str, int]) -> EndpointInfo:
        """Route traffic between the endpoint's deployments.

        Args:
            endpoint: The endpoint.
            traffic: Deployment name to percent: integers from 0 to 100 summing to 100 (or all 0).

        Raises:
            NotFoundError: The endpoint does not exist.
            ValidationError: Unknown deployments or bad percentages.
        """
        files = self._existing(endpoint)
        with files.locked():
            config = files.read_config()
            known = sorted(config.get("deployments", {}))
            problems = []
            for name, pct in traffic.items():
                if name not in known:
                    problems.append(
                        Problem(f"traffic.{name}", "no such deployment", f"deployments: {', '.join(known) or 'none'}")
                    )
                if isinstance(pct, bool) or not isinstance(pct, int) or not 0 <= pct <= 100:
                    problems.append(Problem(f"traffic.{name}", f"{pct!r} is not a percentage from 0 to 100"))
            total = sum(p for p in traffic.values() if isinstance(p, int))
            if not problems and total not in (0, 100):
                problems.append(Problem("traffic", f"percentages sum to {total}", "make them sum to 100 (or all 0)"))
            if problems:
                raise ValidationError(problems, f"invalid traffic for endpoint {endpoint}")
            config["traffic"] = {name: int(pct) for name, pct in traffic.items()}
            files.write_config(config)
        return self._info(files)

    def get_endpoint(self, name: str) -> EndpointInfo:
        """Return the endpoint; ``provisioning_state`` is ``Failed`` when its server is not serving.

        Raises:
            NotFoundError: It does not exist.
        """
        return self._info(self._existing(name))

    def placements(self, endpoint: str) -> dict[str, dict[str, Any]]:
        """Where each deployment of an endpoint runs, as its server reported at load time.

        Returns:
            Deployment name to ``device``, ``dtype``, ``engine``, ``weights_gib``, ``kv_cache_gib``, ``slots``
            and ``context`` (an empty record for a deployment that never loaded).

        Raises:
            NotFoundError: The endpoint does not exist.
        """
        deployments = self._existing(endpoint).read_config().get("deployments", {})
        return {
            name: dict(record.get("placement") or {})
            for name, record in sorted(deployments.items())
            if isinstance(record, dict)
        }

    def list_endpoints(self) -> list[EndpointInfo]:
        """Return every endpoint under this home, by name."""
        infos = []
        for name in self.names():
            with contextlib.suppress(NotFoundError):  # deleted meanwhile
                infos.append(self.get_endpoint(name))
        return infos

    def get_keys(self, endpoint: str) -> EndpointKeys:
        """Return the endpoint's primary and secondary keys.

        Raises:
            NotFoundError: The endpoint does not exist.
        """
        keys = self._existing(endpoint).read_keys()
        return EndpointKeys(primary=keys.get("primary", ""), secondary=keys.get("secondary", ""))

    def regenerate_key(self, endpoint: str, which: Literal["primary", "secondary"]) -> EndpointKeys:
        """Replace one key; the server rejects the old one from its next request on.

        Raises:
            NotFoundError: The endpoint does not exist.
            ValidationError: ``which`` is neither ``primary`` nor ``secondary``.
        """
        if which not in ("primary", "secondary"):
            raise ValidationError([Problem("which", f"{which!r} is not a key", "use 'primary' or 'secondary'")])
        files = self._existing(endpoint)
        with files.locked():
            keys = files.read_keys()
            keys[which] = new_key()
            files.write_keys(keys)
        return EndpointKeys(primary=keys["primary"], secondary=keys["secondary"])

    def score(
        self,
        endpoint: str,
        body: Mapping[str, Any],
        *,
        deployment: str | None = None,
        timeout_s: float = 90.0,
    ) -> Any:
        """POST ``body`` to the endpoint's ``/score`` with its primary key and return the decoded answer.

        Overload (503), rate limiting (429) and timeouts (408) are retried under ftkit's retry policy.

        Raises:
            NotFoundError: The endpoint does not exist.
            DeploymentError: Its server is not running (with its log).
            ScoringError: The endpoint answered with an error.
        """
        files = self._existing(endpoint)
        headers = {"Authorization": f"Bearer {files.read_keys().get('primary', '')}"}
        if deployment is not None:
            headers[DEPLOYMENT_HEADER] = deployment

        def attempt() -> Any:
            _, port, alive = self._server(files)
            if not alive or port is None:
                raise DeploymentError(
                    f"endpoint {endpoint}'s server is not running; recreate the endpoint or delete it",
                    endpoint=endpoint,
                    deployment=deployment,
                    logs=files.log_tail(50),
                )
            return post_score(endpoint, port, body, headers, deployment=deployment, timeout_s=timeout_s)

        return retry_call(attempt)

    def get_logs(self, endpoint: str, deployment: str, *, lines: int = 200) -> str:
        """Return the last lines of the endpoint server's log (shared by its deployments).

        Raises:
            NotFoundError: The endpoint or deployment does not exist.
        """
        files = self._existing(endpoint)
        if deployment not in files.read_config().get("deployments", {}):
            raise NotFoundError(f"deployment {deployment!r} of endpoint {endpoint!r} not found", operation="get_logs")
        return files.log_tail(lines)

    def delete_deployment(self, endpoint: str, deployment: str) -> None:
        """Delete a deployment and unload its model (no error if it is gone).

        Raises:
            ConflictError: It still receives traffic (move the traffic first, as on Azure).
        """
        try:
            files = self._existing(endpoint)
        except NotFoundError:
            return
        with files.locked():
            config = files.read_config()
            deployments = config.get("deployments", {})
            if deployment not in deployments:
                return
            if config.get("traffic", {}).get(deployment, 0) > 0:
                raise ConflictError(
                    f"deployment {deployment} of endpoint {endpoint} still has "
                    f"{config['traffic'][deployment]}% of the traffic; set its traffic to 0 first",
                    operation="delete_deployment",
                )
            del deployments[deployment]
            config.get("traffic", {}).pop(deployment, None)
            files.write_config(config)
        _, port, alive = self._server(files)
        if alive and port is not None:
            self._admin_reload(files, port)

    def delete_endpoint(self, name: str) -> None:
        """Stop the endpoint's server, wait until its port is closed, and remove its state (no error if gone).

        Raises:
            ValidationError: ``name`` is not an endpoint name (``..`` would otherwise name the ftkit home).
            DeploymentError: The server could not be stopped.
        """
        _check_name("endpoint", name)
        files = self._files(name)
        if not files.root.is_dir():
            return
        pid, port, _ = self._server(files)
        stopped = stop_server(files, pid, port)
        proc = self._procs.pop(name, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        if not stopped:
            raise DeploymentError(f"endpoint {name}: could not stop server process {pid} (port {port})", endpoint=name)
        shutil.rmtree(files.root, ignore_errors=True)


def _recorded_port(files: EndpointFiles, config: Mapping[str, Any] | None = None) -> int | None:
    """Strictly private: the endpoint's own port, recorded at its first start (``None`` before that)."""
    port = (config if config is not None else files.read_config()).get("port")
    return port if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536 else None
