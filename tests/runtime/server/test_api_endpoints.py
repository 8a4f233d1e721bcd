"""Structured output, tools, logprobs, n and the llama.cpp extensions over HTTP, through the
official `openai` client (unmodified) against a real server on loopback.

Structured output and tools are served by both backends (`both_servers`: the GGUF and the ONNX
build of one bundle); each answer must also be what the Python API gives for the same request,
and every new error must come back in OpenAI's error shape.
"""

from __future__ import annotations

import json
from typing import Literal

import httpx
import jsonschema_rs
import pytest
from pydantic import BaseModel, Field

from runtime.generation.request import choice_seed
from tests.runtime.server.conftest import RunningServer, start_server

pytestmark = [pytest.mark.endpoint, pytest.mark.engine]
BACKENDS = ("llama.cpp", "onnx")


@pytest.fixture(scope="module", params=BACKENDS)
def both_servers(request, bundle_factory, tmp_path_factory) -> RunningServer:
    """A server per backend, on one bundle holding both builds of the tiny fixture."""
    bundle = bundle_factory("qwen3moe-tiny", "F16", format="gguf,onnx")
    s = start_server(bundle, tmp_path_factory.mktemp(f"server-{request.param}"),
                     "--backend", request.param)
    yield s
    s.stop()

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"], "additionalProperties": False},
    },
}
ASK = [{"role": "user", "content": "What is the weather in Oslo?"}]


class Pet(BaseModel):
    name: str = Field(description="The pet's name")
    age: int
    kind: Literal["cat", "dog"]
    vaccinated: bool


def test_parse_returns_the_pydantic_object(both_servers: RunningServer) -> None:
    server = both_servers
    client = server.openai()
    for temperature, seed in ((0.0, None), (1.0, 8)):
        completion = client.chat.completions.parse(
            model=server.model_id, messages=[{"role": "user", "content": "Describe a pet."}],
            response_format=Pet, max_tokens=120, temperature=temperature, seed=seed,
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "stop"
        assert isinstance(choice.message.parsed, Pet)
        assert Pet.model_validate_json(choice.message.content or "") == choice.message.parsed


def test_tool_round_trip_with_required_choice(both_servers: RunningServer) -> None:
    server = both_servers
    client = server.openai()
    first = client.chat.completions.create(model=server.model_id, messages=ASK, tools=[WEATHER],
                                           tool_choice="required", max_tokens=120)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert call.id.startswith("call_")
    arguments = json.loads(call.function.arguments)
    assert jsonschema_rs.validator_for(WEATHER["function"]["parameters"]).is_valid(arguments)
    # The call and its result go back; the model answers from them.
    history = [*ASK, choice.message,
               {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    final = client.chat.completions.create(model=server.model_id, messages=history,
                                           tools=[WEATHER], tool_choice="none", max_tokens=16)
    assert final.choices[0].finish_reason in ("stop", "length")
    assert isinstance(final.choices[0].message.content, str)
    assert not final.choices[0].message.tool_calls


def test_streamed_tool_call_matches_the_whole_one(both_servers: RunningServer) -> None:
    server = both_servers
    client = server.openai()
    kw = dict(model=server.model_id, messages=ASK, tools=[WEATHER], tool_choice="required",
              max_tokens=120, temperature=1.0, seed=31, parallel_tool_calls=False)
    whole = client.chat.completions.create(**kw).choices[0].message.tool_calls[0]
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in client.chat.completions.create(stream=True, **kw):
        for c in chunk.choices:
            finish = c.finish_reason or finish
            for d in c.delta.tool_calls or ():
                got = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
                got["id"] += d.id or ""
                got["name"] += (d.function.name or "") if d.function else ""
                got["arguments"] += (d.function.arguments or "") if d.function else ""
    assert finish == "tool_calls" and list(calls) == [0]
    assert calls[0]["id"].startswith("call_")
    assert calls[0]["name"] == whole.function.name
    assert calls[0]["arguments"] == whole.function.arguments


def test_cut_answers_say_length(both_servers: RunningServer) -> None:
    """max_tokens below the shortest document, and a grammar that cannot end in time: both end
    with finish_reason "length" (streamed too), never a hang."""
    server = both_servers
    client = server.openai()
    pet = {"type": "json_schema", "json_schema": {"name": "pet",
                                                  "schema": Pet.model_json_schema()}}
    cut = client.chat.completions.create(model=server.model_id, messages=ASK, max_tokens=3,
                                         response_format=pet)
    assert cut.choices[0].finish_reason == "length"
    assert cut.choices[0].message.content.startswith("{")
    body = {"model": server.model_id, "prompt": "Spell:", "max_tokens": 8, "stream": True,
            "grammar": 'root ::= [a-z]{200} "."'}
    with server.http() as http, http.stream("POST", "/v1/completions", json=body) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines()
                  if line.startswith("data: {")]
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    text = "".join(e["choices"][0]["text"] for e in events)
    assert text.isalpha() and len(text) < 200


def test_logprobs_in_openai_shape(server: RunningServer, direct_model) -> None:
    client = server.openai()
    out = client.chat.completions.create(model=server.model_id, messages=ASK, max_tokens=6,
                                         logprobs=True, top_logprobs=5)
    content = out.choices[0].logprobs.content
    direct = direct_model.chat(ASK, max_tokens=6, logprobs=5)
    assert len(content) == len(direct.tokens) == 6
    for entry, lp in zip(content, direct.logprobs, strict=True):
        assert entry.token == lp.text and bytes(entry.bytes) == lp.bytes
        assert entry.logprob == pytest.approx(lp.logprob, abs=1e-4)
        assert len(entry.top_logprobs) == 5
        assert entry.top_logprobs[0].token == entry.token  # greedy: the best is the chosen
    streamed = [t for chunk in client.chat.completions.create(
        model=server.model_id, messages=ASK, max_tokens=6, logprobs=True, top_logprobs=2,
        stream=True) for c in chunk.choices if c.logprobs for t in c.logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]
    legacy = client.completions.create(model=server.model_id, prompt="def f(x):", max_tokens=4,
                                       logprobs=3)
    lp = legacy.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert "".join(lp.tokens) == legacy.choices[0].text and lp.text_offset[0] == 0


def test_n_choices(server: RunningServer, direct_model) -> None:
    client = server.openai()
    out = client.chat.completions.create(model=server.model_id, messages=ASK, max_tokens=8,
                                         n=3, temperature=1.0, seed=5)
    assert [c.index for c in out.choices] == [0, 1, 2]
    generated = 0
    for c in out.choices:  # choice i is what one request with the derived seed answers
        alone = direct_model.chat(ASK, max_tokens=8, temperature=1.0, seed=choice_seed(5, c.index))
        assert c.message.content == alone.text
        generated += alone.usage.completion_tokens
    assert out.usage.completion_tokens == generated  # every choice's tokens; the prompt once
    assert out.usage.prompt_tokens == alone.usage.prompt_tokens
    assert len({c.message.content for c in out.choices}) > 1
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for chunk in client.chat.completions.create(model=server.model_id, messages=ASK,
                                                max_tokens=8, n=3, temperature=1.0, seed=5,
                                                stream=True):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert texts == {c.index: c.message.content for c in out.choices}
    assert finishes == {c.index: c.finish_reason for c in out.choices}


def test_tokenize_and_detokenize(server: RunningServer, direct_model) -> None:
    text = "def main():\n    return 42"
    with server.http() as http:
        ids = http.post("/tokenize", json={"content": text}).json()
        assert ids == {"tokens": direct_model.tokenize(text)}
        pieces = http.post("/tokenize", json={"content": text, "with_pieces": True}).json()
        assert [p["id"] for p in pieces["tokens"]] == ids["tokens"]
        assert "".join(p["piece"] for p in pieces["tokens"]) == text
        back = http.post("/detokenize", json={"tokens": ids["tokens"]}).json()
        assert back == {"content": text}


def _error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    return body["error"]


# Constrained output: what the library cannot enforce is refused, naming the keyword.
STRUCTURED_ERRORS = [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "array", "items": {"type": "integer"}, "uniqueItems": True}}}},
     "response_format", "uniqueItems"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "string", "pattern": "^(?!a)"}}}}, "response_format", "look-around"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "string", "format": "colour"}}}}, "response_format", "colour"),
    ({"grammar": "root ::= nothing"}, "grammar", "could not be parsed"),
    ({"grammar": 'root ::= "a"', "response_format": {"type": "json_object"}}, "grammar",
     "cannot be combined"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice", "not among the tools"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"not": {"type": "number"}}}}}}]},
     "tools[0].function.parameters", "not"),
]
CHAT_ERRORS = [
    ({"n": 9}, "n", "at most 4"),
    ({"top_logprobs": 3}, "top_logprobs", "needs logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "20"),
    ({"logit_bias": {"abc": 1}}, "logit_bias", "token ids"),
    ({"logit_bias": {"5": 200}}, "logit_bias", "100"),
    ({"logit_bias": {"99999999": 1}}, "logit_bias", "outside the vocabulary"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "x"}}]}]}, "messages.0.content", "text"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.tool_call_id", "tool_call_id"),
]


