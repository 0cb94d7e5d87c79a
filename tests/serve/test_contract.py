"""The endpoint as its clients see it: the official openai client on /v1, plain httpx on Azure's /score.

stop strings (streamed and not), seeds, unsupported fields rejected by name, models.retrieve, and one error
shape per route family, including the router's own 404 and 405.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
from typing import Any

import httpx
import pytest

from .conftest import LiveEndpoint

openai = pytest.importorskip("openai")

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(live: LiveEndpoint) -> Any:
    return openai.OpenAI(base_url=f"{live.base}/v1", api_key=live.keys.primary, max_retries=0, timeout=60)


def pick_stop(text: str) -> str:
    """A short stop string that occurs in the middle of ``text`` (plain characters, not a partial one)."""
    for match in re.finditer(r"[A-Za-z0-9]{2}", text):
        if match.start() >= 3:
            return match.group()
    pytest.skip(f"the tiny model's answer has no usable stop string: {text!r}")


def greedy(client: Any, **extra: Any) -> Any:
    return client.chat.completions.create(model="blue", messages=QUESTION, temperature=0, max_tokens=30, **extra)


class TestStop:
    def test_stop_cuts_before_the_stop_string(self, client: Any) -> None:
        """stop (a string or a list) ends the answer before its first occurrence, finish_reason "stop"."""
        whole = greedy(client).choices[0]
        assert whole.finish_reason == "length"
        text = whole.message.content
        stop = pick_stop(text)
        for value in (stop, [stop], ["never-there", stop]):
            choice = greedy(client, stop=value).choices[0]
            assert choice.message.content == text[: text.find(stop)]
            assert choice.finish_reason == "stop"

    def test_stop_while_streaming(self, client: Any) -> None:
        """Streamed, the deltas add up to the same cut text: no piece of the stop string is ever sent."""
        text = greedy(client).choices[0].message.content
        stop = pick_stop(text)
        chunks = list(greedy(client, stop=[stop], stream=True, stream_options={"include_usage": True}))
        pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
        assert "".join(pieces) == text[: text.find(stop)]
        assert all(stop not in p for p in pieces)
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert chunks[-1].usage.completion_tokens > 0

    def test_a_false_start_is_sent_in_the_end(self, client: Any) -> None:
        """A stop string whose beginning appears but not the rest is held back, then sent: nothing is lost."""
        text = greedy(client).choices[0].message.content
        start = pick_stop(text)
        chunks = list(greedy(client, stop=[start + "\u2603never"], stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
        assert chunks[-1].choices[0].finish_reason == "length"

    def test_bad_stop_values(self, client: Any) -> None:
        """More than 4 stop strings, or an empty one, is a 400 naming the field."""
        with pytest.raises(openai.BadRequestError) as info:
            greedy(client, stop=["a", "b", "c", "d", "e"])
        assert info.value.body["param"] == "stop"
        with pytest.raises(openai.BadRequestError) as info:
            greedy(client, stop=["a", ""])
        assert info.value.body["param"] == "stop[1]"


class TestSeed:
    def test_same_seed_same_answer(self, client: Any) -> None:
        """Sampling with a seed is deterministic, alone or batched with other requests; other seeds differ."""

        def sample(seed: int) -> str:
            out = client.chat.completions.create(
                model="blue", messages=QUESTION, temperature=1.0, max_tokens=20, seed=seed
            )
            return str(out.choices[0].message.content)

        first = sample(7)
        assert sample(7) == first
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            together = list(pool.map(sample, [7, 8, 7, 9]))
        assert together[0] == together[2] == first
        assert len({first, *(sample(s) for s in (1, 2, 3))}) > 1


class TestUnsupportedFields:
    @pytest.mark.parametrize(
        ("extra", "field"),
        [
            ({"logprobs": True}, "logprobs"),
            ({"presence_penalty": 0.5}, "presence_penalty"),
            ({"response_format": {"type": "json_object"}}, "response_format"),
            (
                {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
                "tools",
            ),
            ({"extra_body": {"best_of": 3}}, "best_of"),
        ],
    )
    def test_rejected_naming_the_field(self, client: Any, extra: dict[str, Any], field: str) -> None:
        """A field this endpoint cannot honour is a 400 naming it, never a silent 200."""
        with pytest.raises(openai.BadRequestError) as info:
            greedy(client, **extra)
        assert info.value.status_code == 400
        assert info.value.body["param"] == field
        assert info.value.body["message"].startswith(field)

    def test_default_values_are_accepted(self, client: Any) -> None:
        """The same fields at their default value (what frameworks send spelled out) are fine."""
        out = greedy(
            client,
            presence_penalty=0,
            frequency_penalty=0.0,
            logprobs=False,
            response_format={"type": "text"},
            user="someone",
            n=1,
        )
        assert out.choices[0].message.content


class TestModelsAndErrors:
    def test_models_list_and_retrieve(self, client: Any) -> None:
        """models.list and models.retrieve name the deployments; an unknown one is a 404 in OpenAI's shape."""
        assert {"blue", "green"} <= {m.id for m in client.models.list()}
        model = client.models.retrieve("green")
        assert (model.id, model.object, model.owned_by) == ("green", "model", "ftkit")
        assert model.created > 0
        with pytest.raises(openai.NotFoundError) as info:
            client.models.retrieve("purple")
        assert info.value.body["type"] == "not_found_error"
        assert info.value.body["param"] == "model"

    def test_unknown_route_and_wrong_method(self, client: Any) -> None:
        """The router's own 404 and 405 come in OpenAI's error shape, not FastAPI's {"detail": ...}."""
        with pytest.raises(openai.NotFoundError) as info:
            client.get("/completions/legacy", cast_to=object)
        body = info.value.response.json()
        assert set(body) == {"error"}
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["code"] == 404
        with pytest.raises(openai.APIStatusError) as info:
            client.get("/chat/completions", cast_to=object)
        assert info.value.status_code == 405
        assert info.value.response.headers["allow"] == "POST"
        assert info.value.response.json()["error"]["type"] == "invalid_request_error"
        assert "allowed: POST" in info.value.message

    def test_stream_past_its_deadline_ends_in_an_error_event(self, client: Any, live: LiveEndpoint) -> None:
        """A stream that runs past request_timeout_ms ends with a 408 error event and no finish chunk; openai's
        client raises it as an APIError; the server answers the next request normally."""
        body = {"model": "hasty", "messages": QUESTION, "max_tokens": 1500, "stream": True}
        headers = {"Authorization": f"Bearer {live.keys.primary}"}
        with httpx.stream("POST", f"{live.base}/v1/chat/completions", json=body, headers=headers, timeout=60) as r:
            assert r.status_code == 200
            events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        last = json.loads(events[-2])
        assert last["error"]["code"] == 408
        assert last["error"]["type"] == "timeout_error"
        assert "request_timeout_ms" in last["error"]["message"]
        assert not any('"finish_reason": "' in e for e in events)
        with pytest.raises(openai.APIError, match="request_timeout_ms"):
            for _ in client.chat.completions.create(model="hasty", messages=QUESTION, max_tokens=1500, stream=True):
                pass
        assert greedy(client).choices[0].finish_reason in {"stop", "length"}

    def test_auth_error_shape(self, live: LiveEndpoint) -> None:
        """A wrong key is openai's AuthenticationError with the error object."""
        bad = openai.OpenAI(base_url=f"{live.base}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            bad.models.list()
        assert info.value.body["type"] == "authentication_error"


def score(live: LiveEndpoint, parameters: dict[str, Any], **headers: str) -> httpx.Response:
    body = {"input_data": {"input_string": [QUESTION], "parameters": parameters}, "params": {}}
    return httpx.post(f"{live.base}/score", json=body, headers={**live.auth(), **headers}, timeout=60)


class TestAzureContract:
    def test_stop_and_seed_in_parameters(self, live: LiveEndpoint) -> None:
        """/score honours stop and seed in input_data.parameters, like the chat route."""
        text = score(live, {"max_new_tokens": 30}).json()["output"]
        stop = pick_stop(text)
        assert score(live, {"max_new_tokens": 30, "stop": [stop]}).json()["output"] == text[: text.find(stop)]
        sampled = {"max_new_tokens": 20, "do_sample": True, "temperature": 1.0, "seed": 11}
        first = score(live, sampled).json()["output"]
        assert score(live, sampled).json()["output"] == first

    @pytest.mark.parametrize(
        ("parameters", "target"),
        [
            ({"repetition_penalty": 1.2}, "input_data.parameters.repetition_penalty"),
            ({"return_full_text": True}, "input_data.parameters.return_full_text"),
            ({"stop": 5}, "input_data.parameters.stop"),
            ({"seed": "x"}, "input_data.parameters.seed"),
        ],
    )
    def test_unsupported_parameters_are_rejected(
        self, live: LiveEndpoint, parameters: dict[str, Any], target: str
    ) -> None:
        """A parameter this endpoint does not honour is a 400 in Azure's shape, its target naming it."""
        resp = score(live, parameters)
        assert resp.status_code == 400
        error = resp.json()["error"]
        assert error["code"] == "BadRequest"
        assert error["target"] == target
        assert error["message"].startswith(target)

    def test_accepted_defaults(self, live: LiveEndpoint) -> None:
        """return_full_text false (the answer never repeats the prompt) and one sequence are accepted."""
        resp = score(live, {"max_new_tokens": 4, "return_full_text": False, "num_return_sequences": 1})
        assert resp.status_code == 200, resp.text

    def test_error_shape_everywhere_under_score(self, live: LiveEndpoint) -> None:
        """401, 404 (unknown deployment, unknown route), 405 and 413 under /score all take Azure's shape."""
        answers = [
            httpx.post(f"{live.base}/score", json={}),
            score(live, {}, **{"azureml-model-deployment": "purple"}),
            httpx.post(f"{live.base}/score/extra", json={}, headers=live.auth()),
            httpx.get(f"{live.base}/score", headers=live.auth()),
            httpx.post(f"{live.base}/score", content=b"x" * 2_000_000, headers=live.auth()),
        ]
        assert [r.status_code for r in answers] == [401, 404, 404, 405, 413]
        for resp in answers:
            error = resp.json()["error"]
            assert set(error) <= {"code", "message", "target"}
            assert isinstance(error["code"], str)
            assert error["message"]
        assert answers[3].headers["allow"] == "POST"
        assert answers[1].json()["error"]["target"] == "azureml-model-deployment"

    def test_elsewhere_openai_shape(self, live: LiveEndpoint) -> None:
        """Outside /score (an unknown path, a wrong method on a probe) errors take OpenAI's shape."""
        for resp in (httpx.get(f"{live.base}/nowhere"), httpx.post(f"{live.base}/health/live")):
            assert resp.status_code in (404, 405)
            assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
