"""gpt-oss's harmony format end to end, on both engines and over HTTP.

gptoss-tiny was taught one conversation (edgemoe_fixtures/harmony.py): asked about the weather,
it reasons in the analysis channel, calls functions.get_weather, and once given the result
answers in the final channel. What it writes is real generation; the runtime must hand back
the reasoning apart (`reasoning` / `reasoning_content`), the call as a tool call, and the
answer as content, whatever the engine renders of harmony's special tokens.
"""

from __future__ import annotations

import json
import re

import pytest

import runtime

pytestmark = pytest.mark.engine

WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]  # fmt: skip
ASK = [{"role": "user", "content": "Weather in Paris?"}]
# What it learned to write; which city or weather it copies is up to a 64-wide model.
CITY = re.compile(r"^[A-Z][a-z]+$")
ANSWER = re.compile(r"^It is [a-z]+ in [A-Z][a-z]+\.$")


def _answered(city: str, weather: str) -> list[dict]:
    """The conversation after the call: the client sends back the call and its result."""
    return [
        {"role": "user", "content": f"Weather in {city}?"},
        {"role": "assistant", "content": None, "reasoning_content": "Need the weather.",
         "tool_calls": [{"id": "call_1", "type": "function", "function": {
             "name": "get_weather", "arguments": json.dumps({"city": city})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": weather},
    ]


@pytest.fixture(scope="module", params=["llama.cpp", "onnx"])
def model(request, bundle_factory):
    if request.param == "onnx":
        bundle, backend = bundle_factory("gptoss-tiny", "fp32", format="onnx"), "onnx"
    else:
        bundle, backend = bundle_factory("gptoss-tiny", "Q8_0"), None
    with runtime.load(bundle, backend=backend, threads=2) as m:
        yield m


def test_a_question_gets_reasoning_and_a_tool_call(model):
    r = model.chat(ASK, tools=WEATHER, max_tokens=64)
    assert r.finish_reason == "tool_calls"
    assert r.reasoning == "Need the weather." and r.text == ""
    (call,) = r.tool_calls
    args = json.loads(call.arguments)
    assert call.name == "get_weather" and list(args) == ["city"] and CITY.match(args["city"])


def test_the_result_gets_an_answer(model):
    r = model.chat(_answered("Lima", "rainy"), tools=WEATHER, max_tokens=64)
    assert r.finish_reason == "stop" and r.tool_calls == ()
    assert ANSWER.match(r.text), r.text


def test_streamed_pieces_add_up_to_the_answer(model):
    from runtime.generation.request import GenerationRequest, SamplingParams

    request = GenerationRequest(messages=ASK, params=SamplingParams(max_tokens=64),
                                tools=WEATHER)  # fmt: skip
    events = list(model.stream_prepared(model.prepare(request)))
    reasoning = "".join(e.reasoning for e in events)
    calls = [d for e in events for d in e.tool_calls]
    assert reasoning == "Need the weather." and not "".join(e.text for e in events)
    assert calls[0].name == "get_weather" and calls[0].id
    args = "".join(d.arguments for d in calls)
    assert args == events[-1].choices[0].tool_calls[0].arguments and "city" in json.loads(args)
    assert events[-1].finish_reason == "tool_calls"


def test_a_grammar_is_refused_on_a_harmony_chat(model):
    from runtime.errors import SamplingError

    with pytest.raises(SamplingError, match="harmony"):
        model.chat(ASK, tools=WEATHER, tool_choice="required")
    with pytest.raises(SamplingError, match="response_format"):
        model.chat(ASK, response_format={"type": "json_object"})


@pytest.mark.endpoint
def test_http_answers_carry_reasoning_content_and_tool_calls(bundle_factory, tmp_path):
    from tests.runtime.server.conftest import start_server

    server = start_server(bundle_factory("gptoss-tiny", "Q8_0"), tmp_path)
    try:
        client = server.openai()
        r = client.chat.completions.create(model=server.model_id, messages=ASK, tools=WEATHER,
                                           max_tokens=64)  # fmt: skip
        msg = r.choices[0].message
        assert r.choices[0].finish_reason == "tool_calls"
        assert msg.model_extra["reasoning_content"] == "Need the weather."
        assert msg.tool_calls[0].function.name == "get_weather"
        assert CITY.match(json.loads(msg.tool_calls[0].function.arguments)["city"])
        # The client sends the call back with its reasoning, and the result.
        r = client.chat.completions.create(model=server.model_id, tools=WEATHER, max_tokens=64,
                                           messages=_answered("Oslo", "cold"))  # fmt: skip
        assert ANSWER.match(r.choices[0].message.content)
        assert "reasoning_content" not in r.choices[0].message.model_extra
        chunks = list(client.chat.completions.create(
            model=server.model_id, messages=ASK, tools=WEATHER, max_tokens=64, stream=True))
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        assert "".join(d.model_extra.get("reasoning_content") or "" for d in deltas) == \
            "Need the weather."
        args = "".join(t.function.arguments or "" for d in deltas for t in d.tool_calls or ())
        assert CITY.match(json.loads(args)["city"])
    finally:
        server.stop()
