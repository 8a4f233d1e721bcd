"""Structured output, tools, logprobs, n and logit_bias through the Python API on real engines,
both of them: every test runs on llama.cpp (the GGUF build) and on onnxruntime (the ONNX build of
the same bundle), since constrained decoding is one engine-independent step above the seam.

The fixture models are tiny and barely trained, so they write strings forever if let: every
JSON answer must still parse and validate (jsonschema_rs), which is what the mask plus the way
to an end guarantee whenever max_tokens can hold the schema's shortest document.
"""

from __future__ import annotations

import dataclasses
import json

import jsonschema_rs
import pytest

import runtime
from runtime.errors import SamplingError
from runtime.generation.request import GenerationRequest, SamplingParams, choice_seed

pytestmark = pytest.mark.engine

BACKENDS = ("llama.cpp", "onnx")
PROMPT = "Describe the record as JSON:\n"
N_CTX = 1024
SCHEMAS = {
    "person": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                       "admin": {"type": "boolean"},
                       "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4}},
        "required": ["name", "age", "admin", "tags"], "additionalProperties": False,
    },
    "nested": {
        "type": "object",
        "properties": {
            "items": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/Item"}},
            "note": {"anyOf": [{"type": "string", "maxLength": 20}, {"type": "null"}]},
        },
        "required": ["items", "note"],
        "$defs": {"Item": {"type": "object", "properties": {
            "kind": {"enum": ["cat", "dog", "a \"quoted\" one"]},
            "weight": {"type": "number"}, "day": {"type": "string", "format": "date"}},
            "required": ["kind", "weight", "day"]}},
    },
    # What the hand-written converter refused: pattern, numeric bounds, oneOf, allOf.
    "full": {
        "type": "object",
        "properties": {
            "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{2,4}$"},
            "score": {"type": "number", "minimum": -1.5, "exclusiveMaximum": 10},
            "count": {"type": "integer", "minimum": 3, "maximum": 7},
            "id": {"oneOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
            "where": {"allOf": [{"$ref": "#/$defs/Place"},
                                {"properties": {"floor": {"type": "integer"}},
                                 "required": ["floor"]}]},
        },
        "required": ["code", "score", "count", "id", "where"],
        "additionalProperties": False,
        "$defs": {"Place": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}},
    },
    "any": {"type": "object"},
}
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"]}}},
    {"type": "function", "function": {
        "name": "add", "parameters": {"type": "object", "properties": {
            "a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}},
]
ARGS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def _fmt(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "t", "schema": schema,
                                                   "strict": True}}


def _both(bundle_factory, name: str = "qwen3moe-tiny", quant: str = "F16"):
    """One bundle holding both builds of a fixture (GGUF at `quant`, ONNX at its nearest)."""
    return bundle_factory(name, quant, format="gguf,onnx")


@pytest.fixture(scope="module", params=BACKENDS)
def model(request, bundle_factory):
    with runtime.load(_both(bundle_factory), backend=request.param, n_ctx=N_CTX,
                      threads=2) as m:
        yield m


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["qwen3moe-tiny", "mixtral-tiny", "deepseek2-tiny"])
def test_every_json_answer_validates(name, backend, bundle_factory) -> None:
    with runtime.load(_both(bundle_factory, name), backend=backend, n_ctx=N_CTX,
                      threads=2) as m:
        for key, schema in SCHEMAS.items():
            check = jsonschema_rs.validator_for(schema)
            for temperature, seed in ((0.0, None), (1.0, 11), (1.3, 12)):
                r = m.generate(PROMPT, max_tokens=160, temperature=temperature, seed=seed,
                               response_format=_fmt(schema))
                assert r.finish_reason == "stop", (name, key, r.text)
                assert check.is_valid(json.loads(r.text)), (name, key, r.text)
        r = m.chat([{"role": "user", "content": "JSON please"}], max_tokens=80,
                   response_format={"type": "json_object"}, temperature=1.0, seed=3)
        assert r.finish_reason == "stop" and isinstance(json.loads(r.text), dict)


def test_max_tokens_below_the_shortest_document_ends_with_length(model) -> None:
    r = model.generate(PROMPT, max_tokens=6, response_format=_fmt(SCHEMAS["person"]))
    assert r.finish_reason == "length" and len(r.tokens) == 6
    assert r.text.startswith("{")  # the text as generated: a prefix of a valid document


def test_raw_grammar_and_its_errors(model) -> None:
    r = model.generate(PROMPT, max_tokens=10, grammar='root ::= ("yes" | "no") "."')
    assert r.text in ("yes.", "no.") and r.finish_reason == "stop"
    r = model.generate(PROMPT, max_tokens=30, temperature=1.0, seed=2,
                       grammar='start: WORD ("," WORD)* "."\nWORD: /[a-z]{1,6}/')  # Lark
    assert r.finish_reason == "stop" and r.text.endswith(".") and r.text[:-1].replace(
        ",", "").isalpha(), r.text
    with pytest.raises(SamplingError, match="^grammar could not be parsed"):
        model.generate(PROMPT, grammar="root ::= missing")
    with pytest.raises(SamplingError, match="grammar cannot be combined"):
        model.generate(PROMPT, grammar='root ::= "a"', response_format={"type": "json_object"})
    with pytest.raises(SamplingError, match="^response_format schema .*uniqueItems"):
        model.generate(PROMPT, response_format=_fmt({"type": "array", "uniqueItems": True}))


def test_a_grammar_that_cannot_end_in_time_is_cut(model) -> None:
    """40 letters then a period, in at most 8 tokens: cut at max_tokens, never a hang."""
    r = model.generate(PROMPT, max_tokens=8, temperature=1.0, seed=1,
                       grammar='root ::= [a-z]{40} "."')
    assert r.finish_reason == "length" and len(r.tokens) == 8 and r.text.isalpha()


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "add"}}])
def test_required_tool_calls_parse_and_validate(model, choice) -> None:
    for temperature, seed in ((0.0, None), (1.0, 5)):
        r = model.chat([{"role": "user", "content": "What is 2 + 3?"}], tools=TOOLS,
                       tool_choice=choice, max_tokens=160, temperature=temperature, seed=seed)
        assert r.finish_reason == "tool_calls", r.text
        assert r.text == "" and r.tool_calls
        for call in r.tool_calls:
            assert call.id.startswith("call_")
            assert jsonschema_rs.validator_for(ARGS[call.name]).is_valid(
                json.loads(call.arguments))
        if isinstance(choice, dict):
            assert {c.name for c in r.tool_calls} == {"add"}


