"""Parsing of /score and /v1/chat/completions bodies (pure, no server)."""

from __future__ import annotations

import pytest

from ftkit.serve.contract.requests import BadRequest, GenParams, parse_chat, parse_score

MSG = {"role": "user", "content": "hi"}


class TestParseScore:
    def test_notebook_shape_is_one_conversation_one_output(self) -> None:
        """The notebook's nested input_string with one conversation gives a single output and its parameters."""
        body = {
            "input_data": {
                "input_string": [[MSG, {"role": "assistant", "content": "hello"}, MSG]],
                "parameters": {"temperature": 0.6, "top_p": 0.9, "do_sample": True, "max_new_tokens": 200},
            },
            "params": {},
        }
        req = parse_score(body, max_new_tokens_cap=1000)
        assert req.single
        assert len(req.conversations) == 1
        assert len(req.conversations[0]) == 3
        assert req.params == GenParams(max_new_tokens=200, do_sample=True, temperature=0.6, top_p=0.9)
        assert req.fields == ("input_data.input_string[0]",)

    def test_flat_conversation_and_several_conversations(self) -> None:
        """A flat list of messages is one conversation; a list of lists is one output per conversation."""
        flat = parse_score({"input_data": {"input_string": [MSG]}}, max_new_tokens_cap=10)
        assert flat.single
        assert flat.fields == ("input_data.input_string",)
        many = parse_score({"input_data": {"input_string": [[MSG], [MSG]]}}, max_new_tokens_cap=10)
        assert not many.single
        assert len(many.conversations) == 2

    def test_defaults_are_greedy_and_capped(self) -> None:
        """Without parameters generation is greedy, with max_new_tokens at most the cap."""
        req = parse_score({"input_data": {"input_string": [[MSG]]}}, max_new_tokens_cap=16)
        assert req.params.do_sample is False
        assert req.params.max_new_tokens == 16

    def test_max_gen_len_is_accepted(self) -> None:
        """Azure's deprecated max_gen_len still sets the budget."""
        req = parse_score(
            {"input_data": {"input_string": [[MSG]], "parameters": {"max_gen_len": 7}}}, max_new_tokens_cap=16
        )
        assert req.params.max_new_tokens == 7

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ([], "body"),
            ({}, "input_data"),
            ({"input_data": [MSG]}, "input_data"),
            ({"input_data": {}}, "input_data.input_string"),
            ({"input_data": {"input_string": "hi"}}, "input_data.input_string"),
            ({"input_data": {"input_string": []}}, "input_data.input_string"),
            ({"input_data": {"input_string": [[]]}}, "input_data.input_string[0]"),
            ({"input_data": {"input_string": [[MSG], MSG]}}, "input_data.input_string"),
            ({"input_data": {"input_string": [1]}}, "input_data.input_string[0]"),
            ({"input_data": {"input_string": [["x"]]}}, "input_data.input_string[0][0]"),
            (
                {"input_data": {"input_string": [[{"role": "bot", "content": "x"}]]}},
                "input_data.input_string[0][0].role",
            ),
            ({"input_data": {"input_string": [[{"role": 3, "content": "x"}]]}}, "input_data.input_string[0][0].role"),
            ({"input_data": {"input_string": [[{"content": "x"}]]}}, "input_data.input_string[0][0].role"),
            ({"input_data": {"input_string": [[{"role": "user"}]]}}, "input_data.input_string[0][0].content"),
            (
                {"input_data": {"input_string": [[{"role": "user", "content": 5}]]}},
                "input_data.input_string[0][0].content",
            ),
            ({"input_data": {"input_string": [[MSG]], "parameters": []}}, "input_data.parameters"),
            (
                {"input_data": {"input_string": [[MSG]], "parameters": {"temperature": "hot"}}},
                "input_data.parameters.temperature",
            ),
            (
                {"input_data": {"input_string": [[MSG]], "parameters": {"temperature": -1}}},
                "input_data.parameters.temperature",
            ),
            ({"input_data": {"input_string": [[MSG]], "parameters": {"top_p": 0}}}, "input_data.parameters.top_p"),
            (
                {"input_data": {"input_string": [[MSG]], "parameters": {"do_sample": "yes"}}},
                "input_data.parameters.do_sample",
            ),
            (
                {"input_data": {"input_string": [[MSG]], "parameters": {"max_new_tokens": 1.5}}},
                "input_data.parameters.max_new_tokens",
            ),
            (
                {"input_data": {"input_string": [[MSG]], "parameters": {"max_new_tokens": True}}},
                "input_data.parameters.max_new_tokens",
            ),
            (
                {"input_data": {"input_string": [[MSG]], "parameters": {"max_new_tokens": 0}}},
                "input_data.parameters.max_new_tokens",
            ),
            (
                {"input_data": {"input_string": [[MSG]], "parameters": {"max_new_tokens": 10**9}}},
                "input_data.parameters.max_new_tokens",
            ),
            (  # JSON integers are unbounded: one past float's range must still be a 400, not an OverflowError
                {"input_data": {"input_string": [[MSG]], "parameters": {"max_new_tokens": 10**400}}},
                "input_data.parameters.max_new_tokens",
            ),
            (
                {"input_data": {"input_string": [[MSG]], "parameters": {"max_gen_len": 1.5}}},
                "input_data.parameters.max_gen_len",
            ),
            ({"input_data": {"input_string": [[MSG]]}, "params": []}, "params"),
        ],
    )
    def test_bad_bodies_name_the_field(self, body: object, field: str) -> None:
        """Each malformed body raises BadRequest naming the offending field."""
        with pytest.raises(BadRequest) as info:
            parse_score(body, max_new_tokens_cap=100)
        assert info.value.field == field
        assert str(info.value).startswith(f"{field}: ")

    def test_unknown_role_lists_the_valid_ones(self) -> None:
        """The message for an unknown role names the valid roles."""
        with pytest.raises(BadRequest, match="valid roles: system, user, assistant"):
            parse_score({"input_data": {"input_string": [[{"role": "bot", "content": "x"}]]}}, max_new_tokens_cap=10)


