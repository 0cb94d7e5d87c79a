"""``engine="transformers"``: transformers' own continuous batching behind ftkit's server, as clients see it.

A real endpoint (its own server process) with the tiny model, driven by the official ``openai`` client: greedy
answers, streamed or not, equal the static path's; stop strings and ``max_tokens`` end rows as on the other
engines; a request that asks to sample is a 400 naming the engine; the placement says which engine serves.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

openai = pytest.importorskip("openai")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ftkit.backends.base import DeploymentSpec, EndpointSpec, RegisteredModel  # noqa: E402
from ftkit.backends.local.endpoints import LocalEndpoints  # noqa: E402
from ftkit.deployment_settings import ServerSettings  # noqa: E402

if not hasattr(transformers.GenerationMixin, "init_continuous_batching"):
    pytest.skip("this transformers has no continuous batching", allow_module_level=True)

QUESTION = [{"role": "user", "content": "What is 12 plus 30?"}]


def _serve(home: Path, engine: str, name: str, model: RegisteredModel) -> tuple[LocalEndpoints, Any]:
    endpoints = LocalEndpoints(home, ServerSettings(engine=engine, max_batch_size=4))
    endpoints.create_endpoint(EndpointSpec(name=name))
    endpoints.create_deployment(DeploymentSpec(name="hf-cb", endpoint=name, model=model))
    info = endpoints.set_traffic(name, {"hf-cb": 100})
    assert info.openai_uri is not None
    client = openai.OpenAI(
        base_url=info.openai_uri.removesuffix("/chat/completions"),
        api_key=endpoints.get_keys(name).primary,
        max_retries=0,
        timeout=120,
    )
    return endpoints, client


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model: RegisteredModel) -> Iterator[tuple[Any, Any, Any]]:
    """The transformers engine's endpoint and, for reference, the static batcher's (its own server each)."""
    home = tmp_path_factory.mktemp("hf-home")
    started: list[tuple[LocalEndpoints, str]] = []
    try:
        endpoints, client = _serve(home, "transformers", "ep-hf", tiny_model)
        started.append((endpoints, "ep-hf"))
        reference, ref_client = _serve(home, "static", "ep-static", tiny_model)
        started.append((reference, "ep-static"))
        yield endpoints, client, ref_client
    finally:
        for owner, name in started:
            owner.delete_endpoint(name)


def static_answer(ref_client: Any, max_new_tokens: int) -> str:
    answer = ref_client.chat.completions.create(
        model="hf-cb", messages=QUESTION, max_tokens=max_new_tokens, temperature=0
    )
    return str(answer.choices[0].message.content)


def test_greedy_answers_equal_the_static_paths(served: tuple[Any, Any, Any]) -> None:
    endpoints, client, ref_client = served
    want = static_answer(ref_client, 16)
    whole = client.chat.completions.create(model="hf-cb", messages=QUESTION, max_tokens=16, temperature=0)
    assert whole.choices[0].message.content == want
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 16
    pieces = []
    for chunk in client.chat.completions.create(
        model="hf-cb", messages=QUESTION, max_tokens=16, temperature=0, stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    assert "".join(pieces) == want
    assert endpoints.placements("ep-hf")["hf-cb"]["engine"] == "transformers"


def test_a_stop_string_ends_the_row(served: tuple[Any, Any, Any]) -> None:
    _, client, ref_client = served
    full = static_answer(ref_client, 24)
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip()
    answer = client.chat.completions.create(model="hf-cb", messages=QUESTION, max_tokens=24, temperature=0, stop=[stop])
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content == full[: full.index(stop)]


def test_sampling_is_refused_with_a_400_naming_the_engine(served: tuple[Any, Any, Any]) -> None:
    _, client, _ = served
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="hf-cb", messages=QUESTION, max_tokens=4, temperature=0.7)
    assert "engine 'transformers' answers greedily" in str(info.value)
    assert info.value.body["param"] == "temperature"


def test_the_cpu_cache_is_bounded_by_the_deployment(served: tuple[Any, Any, Any]) -> None:
    """On the CPU the manager's paged cache holds the deployment's slots, not 90% of the machine's RAM: the
    server stays small (it took 14 GiB of a 24 GiB machine before), whatever the machine."""
    psutil = pytest.importorskip("psutil")
    from ftkit.serve.engines.transformers import cpu_cache_limits
    from ftkit.serve.files import EndpointFiles

    endpoints, client, _ = served
    client.chat.completions.create(model="hf-cb", messages=QUESTION, max_tokens=4, temperature=0)
    pid = int(EndpointFiles(endpoints.root / "ep-hf").read_server()["pid"])
    rss = psutil.Process(pid).memory_info().rss
    assert rss < 2 * 1024**3, f"the transformers engine's server holds {rss / 1024**3:.1f} GiB"
    assert cpu_cache_limits(4, 4096) == {"num_blocks": 65, "max_batch_tokens": 2048}