def test_auto_tool_choice_is_text_or_valid_calls(model) -> None:
    for seed in range(4):
        r = model.chat([{"role": "user", "content": "Weather in Oslo?"}], tools=TOOLS,
                       max_tokens=120, temperature=1.0, seed=seed)
        assert r.finish_reason in ("stop", "length", "tool_calls")
        for call in r.tool_calls:
            assert jsonschema_rs.validator_for(ARGS[call.name]).is_valid(
                json.loads(call.arguments))
        assert "<tool_call>" not in r.text or r.finish_reason == "length"


def test_auto_with_a_response_format_is_a_document_or_calls(model) -> None:
    check = jsonschema_rs.validator_for(SCHEMAS["person"])
    for seed in range(4):
        r = model.chat([{"role": "user", "content": "Who?"}], tools=TOOLS, max_tokens=200,
                       response_format=_fmt(SCHEMAS["person"]), temperature=1.0, seed=seed)
        if r.tool_calls:
            assert r.finish_reason == "tool_calls" and r.text == ""
        else:
            assert r.finish_reason == "stop" and check.is_valid(json.loads(r.text)), r.text


def test_streamed_call_pieces_add_up_to_the_call(model) -> None:
    request = GenerationRequest(messages=[{"role": "user", "content": "add"}], tools=TOOLS,
                                tool_choice="required", parallel_tool_calls=False,
                                params=SamplingParams(max_tokens=160, temperature=1.0, seed=9))
    events = list(model.stream_prepared(model.prepare(request)))
    deltas = [d for ev in events for d in ev.tool_calls]
    (call,) = events[-1].choices[0].tool_calls
    assert deltas[0].id == call.id and deltas[0].name == call.name
    assert "".join(d.arguments for d in deltas) == call.arguments
    assert all(ev.text == "" for ev in events)


