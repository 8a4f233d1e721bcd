"""Structured output, tools, logprobs and n as pure logic: schema checks through the library,
grammar text, the guide's mask and its way to an end on a small vocabulary given as plain data,
the tool-call reader, message rendering, parameter validation."""

from __future__ import annotations

import json
import random

import jsonschema_rs
import numpy as np
import pytest

from runtime.errors import ChatTemplateError, SamplingError
from runtime.generation.chat_template import render_chat, supports_tools, validate_messages
from runtime.generation.logprobs import token_logprob, token_text
from runtime.generation.request import GenerationRequest, SamplingParams, choice_seed
from runtime.structured.closing import STRING, STRUCTURE, Place, closing_order, tiers
from runtime.structured.constraint import build_constraint, parse_response_format
from runtime.structured.grammar import (
    check_schema,
    literal,
    problem,
    schema_grammar,
    user_grammar,
)
from runtime.structured.guide import Guide, Vocabulary
from runtime.structured.tools import ToolCallReader, parse_tool_choice, parse_tools

pytestmark = pytest.mark.unit

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "description": "who"},
                   "age": {"type": "integer", "minimum": 0, "maximum": 130},
                   "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
                   "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
                   "email": {"anyOf": [{"type": "string", "format": "email"}, {"type": "null"}]},
                   "home": {"$ref": "#/$defs/Place"}},
    "required": ["name", "age", "code", "email", "home"],
    "additionalProperties": False,
    "$defs": {"Place": {"type": "object", "properties": {"city": {"type": "string"}},
                        "required": ["city"], "additionalProperties": False}},
}
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]


# --- a vocabulary as plain data --------------------------------------------------------------
PIECES = [bytes([b]) for b in range(256)] + [
    s.encode() for s in ('{"', '"}', '":', '",', ' "', "}}", "]}", "null", "true", "name",
                         "age", "code", "email", "home", "city", "tags", "<tool_call>", "Oslo",
                         '""', "0", "  ", "\n")]
EOS = len(PIECES)
TOKENS = [*PIECES, b""]  # the end-of-generation token writes nothing


def _tokenize(text: str) -> list[int]:
    """Greedy longest match (what llguidance asks of a tokenizer: ids for forced text)."""
    data, out = text.encode(), []
    while data:
        best = max((i for i, p in enumerate(PIECES) if data.startswith(p)),
                   key=lambda i: len(PIECES[i]))
        out.append(best)
        data = data[len(PIECES[best]):]
    return out


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary(TOKENS, [EOS], EOS, _tokenize)


def _run(vocab: Vocabulary, grammar: str, max_tokens: int, seed: int, favour: bytes = b"",
         source: str = "response_format") -> tuple[bytes, str]:
    """A generation loop over random logits (tokens in `favour` boosted): (text, finish)."""
    rng = random.Random(seed)
    guide = Guide(vocab, grammar, source, max_tokens)
    out = b""
    for step in range(max_tokens):
        logits = np.array([rng.gauss(0, 1) + (4 if p and p in favour else 0) for p in TOKENS],
                          dtype=np.float32)
        token = guide.step(logits, lambda x: int(np.argmax(x)), max_tokens - step)
        if token is None:
            return out, "length"
        if vocab.eog[token]:
            return out, "stop"
        out += TOKENS[token]
        if guide.done:
            return out, "stop"
    return out, "length"