class TestParseChat:
    def test_openai_body(self) -> None:
        """An OpenAI body gives its messages, sampling settings and stream flags."""
        req = parse_chat(
            {
                "model": "green",
                "messages": [MSG],
                "temperature": 0.5,
                "top_p": 0.8,
                "max_tokens": 12,
                "n": 1,
                "stream": True,
                "stream_options": {"include_usage": True},
                "user": "ignored",
            },
            max_new_tokens_cap=100,
        )
        assert req.model == "green"
        assert req.stream
        assert req.include_usage
        assert req.params == GenParams(max_new_tokens=12, do_sample=True, temperature=0.5, top_p=0.8)

    def test_temperature_zero_is_greedy(self) -> None:
        """temperature 0 means greedy decoding."""
        req = parse_chat({"messages": [MSG], "temperature": 0}, max_new_tokens_cap=100)
        assert req.params.do_sample is False

    def test_text_parts_are_joined(self) -> None:
        """Content given as text parts is joined into one string."""
        req = parse_chat(
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]},
            max_new_tokens_cap=100,
        )
        assert req.messages[0]["content"] == "ab"

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ("x", "body"),
            ({}, "messages"),
            ({"messages": []}, "messages"),
            ({"messages": {"role": "user"}}, "messages"),
            ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
            ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0]"),
            ({"messages": [MSG], "max_tokens": "10"}, "max_tokens"),
            ({"messages": [MSG], "max_tokens": 10**400}, "max_tokens"),
            ({"messages": [MSG], "max_completion_tokens": -(10**400)}, "max_completion_tokens"),
            ({"messages": [MSG], "n": 2}, "n"),
            ({"messages": [MSG], "stream": "yes"}, "stream"),
            ({"messages": [MSG], "temperature": 3}, "temperature"),
            ({"messages": [MSG], "model": 5}, "model"),
            ({"messages": [MSG], "stream_options": []}, "stream_options"),
        ],
    )
    def test_bad_bodies_name_the_field(self, body: object, field: str) -> None:
        """Each malformed chat body raises BadRequest naming the offending field."""
        with pytest.raises(BadRequest) as info:
            parse_chat(body, max_new_tokens_cap=100)
        assert info.value.field == field


class TestSampling:
    def test_extreme_sampling_parameters_never_fail(self) -> None:
        """Temperatures and top_p below float32's range (found by fuzzing) still pick a valid token."""
        import torch

        from ftkit.serve.engines.generation import choose_tokens

        logits = torch.randn(3, 50)
        logits[2] = float("nan")
        picked = choose_tokens(
            logits,
            torch.tensor([True, True, True]),
            torch.tensor([1e-300, 1.0, 1.0], dtype=torch.float32),
            torch.tensor([1.0, 5e-324, 0.5], dtype=torch.float32),
        )
        assert picked.shape == (3,)
        assert bool(((picked >= 0) & (picked < 50)).all())
        assert int(picked[1]) == int(logits[1].argmax())  # top_p ~0 keeps only the most likely token


def test_the_openapi_schemas_state_the_parsers_fields_and_bounds() -> None:
    """The document's request schemas come from the parser's definitions: same fields, same bounds."""
    from ftkit.serve.contract.openapi import body_schemas
    from ftkit.serve.contract.requests import CHAT_FIELDS, SCORE_PARAMETERS

    schemas = body_schemas(50)
    chat = schemas["ChatCompletionRequest"]["properties"]
    params = schemas["ScoreRequest"]["properties"]["input_data"]["properties"]["parameters"]["properties"]
    assert list(chat) == list(CHAT_FIELDS)
    assert list(params) == list(SCORE_PARAMETERS)
    messages = [{"role": "user", "content": "hi"}]
    for name in ("temperature", "top_p", "max_tokens", "max_completion_tokens"):
        high = chat[name]["maximum"]
        parse_chat({"messages": messages, name: high}, max_new_tokens_cap=50)
        with pytest.raises(BadRequest, match=name):
            parse_chat({"messages": messages, name: high + 1}, max_new_tokens_cap=50)
    for name in ("temperature", "top_p", "max_new_tokens", "max_gen_len"):
        high = params[name]["maximum"]
        parse_score({"input_data": {"input_string": [messages], "parameters": {name: high}}}, max_new_tokens_cap=50)
        with pytest.raises(BadRequest, match=name):
            parse_score(
                {"input_data": {"input_string": [messages], "parameters": {name: high + 1}}}, max_new_tokens_cap=50
            )
    assert chat["top_p"]["exclusiveMinimum"] == params["top_p"]["exclusiveMinimum"] == 0
    with pytest.raises(BadRequest, match="top_p"):
        parse_chat({"messages": messages, "top_p": 0}, max_new_tokens_cap=50)