def test_a_template_with_tool_support_renders_them_itself(model) -> None:
    template = (
        "{% if tools %}<|im_start|>system\nfunctions: {{ tools | map(attribute='function.name')"
        " | join(',') }}; reply with <tool_call><|im_end|>\n{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    manifest = model.manifest
    model.manifest = dataclasses.replace(manifest, chat_template=template)
    try:
        request = GenerationRequest(messages=[{"role": "user", "content": "hi"}], tools=TOOLS,
                                    tool_choice="required",
                                    params=SamplingParams(max_tokens=160))
        prepared = model.prepare(request)
        assert prepared.prompt.startswith("<|im_start|>system\nfunctions: get_weather,add;")
        r = model.generate_prepared(prepared)
        assert r.finish_reason == "tool_calls" and r.tool_calls
    finally:
        model.manifest = manifest


def test_n_choices_compute_the_prompt_once(model) -> None:
    calls: list[int] = []
    decode = model.engine.decode

    def counting(tokens, all_outputs=False):
        calls.append(len(tokens))
        return decode(tokens, all_outputs)

    prompt = model.tokenize(PROMPT)
    model.engine.decode = counting
    try:
        r = model.generate(PROMPT, max_tokens=8, temperature=1.0, seed=21, n=3)
    finally:
        del model.engine.decode
    assert len(r.choices) == 3 and calls.count(len(prompt)) == 1
    assert sum(calls) == len(prompt) + sum(len(c.tokens) - 1 for c in r.choices)
    assert r.usage.completion_tokens == sum(len(c.tokens) for c in r.choices)
    for c in r.choices:  # choice i is what n=1 with the derived seed answers
        alone = model.generate(PROMPT, max_tokens=8, temperature=1.0, seed=choice_seed(21, c.index))
        assert list(c.tokens) == alone.tokens
    assert len({c.tokens for c in r.choices}) > 1


def test_logprobs_and_logit_bias(model) -> None:
    r = model.generate(PROMPT, max_tokens=6, logprobs=5)
    assert r.logprobs is not None and len(r.logprobs) == len(r.tokens) == 6
    for lp, tok in zip(r.logprobs, r.tokens, strict=True):
        assert lp.token == tok and lp.logprob <= 0 and len(lp.top) == 5
        assert lp.top[0].token == tok and lp.top[0].logprob == pytest.approx(lp.logprob)
        assert [t.logprob for t in lp.top] == sorted((t.logprob for t in lp.top), reverse=True)
    first = r.tokens[0]
    banned = model.generate(PROMPT, max_tokens=1, logit_bias={first: -100})
    assert banned.tokens[0] != first
    forced = model.generate(PROMPT, max_tokens=3, logit_bias={"42": 100})
    assert forced.tokens == [42, 42, 42]
    with pytest.raises(SamplingError, match="outside the vocabulary"):
        model.generate(PROMPT, logit_bias={10**6: 1})


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("budget", ["100%", "25%"])
def test_seeded_answers_are_the_same_at_every_budget(budget, backend, bundle_factory) -> None:
    bundle = _both(bundle_factory, quant="Q8_0")
    kw = dict(max_tokens=60, temperature=1.0, top_p=0.95, seed=77, n=2, logprobs=2,
              response_format=_fmt(SCHEMAS["person"]))
    with runtime.load(bundle, backend=backend, budget="100%", n_ctx=N_CTX, threads=2) as m:
        reference = m.generate(PROMPT, **kw)
    with runtime.load(bundle, backend=backend, budget=budget, n_ctx=N_CTX, threads=2) as m:
        assert m.stats().offloading == (budget != "100%")
        again = m.generate(PROMPT, **kw)
    assert [c.tokens for c in again.choices] == [c.tokens for c in reference.choices]
    assert [c.text for c in again.choices] == [c.text for c in reference.choices]
    for a, b in zip(again.choices, reference.choices, strict=True):
        assert [x.logprob for x in a.logprobs] == pytest.approx([x.logprob for x in b.logprobs])


def test_n_logprobs_and_logit_bias_with_a_constraint(model) -> None:
    """Each choice of a constrained n request is the n=1 answer with its seed; logprobs are the
    model's own (before the mask), so a token the mask forced still has one."""
    kw = dict(max_tokens=40, temperature=1.0, seed=4, logprobs=1, logit_bias={7: -100},
              response_format=_fmt(SCHEMAS["person"]))
    r = model.generate(PROMPT, n=2, **kw)
    assert len(r.choices) == 2 and all(len(c.logprobs) == len(c.tokens) for c in r.choices)
    alone = model.generate(PROMPT, **{**kw, "seed": choice_seed(4, 1)})
    assert list(r.choices[1].tokens) == alone.tokens and 7 not in alone.tokens