# --- schemas -----------------------------------------------------------------------------------
@pytest.mark.parametrize("schema,keyword", [
    ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
    ({"not": {"type": "string"}}, "not"),
    ({"if": {"type": "string"}, "then": {"minLength": 2}}, "if"),
    ({"type": "string", "format": "emailish"}, "emailish"),
    ({"type": "string", "pattern": "^(?=a)b$"}, "look-around"),
    ({"$ref": "https://example.com/s.json"}, "https://example.com/s.json"),
    ({"$ref": "#/$defs/Missing"}, "/$defs/Missing"),
    ({"type": "frob"}, "frob"),
    ({"type": "array", "items": {}, "minItems": 3, "maxItems": 1}, "minItems"),
])
def test_schemas_the_library_cannot_enforce_are_refused_by_name(schema, keyword) -> None:
    with pytest.raises(SamplingError, match="^response_format schema") as e:
        check_schema(schema, "response_format")
    assert keyword in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("schema", [
    PERSON,
    {"type": "integer", "exclusiveMinimum": 0, "multipleOf": 5},
    {"oneOf": [{"type": "string"}, {"type": "integer"}]},
    {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}},
               {"required": ["a"]}]},
    {"$defs": {"T": {"type": "object", "properties": {
        "kids": {"type": "array", "items": {"$ref": "#/$defs/T"}}}}}, "$ref": "#/$defs/T"},
    {"type": "string", "format": "date-time"},
])
def test_full_json_schema_is_accepted(schema) -> None:
    assert check_schema(schema, "response_format") is schema


def test_a_schema_must_be_an_object() -> None:
    with pytest.raises(SamplingError, match="^response_format schema must be a JSON object"):
        parse_response_format({"type": "json_schema", "json_schema": {"schema": [1]}})


# --- grammar text ----------------------------------------------------------------------------
def _matches(grammar: str, text: str) -> bool:
    """Whether llguidance takes exactly `text` as a complete match (byte by byte)."""
    import llguidance

    m = llguidance.LLMatcher(llguidance.LLTokenizer("byte"),
                             llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0)
    data = text.encode()
    return m.try_consume_tokens(list(data)) == len(data) and m.is_accepting()


def test_literals_match_exactly() -> None:
    tricky = 'say "hi"\\ \n\t é \u2028 {x}'
    assert _matches(f"start: {literal(tricky)}", tricky)
    assert not _matches(f"start: {literal(tricky)}", tricky[:-1])


def test_json_is_strict_and_whitespace_bounded() -> None:
    g = schema_grammar({"type": "object", "properties": {"a": {"type": "string"}}})
    assert _matches(g, '{"a": "x\\u00e9\\n"}') and _matches(g, '{\n  "a": "x"\n}')
    assert not _matches(g, '{"a": "x\ny"}')  # a raw control character in a string
    assert not _matches(g, "{" + " " * 30 + '"a": "x"}')  # whitespace forever
    assert _matches(schema_grammar({"type": "object"}), '{"a": [1, {"b": null}]}')


def test_gbnf_and_lark_grammars() -> None:
    lark = user_grammar('root ::= ("yes" | "no") "."')
    assert _matches(lark, "yes.") and not _matches(lark, "maybe.")
    assert user_grammar('start: "a"+') == 'start: "a"+'
    with pytest.raises(SamplingError, match="^grammar could not be parsed: .*missing"):
        user_grammar("root ::= missing")
    with pytest.raises(SamplingError, match="^grammar could not be parsed"):
        user_grammar("start: ( unbalanced")
    with pytest.raises(SamplingError, match="^grammar must be a non-empty"):
        user_grammar("  ")


# --- the guide -------------------------------------------------------------------------------
def test_closing_order_and_place() -> None:
    order = closing_order(TOKENS)
    first = [TOKENS[t] for t in order[STRUCTURE][:3]]
    assert first[0] in (b"]}", b"}}") and b'"' not in b"".join(first)
    assert TOKENS[order[STRING][0]] in (b'"}', b'"')
    place = Place()
    place.feed(b'{"a": "x\\"y')
    assert place.name == STRING
    place.feed(b'", "b": 1')
    assert place.name == STRUCTURE
    for text, at in (("", "value"), ("{", "key"), ('{"a"', "colon"), ('{"a": ', "value"),
                     ('{"a": [1', "after"), ('{"a": [1,', "value"), ('{"a": [], ', "key"),
                     ('{"a": "}"', "after"), ('{"a": "x', STRING), ('{"a": nul', "after")):
        place = Place()
        place.feed(text.encode())
        assert place.at == at, text


