"""Fixtures for the local endpoint server tests: a tiny model and one shared live endpoint per module."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("torch")

from ftkit.backends.base import DeploymentSpec, EndpointInfo, EndpointKeys, EndpointSpec, RegisteredModel
from ftkit.backends.local.endpoints import LocalEndpoints
from ftkit.deployment_settings import DeploymentSettings, ServerSettings


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Phi-3 chat model directory (built once per session)."""
    from ftkit.backends.local.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> RegisteredModel:
    return RegisteredModel(name="tiny", version="1", id="models:/tiny/1", path=tiny_model_dir)


@attrs.frozen
class LiveEndpoint:
    """A running endpoint shared by a test module."""

    endpoints: LocalEndpoints
    info: EndpointInfo

    @property
    def keys(self) -> EndpointKeys:
        """The current keys (a test may regenerate them)."""
        return self.endpoints.get_keys(self.info.name)

    @property
    def base(self) -> str:
        return self.info.scoring_uri.removesuffix("/score")

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.keys.primary}"}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_model: RegisteredModel) -> Iterator[LiveEndpoint]:
    """An endpoint with deployments blue and green (blue 100%), plus a tight-queue and a fast-timeout one."""
    home = tmp_path_factory.mktemp("serve-home")
    endpoints = LocalEndpoints(home, ServerSettings(max_new_tokens_cap=1500))
    endpoints.create_endpoint(EndpointSpec(name="ep-test", description="tests", tags={"createdBy": "ftkit"}))
    for name, extra in (
        ("blue", {}),
        ("green", {}),
        ("tight", {"max_queue": 1}),
        ("hasty", {"request_timeout_ms": 1}),  # shorter than the batching window: always late
    ):
        spec = DeploymentSpec(name=name, endpoint="ep-test", model=tiny_model, settings=DeploymentSettings(**extra))
        endpoints.create_deployment(spec)
    info = endpoints.set_traffic("ep-test", {"blue": 100})
    try:
        yield LiveEndpoint(endpoints=endpoints, info=info)
    finally:
        endpoints.delete_endpoint("ep-test")


# Driving an engine through its Job interface (the server's side of it): the engine tests share these.


def make_job(model: Any, prompt: Sequence[int], params: Any, *, stream: bool = True, timeout_s: float = 120) -> Any:
    """A job of ``prompt`` for an engine serving ``model`` (a LoadedModel), on the running event loop."""
    from ftkit.serve.contract.stops import RowText
    from ftkit.serve.engines.base import Job

    return Job(
        prompt=prompt,
        params=params,
        loop=asyncio.get_running_loop(),
        events=asyncio.Queue(),
        deadline=time.monotonic() + timeout_s,
        text=RowText(model.decode, params.stop, streaming=stream),
        stream=stream,
    )


async def finish(job: Any) -> str:
    """Wait for a job's end; return its reason (only text events may come before it)."""
    while True:
        kind, value = await asyncio.wait_for(job.events.get(), timeout=60)
        if kind == "done":
            return str(value)
        assert kind == "text", (kind, value)


def reference(model: Any, prompt: Sequence[int], params: Any) -> list[int]:
    """The static path's answer for one request alone."""
    tokens: list[int] = []
    model.generate([prompt], [params], lambda _row, token: tokens.append(token) is None)
    return tokens


def answer_all(engine: Any, model: Any, prompts: Sequence[Sequence[int]], params: Any) -> list[list[int]]:
    """Submit one job per prompt at once; each must end at its length; return their tokens."""

    async def run() -> list[list[int]]:
        jobs = [make_job(model, p, params) for p in prompts]
        engine.submit(jobs)
        assert [await finish(j) for j in jobs] == ["length"] * len(jobs)
        return [j.tokens for j in jobs]

    return asyncio.run(run())
