"""Device and engine of a local deployment, through the real server: ``deploy.device`` and the continuous engine.

The continuous engine runs on the CPU too (float32), which is how CI checks it end to end: served by the same
server as a static deployment of the same model, greedy answers must be identical, streamed or not.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ftkit.backends.base import DeploymentSpec, EndpointSpec, RegisteredModel
from ftkit.backends.local.endpoints import LocalEndpoints
from ftkit.deployment_settings import DeploymentSettings, ServerSettings
from ftkit.exceptions import DeploymentError, ValidationError

openai = pytest.importorskip("openai")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model: RegisteredModel) -> Iterator[LocalEndpoints]:
    """One endpoint, two deployments of one model: ``fixed`` (static batcher) and ``flow`` (continuous)."""
    home = tmp_path_factory.mktemp("placement-home")
    # Settings (slots, context) are the endpoint's, fixed when it is created; the engine is each deployment's.
    continuous = LocalEndpoints(home, ServerSettings(engine="continuous", max_batch_size=4, max_context=512))
    continuous.create_endpoint(EndpointSpec(name="ep-place"))
    static = LocalEndpoints(home, ServerSettings(engine="static"))
    static.create_deployment(
        DeploymentSpec(name="fixed", endpoint="ep-place", model=tiny_model, settings=DeploymentSettings(device="cpu"))
    )
    continuous.create_deployment(
        DeploymentSpec(name="flow", endpoint="ep-place", model=tiny_model, settings=DeploymentSettings(device="auto"))
    )
    continuous.set_traffic("ep-place", {"fixed": 50, "flow": 50})
    try:
        yield continuous
    finally:
        continuous.delete_endpoint("ep-place")


def _client(endpoints: LocalEndpoints, deployment: str) -> openai.OpenAI:
    info = endpoints.get_endpoint("ep-place")
    assert info.openai_uri is not None
    return openai.OpenAI(
        base_url=info.openai_uri.removesuffix("/chat/completions"),
        api_key=endpoints.get_keys("ep-place").primary,
        default_headers={"azureml-model-deployment": deployment},
        max_retries=0,
    )


def test_placement_is_recorded(served: LocalEndpoints) -> None:
    places = served.placements("ep-place")
    assert places["fixed"]["engine"] == "static"
    assert places["fixed"]["device"] == "cpu"
    flow = places["flow"]
    if not torch.cuda.is_available():  # auto is the CPU here
        assert (flow["device"], flow["dtype"]) == ("cpu", "float32")
    assert (flow["engine"], flow["slots"], flow["context"]) == ("continuous", 4, 512)
    assert flow["kv_cache_gib"] > 0
    # The paged cache: on the CPU, blocks for every row at a whole context (4 x 512 / 32).
    assert (flow["kv_blocks"], flow["block_size"], flow["kv_tokens"]) == (64, 32, 2048)
    from ftkit.cli.endpoint import _describe_placement

    line = _describe_placement(flow)
    assert "GiB KV cache (64 blocks x 32 = 2048 tokens; 4 rows, up to 512 tokens each)" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="compares two CPU float32 deployments")
def test_continuous_answers_equal_static_answers(served: LocalEndpoints) -> None:
    questions = ["What is 12 plus 30?", "hello there", "Tell me about rivers and the sea."]
    for question in questions:
        answers = []
        for deployment in ("fixed", "flow"):
            client = _client(served, deployment)
            messages = [{"role": "user", "content": question}]
            whole = client.chat.completions.create(model="x", messages=messages, max_tokens=20, temperature=0)
            stream = client.chat.completions.create(
                model="x", messages=messages, max_tokens=20, temperature=0, stream=True
            )
            streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            assert streamed == whole.choices[0].message.content
            answers.append((whole.choices[0].message.content, whole.usage.completion_tokens if whole.usage else 0))
        assert answers[0] == answers[1]


def test_stop_and_seed_on_the_continuous_engine(served: LocalEndpoints) -> None:
    """``stop`` cuts the answer before the stop string (streamed or not); equal seeds give equal samples."""
    client = _client(served, "flow")
    messages = [{"role": "user", "content": "Tell me about rivers and the sea."}]
    full = client.chat.completions.create(model="x", messages=messages, max_tokens=20, temperature=0)
    text = full.choices[0].message.content or ""
    stop = text.strip()[3:6]
    assert stop
    assert stop in text
    cut = client.chat.completions.create(model="x", messages=messages, max_tokens=20, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.index(stop)]
    stream = client.chat.completions.create(
        model="x", messages=messages, max_tokens=20, temperature=0, stop=[stop], stream=True
    )
    chunks = [c for c in stream if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text[: text.index(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"
    sampled = [
        client.chat.completions.create(model="x", messages=messages, max_tokens=16, temperature=1.5, seed=7)
        for _ in range(2)
    ]
    assert sampled[0].choices[0].message.content == sampled[1].choices[0].message.content


def test_a_prompt_longer_than_a_slot_is_a_400(served: LocalEndpoints) -> None:
    client = _client(served, "flow")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}], max_tokens=600)
    assert "context of 512 tokens" in str(caught.value)


def test_a_deployment_takes_its_endpoints_engine(served: LocalEndpoints, tiny_model: RegisteredModel) -> None:
    """Created by an object given no settings (the job runner's), a deployment serves with ``deploy.server.engine``."""
    runner = LocalEndpoints(served.home)
    runner.create_deployment(
        DeploymentSpec(name="inherit", endpoint="ep-place", model=tiny_model, settings=DeploymentSettings(device="cpu"))
    )
    try:
        assert runner.placements("ep-place")["inherit"]["engine"] == "continuous"
    finally:
        runner.delete_deployment("ep-place", "inherit")


def test_bad_device_and_engine_are_named(tmp_path: Path, tiny_model: RegisteredModel) -> None:
    with pytest.raises(ValidationError, match="engine"):
        LocalEndpoints(tmp_path, ServerSettings(engine="turbo"))
    with pytest.raises(ValidationError, match="did you mean static"):
        LocalEndpoints(tmp_path, ServerSettings(engine="statik"))
    with pytest.raises(ValidationError) as caught:
        DeploymentSettings.from_dict({"device": "tpu"}, where="deploy")
    assert caught.value.problems[0].where == "deploy.device"
    # Built in Python (not converted), the value is still checked when the deployment is created.
    endpoints = LocalEndpoints(tmp_path)
    spec = DeploymentSpec(name="blue", endpoint="nowhere", model=tiny_model, settings=DeploymentSettings(device="tpu"))
    with pytest.raises(ValidationError) as caught:
        endpoints.create_deployment(spec)
    assert caught.value.problems[0].where == "deploy.device"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_asking_for_a_gpu_without_one_fails_at_create_time(served: LocalEndpoints, tiny_model: RegisteredModel) -> None:
    with pytest.raises(DeploymentError, match="asks for a GPU but torch sees none"):
        served.create_deployment(
            DeploymentSpec(
                name="gpu", endpoint="ep-place", model=tiny_model, settings=DeploymentSettings(device="cuda:1")
            )
        )
    # The failed deployment does not take the others down.
    info = served.get_endpoint("ep-place")
    health = httpx.get(info.scoring_uri.removesuffix("/score") + "/health/live", timeout=10)
    assert health.status_code == 200
    served.delete_deployment("ep-place", "gpu")


GIB = 2**30
PHI3_MINI_KV = 393_216  # bytes per position: 32 layers x 2 x 3072 x bfloat16


def test_the_plan_gives_every_request_the_whole_context_and_shares_blocks() -> None:
    from ftkit.serve.placement import plan_kv

    plan = {"device": "cuda:0", "free": 140 * GIB, "total": 141 * GIB, "weights": 7 * GIB, "reserve": 2 * GIB}
    # 16 rows of 4096 positions fit: the pool holds exactly that (more would never be used).
    small = plan_kv(**plan, slots=16, per_token=PHI3_MINI_KV, model_context=4096)
    assert (small.context, small.blocks, small.block_size) == (4096, 16 * 4096 // 32, 32)
    # 256 rows do not all fit at 4096 (384 GiB): each still may use the whole context, and the pool takes what
    # is left of 90% of the GPU, about 318k tokens, shared by the rows in flight.
    big = plan_kv(**plan, slots=256, per_token=PHI3_MINI_KV, model_context=4096)
    assert big.context == 4096
    assert big.tokens == big.blocks * 32
    assert 300_000 < big.tokens < 256 * 4096
    allowed = int(141 * GIB * 0.9) - GIB  # 90% of the GPU, less the 1 GiB others hold
    assert big.blocks * 32 * PHI3_MINI_KV + 9 * GIB <= allowed
    assert (big.blocks + 1) * 32 * PHI3_MINI_KV + 9 * GIB > allowed  # and no less than fits
    # An 80 GB H100 serves the whole context at 256 rows too (the fixed slots refused it).
    h100 = plan_kv(
        **{**plan, "free": 79 * GIB, "total": 80 * GIB}, slots=256, per_token=PHI3_MINI_KV, model_context=4096
    )
    assert h100.context == 4096
    assert h100.tokens > 100_000
    assert plan_kv(**plan, slots=16, per_token=PHI3_MINI_KV, model_context=4096, asked=1000).context == 1000


def test_plan_that_does_not_fit_is_an_error_with_the_numbers() -> None:
    from ftkit.serve.placement import plan_kv

    # A second deployment on a GPU that another already fills: not even one whole context fits.
    with pytest.raises(
        ValueError, match="does not fit on cuda:1: one request of 4096 tokens needs 128 KV blocks"
    ) as caught:
        plan_kv(
            device="cuda:1",
            free=12 * GIB,
            total=141 * GIB,
            weights=7 * GIB,
            reserve=2 * GIB,
            slots=256,
            per_token=PHI3_MINI_KV,
            model_context=4096,
        )
    assert "lower max_context, or choose another GPU" in str(caught.value)


def test_the_working_memory_covers_a_prefill_of_a_whole_context() -> None:
    """A prompt longer than ``prefill_tokens`` is still prefilled (alone): on a long-context model the plan keeps
    room for the activations of a whole context, not only of the budget, so such a prompt cannot run out of memory
    after the cache took the rest."""
    from types import SimpleNamespace

    import torch

    from ftkit.serve.placement import _reserve_bytes, planned_context

    assert planned_context(131_072, 0) == 131_072
    assert planned_context(131_072, 8192) == 8192
    assert planned_context(4096, 8192) == 4096
    llama31 = SimpleNamespace(hidden_size=4096, intermediate_size=14336, vocab_size=128_256)
    budget_only = _reserve_bytes(llama31, 256, 8192, torch.bfloat16)
    whole = _reserve_bytes(llama31, 256, max(8192, planned_context(131_072, 0)), torch.bfloat16)
    per_token = (3 * 14336 + 8 * 4096) * 2
    assert whole - budget_only == (131_072 - 8192) * per_token  # about 8.9 GiB more