@pytest.mark.parametrize("piece,expected", [
    (b'"', (3, 1)), (b"}", (0, 5)), (b" ]}", (0, 5)), (b'",', (1, 1)), (b",", (0, 4)),
    (b'"}', (3, 1)), (b'":', (2, 1)), (b"null", (0, 3)), (b" 0", (0, 3)), (b"nu", (0, 2)),
    (b'""', (2, 3)), (b" ", (0, 0)), (b"a", (0, 0)), (b'a"', (0, 0)), (b"\xe2", (0, 0)),
])
def test_closing_tiers(piece, expected) -> None:
    assert tiers(piece) == expected


def test_every_answer_validates_and_ends_in_time(vocab) -> None:
    """Random logits, boosted toward writing strings forever: the mask keeps each answer a
    prefix of a valid document and the way to an end closes it within max_tokens."""
    check = jsonschema_rs.validator_for(PERSON)
    grammar = schema_grammar(PERSON)
    for seed in range(12):
        text, finish = _run(vocab, grammar, 160, seed, favour=b"abcxyz ")
        assert finish == "stop", (seed, text)
        assert check.is_valid(json.loads(text)), text


def test_a_raw_grammar_ends_where_it_may(vocab) -> None:
    """Lines of words, boosted toward writing commas and letters forever: the way ends the
    line it is in and stops there, in time."""
    grammar = user_grammar('root ::= line+\nline ::= [a-z] [a-z ,]* "\\n"')
    for seed in range(6):
        text, finish = _run(vocab, grammar, 12, seed, favour=b"abc,", source="grammar")
        assert finish == "stop" and text.endswith(b"\n"), (seed, text)


def test_below_the_shortest_document_the_answer_is_cut(vocab) -> None:
    text, finish = _run(vocab, schema_grammar(PERSON), 6, 0)
    assert finish == "length" and text.startswith(b"{") and len(text) >= 6


def test_a_grammar_with_no_end_in_reach_is_cut_not_hung(vocab) -> None:
    text, finish = _run(vocab, user_grammar('root ::= [a-z]{50} "."'), 10, 1, source="grammar")
    assert finish == "length" and 10 <= len(text) < 50
    text, finish = _run(vocab, user_grammar('root ::= "a" root'), 10, 1, source="grammar")
    assert finish == "length"


def test_the_way_is_looked_for_less_often_while_it_does_not_grow() -> None:
    """53 tokens left, a way of 37 tokens (slack 3 + 37 // 8 = 7): 9 tokens spare. Not longer
    than at the look before, it is looked for next where it would have to be written (44 left);
    longer (or nothing to compare), three quarters of the way there (46); not found, after a
    quarter of what is left (40)."""
    way = list(range(37))
    assert Guide._next_check(53, way, before=42) == 44
    assert Guide._next_check(53, way, before=37) == 44
    assert Guide._next_check(53, way, before=30) == 46
    assert Guide._next_check(53, way, before=None) == 46
    assert Guide._next_check(53, None, before=42) == 40


def test_the_end_of_generation_is_allowed_only_at_an_end(vocab) -> None:
    guide = Guide(vocab, user_grammar('root ::= "ab" | "abcd"'), "grammar", 20)
    eos_first = np.zeros(len(TOKENS), dtype=np.float32)
    eos_first[EOS] = 100.0
    written = []
    for left in range(20, 0, -1):
        token = guide.step(eos_first, lambda x: int(np.argmax(x)), left)
        if vocab.eog[token]:
            break
        written.append(TOKENS[token])
    assert b"".join(written) == b"ab"  # the end came as soon as the grammar allowed it


