"""Structured output, tools, logprobs and n as pure logic: schema checks, grammar text, the
document-progress reader, the tool-call reader, message rendering, parameter validation."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from runtime.errors import ChatTemplateError, SamplingError
from runtime.generation.chat_template import render_chat, supports_tools, validate_messages
from runtime.generation.logprobs import token_logprob, token_text
from runtime.generation.request import GenerationRequest, SamplingParams, choice_seed
from runtime.structured.closing import STRING, STRUCTURE, _tiers
from runtime.structured.constraint import build_constraint, parse_response_format
from runtime.structured.gbnf import literal
from runtime.structured.json_progress import JsonProgress
from runtime.structured.json_schema import check_schema
from runtime.structured.tools import ToolCallReader, parse_tool_choice, parse_tools

pytestmark = pytest.mark.unit

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "description": "who"}, "age": {"type": "integer"},
                   "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
                   "home": {"$ref": "#/$defs/Place"}},
    "required": ["name", "age"],
    "additionalProperties": False,
    "$defs": {"Place": {"type": "object", "properties": {"city": {"type": "string"}},
                        "required": ["city"], "title": "Place"}},
}
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]


# --- schemas ---------------------------------------------------------------------------------
@pytest.mark.parametrize("schema,keyword", [
    ({"type": "integer", "minimum": 0}, "minimum"),
    ({"type": "string", "pattern": "^a+$"}, "pattern"),
    ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, "oneOf"),
    ({"allOf": [{"type": "object"}]}, "allOf"),
    ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
    ({"type": "object", "properties": {}, "minProperties": 1}, "minProperties"),
    ({"type": "string", "format": "email"}, "email"),
    ({"type": ["string", "null"], "maxLength": 3}, "maxLength"),
    ({"type": "string", "format": "date", "minLength": 3}, "minLength"),
    ({"$ref": "https://example.com/s.json"}, "$ref"),
])
def test_unsupported_keywords_are_refused_by_name(schema, keyword) -> None:
    with pytest.raises(SamplingError, match=f"response_format.*{re.escape(keyword)}"):
        check_schema(schema, "response_format")


@pytest.mark.parametrize("schema,problem", [
    ({"type": "object", "properties": {"a": {}}, "required": ["b"]}, "requires 'b'"),
    ({"type": "string", "enum": ["a", 1]}, "not of type"),
    ({"type": "array", "items": {}, "minItems": 3, "maxItems": 1}, "minItems > maxItems"),
    ({"type": "array", "items": {}, "maxItems": 10_000}, "maxItems"),
    ({"$ref": "#/$defs/Missing"}, "points to nothing"),
    ({"type": "frob"}, "'type'"),
    ({"properties": {"a": True}}, "must be a JSON object"),
])
def test_unsatisfiable_or_malformed_schemas_are_refused(schema, problem) -> None:
    with pytest.raises(SamplingError, match=problem):
        check_schema(schema, "response_format")


def test_cleaning_drops_annotations_and_renames_references() -> None:
    schema = check_schema(PERSON, "response_format", prefix="rf-")
    assert "description" not in schema.root["properties"]["name"]
    assert schema.root["properties"]["home"] == {"$ref": "#/$defs/rf-ref-1"}
    assert schema.defs["rf-ref-1"]["required"] == ["city"]
    assert "title" not in schema.defs["rf-ref-1"]
    # {"name": "", "age": 0} plus a space before each value: a bound, never below the truth
    assert schema.close_bytes() >= len('{"name":"","age":0}')


def test_recursive_references_are_accepted() -> None:
    tree = {"type": "object", "properties": {"kids": {"type": "array",
                                                      "items": {"$ref": "#"}}}}
    with pytest.raises(SamplingError, match="only references"):
        check_schema(tree, "response_format")
    tree = {"$defs": {"T": {"type": "object", "properties": {
        "kids": {"type": "array", "items": {"$ref": "#/$defs/T"}}}}}, "$ref": "#/$defs/T"}
    assert check_schema(tree, "response_format").close_bytes() > 0


def test_grammar_literals_escape_exactly() -> None:
    assert literal('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    rf = parse_response_format({"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"enum": ['say "hi"', "back\\slash"]}}})
    grammar = build_constraint(rf, None, (), parse_tool_choice(None, ()), True).grammar
    assert grammar is not None
    assert '"\\"say \\\\\\"hi\\\\\\"\\""' in grammar  # the JSON text "say \"hi\"" in GBNF
    person = build_constraint(parse_response_format({"type": "json_schema", "json_schema": {
        "schema": PERSON}}), None, (), parse_tool_choice(None, ()), True).grammar
    assert person is not None
    assert "char ::= [^\"\\\\\\x7F\\x00-\\x1F]" in person  # no raw control characters


def test_free_form_values_nest_boundedly() -> None:
    grammar = build_constraint(parse_response_format({"type": "json_object"}), None, (),
                               parse_tool_choice(None, ()), True).grammar
    assert grammar is not None and "root ::= object" in grammar
    assert "x-value-4 ::= string | number | boolean | null" in grammar


# --- progress ----------------------------------------------------------------------------------
def _schema():
    return check_schema(PERSON, "response_format", prefix="rf-")


def test_progress_measures_what_is_left() -> None:
    p = JsonProgress(_schema())
    start = p.need()
    p.feed('{"name": "Ada Lovel')
    assert p.in_string()
    mid = p.need()
    assert mid >= len('", "age": 0}')
    p.feed('ace", "age": 36')
    assert not p.in_string() and p.need() <= mid
    p.feed("}")
    assert p.done and p.need() == 0 and start > 0


def test_progress_counts_required_items_and_nesting() -> None:
    schema = check_schema({"type": "array", "items": {"type": "object", "properties": {
        "x": {"type": "integer"}}, "required": ["x"]}, "minItems": 3}, "response_format")
    p = JsonProgress(schema)
    p.feed('[{"x": 1}, {')
    # close this object (its x) and write one more element, then the bracket
    assert p.need() >= len('"x":1},{"x":1}]')


def test_progress_of_generated_documents_reaches_done() -> None:
    doc = json.dumps({"name": "a\"b\\u00e9", "age": -12, "tags": ["x", "y"],
                      "home": {"city": "Oslo"}})
    p = JsonProgress(_schema())
    for ch in doc:
        assert not p.done
        p.feed(ch)
    assert p.done


# --- tools ---------------------------------------------------------------------------------------
def test_tool_definitions_and_choice_are_checked() -> None:
    tools = parse_tools(WEATHER)
    assert tools[0].name == "get_weather"
    with pytest.raises(SamplingError, match="tools\\[0\\].function.name"):
        parse_tools([{"type": "function", "function": {"name": "bad name"}}])
    with pytest.raises(SamplingError, match="minimum"):
        parse_tools([{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}}}])
    with pytest.raises(SamplingError, match="not among the tools"):
        parse_tool_choice({"type": "function", "function": {"name": "nope"}}, tools)
    with pytest.raises(SamplingError, match="needs tools"):
        parse_tool_choice("required", ())
    assert parse_tool_choice(None, tools).mode == "auto"
    with pytest.raises(SamplingError, match="plain prompt"):
        GenerationRequest(prompt="x", tools=WEATHER)


def _required_reader(parallel: bool = True) -> ToolCallReader:
    tools = parse_tools(WEATHER)
    c = build_constraint(None, None, tools, parse_tool_choice("required", tools), parallel)
    assert c.tools is not None and c.grammar is not None
    return ToolCallReader(c.tools)


def test_reader_streams_call_deltas_that_add_up() -> None:
    reader = _required_reader()
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"} }\n</tool_call>'
    deltas = []
    for ch in text:  # one character at a time, as a small vocabulary writes it
        content, d = reader.feed(ch)
        assert content == ""
        deltas += d
    content, calls = reader.finish()
    assert content == "" and len(calls) == 1
    assert calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Oslo"}
    assert deltas[0].id == calls[0].id and deltas[0].name == "get_weather"
    assert "".join(d.arguments for d in deltas) == calls[0].arguments


def test_reader_auto_mode_holds_back_a_possible_call_opening() -> None:
    tools = parse_tools(WEATHER)
    c = build_constraint(None, None, tools, parse_tool_choice("auto", tools), False)
    assert c.grammar is None and c.tools is not None and c.tools.lazy
    reader = ToolCallReader(c.tools)
    assert reader.feed("Sure <tool")[0] == "Sure "
    assert reader.feed("_call>")[0] == "" and reader.in_calls
    # the rest of the call is constrained from what was written so far
    rest = c.tools.continuation(reader.calls[-1].text)
    assert rest is not None and 'root ::= ( "\\n{\\"name\\": \\"get_weather' in rest
    assert c.tools.continuation("<tool_call>x") is None


def test_unfinished_call_stays_in_content() -> None:
    reader = _required_reader()
    reader.feed('<tool_call>\n{"name": "get_weather", "arguments": {"ci')
    content, calls = reader.finish()
    assert calls == () and content.startswith("<tool_call>")


# --- messages ------------------------------------------------------------------------------------
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# A template that renders tools itself in the <tool_call> syntax (written for this test).
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | map(attribute='function.name') | "
    "join(', ') }}. Call with <tool_call>.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% for c in m.get('tool_calls', []) %}<tool_call>{{ c.function.name }}</tool_call>"
    "{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ROUND_TRIP = [
    {"role": "user", "content": [{"type": "text", "text": "Weather"},
                                 {"type": "text", "text": "in Oslo?"}]},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    {"role": "tool", "tool_call_id": "call_2", "content": "windy"},
]


def test_messages_accept_text_parts_tool_calls_and_results() -> None:
    msgs = validate_messages(ROUND_TRIP)
    assert msgs[0] == {"role": "user", "content": "Weather\nin Oslo?"}
    assert msgs[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
    assert msgs[2]["tool_call_id"] == "call_1"
    with pytest.raises(ChatTemplateError, match=r"messages\[0\].content\[0\].*image_url"):
        validate_messages([{"role": "user", "content": [{"type": "image_url"}]}])
    with pytest.raises(ChatTemplateError, match="tool_call_id"):
        validate_messages([{"role": "tool", "content": "x"}])


def test_fallback_rendering_describes_tools_and_writes_history_as_text() -> None:
    tools = parse_tools(WEATHER)
    assert not supports_tools(CHATML)
    prompt = render_chat(CHATML, ROUND_TRIP, tools=tools,
                         tool_choice=parse_tool_choice("auto", tools))
    assert prompt.startswith("<|im_start|>system\nYou can call these functions:")
    assert '"name": "get_weather"' in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}' in prompt
    # both results in one user turn, so the turns still alternate
    assert "<tool_response>\nsunny\n</tool_response>\n<tool_response>\nwindy" in prompt
    plain = render_chat(CHATML, [{"role": "user", "content": "hi"}])
    assert plain == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    none = render_chat(CHATML, [{"role": "user", "content": "hi"}], tools=tools,
                       tool_choice=parse_tool_choice("none", tools))
    assert none == plain


def test_native_template_gets_tools() -> None:
    tools = parse_tools(WEATHER)
    assert supports_tools(TOOLS_TEMPLATE)
    prompt = render_chat(TOOLS_TEMPLATE, ROUND_TRIP, tools=tools)
    assert prompt.startswith("<|im_start|>system\nTools: get_weather.")
    assert "<tool_call>get_weather</tool_call>" in prompt
    assert "You can call these functions" not in prompt


# --- sampling parameters, seeds, logprobs, closing -----------------------------------------------
def test_new_sampling_fields_are_checked() -> None:
    p = SamplingParams(n=3, logprobs=5, logit_bias={"7": -100, 3: 2.5})
    assert p.logit_bias == ((3, 2.5), (7, -100.0))
    for bad in ({"n": 0}, {"n": 1000}, {"logprobs": 21}, {"logprobs": -1},
                {"logit_bias": {"x": 1}}, {"logit_bias": {1: 101}}, {"grammar": ""}):
        with pytest.raises(SamplingError, match=next(iter(bad))):
            SamplingParams(**bad)


def test_choice_seeds_keep_choice_zero_and_differ() -> None:
    assert choice_seed(42, 0) == 42
    seeds = {choice_seed(42, i) for i in range(64)}
    assert len(seeds) == 64 and all(0 <= s < 2**32 for s in seeds)
    assert choice_seed(42, 1) != choice_seed(43, 1)


def test_logprobs_are_log_softmax_with_sorted_alternatives() -> None:
    logits = np.log(np.array([0.1, 0.6, 0.3], dtype=np.float32))
    lp = token_logprob(logits, 2, 2, lambda t: b"abc"[t:t + 1])
    assert lp.logprob == pytest.approx(np.log(0.3), abs=1e-6)
    assert [t.token for t in lp.top] == [1, 2]
    assert lp.top[0].logprob == pytest.approx(np.log(0.6), abs=1e-6)
    assert token_text(b"\xe2\x80") == "bytes:\\xe2\\x80" and token_text(b"ok") == "ok"


@pytest.mark.parametrize("piece,tiers", [
    (b'"', (3, 1)), (b"}", (0, 3)), (b" ]}", (0, 3)), (b'",', (1, 1)), (b",", (0, 2)),
    (b'"}', (3, 1)), (b'":', (2, 1)),
    (b" ", (0, 0)), (b"a", (0, 0)), (b'a"', (0, 0)), (b"\xe2", (0, 0)),
])
def test_closing_tiers(piece, tiers) -> None:
    assert _tiers(piece) == tiers
    assert {STRING, STRUCTURE} == {"string", "structure"}