@pytest.mark.parametrize("extra,param,words", CHAT_ERRORS,
                         ids=[f"{p}-{w}" for _, p, w in CHAT_ERRORS])
def test_new_chat_errors_have_openai_shape(server: RunningServer, extra, param, words) -> None:
    body = {"model": server.model_id, "messages": ASK, "max_tokens": 4, **extra}
    with server.http() as http:
        r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    err = _error(r)
    assert err["param"] == param and words in err["message"], err


@pytest.mark.parametrize("extra,param,words", STRUCTURED_ERRORS,
                         ids=[f"{p}-{w}" for _, p, w in STRUCTURED_ERRORS])
def test_structured_errors_have_openai_shape(both_servers: RunningServer, extra, param,
                                             words) -> None:
    test_new_chat_errors_have_openai_shape(both_servers, extra, param, words)


@pytest.mark.parametrize("path,body,param", [
    ("/v1/completions", {"prompt": "x", "echo": True, "logprobs": 2}, "logprobs"),
    ("/v1/completions", {"prompt": "x", "logprobs": 99}, "logprobs"),
    ("/detokenize", {"tokens": [10**6]}, "tokens"),
    ("/detokenize", {"tokens": [-1]}, "tokens.0"),
    ("/tokenize", {"with_pieces": True}, "content"),
])
def test_other_new_errors_have_openai_shape(server: RunningServer, path, body, param) -> None:
    if path.startswith("/v1"):
        body = {"model": server.model_id, "max_tokens": 4, **body}
    with server.http() as http:
        r = http.post(path, json=body)
    assert r.status_code == 400, r.text
    assert _error(r)["param"] == param


def test_max_n_is_a_server_setting(server_factory) -> None:
    server = server_factory("--max-n", "2")
    with server.http() as http:
        ok = http.post("/v1/completions", json={"model": server.model_id, "prompt": "x",
                                                "max_tokens": 2, "n": 2})
        too_many = http.post("/v1/completions", json={"model": server.model_id, "prompt": "x",
                                                      "max_tokens": 2, "n": 3})
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 2
    assert too_many.status_code == 400 and _error(too_many)["param"] == "n"