# --- tools ---------------------------------------------------------------------------------------
def test_tool_definitions_and_choice_are_checked() -> None:
    tools = parse_tools(WEATHER)
    assert tools[0].name == "get_weather"
    with pytest.raises(SamplingError, match="tools\\[0\\].function.name"):
        parse_tools([{"type": "function", "function": {"name": "bad name"}}])
    with pytest.raises(SamplingError, match="^tools\\[0\\].function.parameters .*uniqueItems"):
        parse_tools([{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"n": {"type": "array", "uniqueItems": True}}}}}])
    with pytest.raises(SamplingError, match="must be an object schema"):
        parse_tools([{"type": "function", "function": {"name": "f", "parameters": {
            "type": "string"}}}])
    bounded = parse_tools([{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}}}])
    assert bounded[0].parameters["properties"]["n"]["minimum"] == 1
    with pytest.raises(SamplingError, match="not among the tools"):
        parse_tool_choice({"type": "function", "function": {"name": "nope"}}, tools)
    with pytest.raises(SamplingError, match="needs tools"):
        parse_tool_choice("required", ())
    assert parse_tool_choice(None, tools).mode == "auto"
    with pytest.raises(SamplingError, match="plain prompt"):
        GenerationRequest(prompt="x", tools=WEATHER)


def _required(parallel: bool = True):
    tools = parse_tools(WEATHER)
    c = build_constraint(None, None, tools, parse_tool_choice("required", tools), parallel)
    assert c.tools is not None and c.grammar is not None
    return c


CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


def test_the_call_grammar_takes_calls_and_only_calls() -> None:
    c = _required()
    assert problem(c.grammar) is None and _matches(c.grammar, CALL)
    assert _matches(c.grammar, CALL + "\n" + CALL)
    assert not _matches(_required(parallel=False).grammar, CALL + "\n" + CALL)
    assert not _matches(c.grammar, CALL.replace("Oslo", "Oslo\n"))
    assert not _matches(c.grammar, CALL.replace("get_weather", "get_time"))


def test_calls_end_in_time_rather_than_open_one_more(vocab) -> None:
    """Parallel calls, logits pushing toward opening call after call: near max_tokens the
    answer ends after a complete call instead of opening one that cannot finish."""
    grammar = _required().grammar
    for seed in range(6):
        for max_tokens in (70, 90, 120):
            text, finish = _run(vocab, grammar, max_tokens, seed,
                                favour=b"<tool_call>\nOslo", source="tools")
            assert finish == "stop", (seed, max_tokens, text)
            reader = ToolCallReader(_required().tools)
            reader.feed(text.decode())
            content, calls = reader.finish()
            assert content == "" and calls, text
            assert all(json.loads(c.arguments).keys() >= {"city"} for c in calls)


def test_reader_streams_call_deltas_that_add_up() -> None:
    reader = ToolCallReader(_required().tools)
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "O}s\\"lo"} }\n</tool_call>'
    deltas = []
    for ch in text:  # one character at a time, as a small vocabulary writes it
        content, d = reader.feed(ch)
        assert content == ""
        deltas += d
    content, calls = reader.finish()
    assert content == "" and len(calls) == 1
    assert calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": 'O}s"lo'}
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
    assert rest is not None and problem(rest) is None
    assert _matches(rest, CALL[len("<tool_call>"):])
    assert c.tools.continuation("<tool_call>x") is None


def test_auto_with_a_response_format_is_a_document_or_calls() -> None:
    tools = parse_tools(WEATHER)
    rf = parse_response_format({"type": "json_schema", "json_schema": {"schema": {
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}})
    c = build_constraint(rf, None, tools, parse_tool_choice("auto", tools), False)
    assert _matches(c.grammar, '{"n": 3}') and _matches(c.grammar, CALL)
    assert not _matches(c.grammar, "hello")


def test_unfinished_call_stays_in_content() -> None:
    reader = ToolCallReader(_required().tools)
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


# --- sampling parameters, seeds, logprobs ----------------------------------------------------
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


