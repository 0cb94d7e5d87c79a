"""What the endpoint server knows: settings, keys, traffic and the loaded deployments.

Keys and traffic are re-read from the endpoint's files when they change (two ``stat`` calls per request
otherwise), so regenerating a key or moving traffic needs no restart. Which deployment answers: the
``azureml-model-deployment`` header if present, else (chat completions) a ``model`` that names a deployment,
else a weighted random pick by the endpoint's traffic.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hmac
import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi.concurrency import run_in_threadpool

from ...exceptions import ValidationError
from ..engines.base import Engine
from ..engines.generation import LoadedModel
from ..files import EndpointFiles, stat_key
from ..placement import Placement, load_deployment
from ..records import DeploymentRecord, read_server_settings
from .errors import HTTPError

__all__ = ["DEPLOYMENT_HEADER", "Deployment", "ServerState"]

log = logging.getLogger("ftkit.serve")

DEPLOYMENT_HEADER = "azureml-model-deployment"
PREPARE_THREADS = 2  # few: each one competes with the event loop for the GIL

T = TypeVar("T")


class Deployment:
    """A loaded deployment: its record from ``endpoint.json``, model, engine and placement."""

    def __init__(
        self,
        name: str,
        record: DeploymentRecord,
        model: LoadedModel,
        engine: Engine,
        placement: Placement,
    ) -> None:
        self.name = name
        self.record = record
        self.model = model
        self.engine = engine
        self.placement = placement
        self.created = int(time.time())

    @property
    def timeout_s(self) -> float:
        """The per-request timeout."""
        return self.record.timeout_s


class ServerState:
    """What the server knows: settings, keys, traffic and loaded deployments.

    Args:
        files: The endpoint's files.
    """

    def __init__(self, files: EndpointFiles) -> None:
        self.files = files
        settings = read_server_settings(files.read_config())
        self.settings = settings
        self.max_batch_size = settings.max_batch_size
        self.window_s = settings.batch_window_ms / 1000.0
        self.max_body_bytes = settings.max_body_bytes
        self.max_new_tokens_cap = settings.max_new_tokens_cap
        self.deployments: dict[str, Deployment] = {}
        self.failed: dict[str, str] = {}
        self.traffic: dict[str, int] = {}
        self.wanted: dict[str, DeploymentRecord] = {}
        self.unreadable: dict[str, str] = {}
        self._keys: tuple[bytes, ...] = ()
        self._admin: bytes = b""
        self._config_stat: tuple[int, int, int] | None = None
        self._keys_stat: tuple[int, int, int] | None = None
        self._reload_lock = asyncio.Lock()
        # Per-request CPU work (JSON, checks, templating, tokenization) runs here, never on the event loop.
        self._pool = concurrent.futures.ThreadPoolExecutor(PREPARE_THREADS, thread_name_prefix="ftkit-prepare")
        self.refresh()

    def __repr__(self) -> str:
        return f"ServerState({self.files.name!r}, deployments={sorted(self.deployments)})"

    def refresh(self) -> None:
        """Re-read traffic and keys if their files changed (two ``stat`` calls otherwise)."""
        cstat = stat_key(self.files.config_path)
        if cstat != self._config_stat:
            config = self.files.read_config()
            traffic = config.get("traffic", {})
            self.traffic = {k: int(v) for k, v in traffic.items() if isinstance(v, int)}
            self.wanted, self.unreadable = {}, {}
            for name, raw in (config.get("deployments") or {}).items():
                try:
                    self.wanted[name] = DeploymentRecord.from_dict(raw if isinstance(raw, dict) else {})
                except ValidationError as exc:
                    self.unreadable[name] = exc.render()
            self._config_stat = cstat
        kstat = stat_key(self.files.keys_path)
        if kstat != self._keys_stat:
            keys = self.files.read_keys()
            self._keys = tuple(keys[k].encode() for k in ("primary", "secondary") if keys.get(k))
            self._admin = keys.get("admin", "").encode()
            self._keys_stat = kstat

    def check_key(self, authorization: str | None, *, admin: bool = False) -> None:
        """Accept ``Authorization: Bearer <key>`` with the primary or secondary (or admin) key.

        Raises:
            HTTPError: 401, without ever echoing what was sent.
        """
        self.refresh()
        scheme, _, token = (authorization or "").partition(" ")
        given = token.strip().encode()
        expected = (self._admin,) if admin else self._keys
        # Compare against every key, always, in constant time: no early exit that tells which one was close.
        ok = False
        for key in expected:
            ok |= bool(key) and hmac.compare_digest(given, key)
        if scheme.lower() != "bearer" or not ok:
            raise HTTPError(
                401,
                "missing or invalid key: send 'Authorization: Bearer <key>' with the endpoint's primary or "
                "secondary key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def pick(self, header: str | None, model: str | None = None) -> Deployment:
        """Choose the deployment that answers (header, else a ``model`` naming one, else traffic).

        Raises:
            HTTPError: 404 for an unknown deployment or no traffic; 503 for one that is not ready.
        """
        self.refresh()
        names = sorted(self.wanted)
        name = header.strip() if header and header.strip() else None
        if name is None and model in self.wanted:
            name = model
        if name is not None:
            if name not in self.wanted:
                listed = ", ".join(names) or "none"
                raise HTTPError(
                    404, f"deployment {name[:64]!r} not found; deployments: {listed}", param=DEPLOYMENT_HEADER
                )
            if name not in self.deployments:
                state = "failed to load" if name in self.failed else "is not ready yet"
                raise HTTPError(503, f"deployment {name!r} {state}", headers={"Retry-After": "5"})
            return self.deployments[name]
        live = [(n, w) for n, w in sorted(self.traffic.items()) if w > 0 and n in self.deployments]
        if not live:
            raise HTTPError(
                404,
                "No valid deployments to route to. Please check that the endpoint has at least one deployment with "
                f"positive weight values or use a deployment specific header ({DEPLOYMENT_HEADER}) to route.",
            )
        chosen = random.choices([n for n, _ in live], weights=[w for _, w in live])[0]
        return self.deployments[chosen]

    async def reload(self) -> dict[str, str]:
        """Load the deployments ``endpoint.json`` lists, reload changed ones, unload removed ones.

        Returns:
            Each wanted deployment's state: ``Succeeded`` or ``Failed: <why>``.
        """
        async with self._reload_lock:
            self._config_stat = None
            self.refresh()
            for name in list(self.deployments):
                if name not in self.wanted:
                    self.deployments.pop(name).engine.close()
                    log.info("deployment %s removed", name)
            for name in list(self.failed):
                if name not in self.wanted:
                    del self.failed[name]
            results: dict[str, str] = {name: f"Failed: {why}" for name, why in self.unreadable.items()}
            for name, record in sorted(self.wanted.items()):
                current = self.deployments.get(name)
                if current is not None and current.record.reload_key() == record.reload_key():
                    current.record = record  # timeouts apply at once
                    results[name] = "Succeeded"
                    continue
                try:
                    deployment = await run_in_threadpool(self._load, name, record)
                except Exception as exc:
                    message = f"{type(exc).__name__}: {exc}"
                    log.exception("deployment %s failed to load", name)
                    self.failed[name] = message
                    results[name] = f"Failed: {message}"
                    continue
                self.failed.pop(name, None)
                self.deployments[name] = deployment
                if current is not None:
                    current.engine.close()
                results[name] = "Succeeded"
            return results

    def _load(self, name: str, record: DeploymentRecord) -> Deployment:
        started = time.monotonic()
        log.info("deployment %s: loading model %s from %s", name, record.model_id, record.model_path)
        model, engine, placement = load_deployment(
            name, record, max_batch_size=self.max_batch_size, window_s=self.window_s, settings=self.settings
        )
        took = time.monotonic() - started
        log.info("deployment %s: ready in %.1fs on %s, engine %s", name, took, placement.as_dict(), engine.describe())
        return Deployment(name, record, model, engine, placement)

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the request-preparation threads and return its result (or raise its error)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))

    def close(self) -> None:
        """Stop every deployment's worker and the preparation threads."""
        for deployment in self.deployments.values():
            deployment.engine.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
