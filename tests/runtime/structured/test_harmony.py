"""gpt-oss's harmony format: the chat template's rendering and reading answers back.

Expected prompts and splits are written from the harmony format itself (OpenAI's published
description of gpt-oss's messages), not from the code under test.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from edgemoe_fixtures.harmony import CHAT_TEMPLATE
from runtime.errors import ChatTemplateError
from runtime.generation.chat_template import render_chat
from runtime.generation.template_sandbox import render_bounded
from runtime.structured.harmony import (
    HarmonyReader,
    HarmonyTokens,
    harmony_messages,
    is_harmony,
    parse_header,
)
from runtime.structured.tools import ToolCallDelta, ToolChoice, parse_tools

pytestmark = pytest.mark.unit

# A toy vocabulary: the seven specials, then text tokens.
SPECIAL = {"<|start|>": 1, "<|end|>": 2, "<|message|>": 3, "<|channel|>": 4, "<|constrain|>": 5,
           "<|return|>": 6, "<|call|>": 7}  # fmt: skip
TOKENS = HarmonyTokens(1, 2, 3, 4, 5, 6, 7)
WEATHER = parse_tools([{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["c", "f"], "default": "c"},
        "days": {"type": "integer"}},
        "required": ["city"]}}}])  # fmt: skip


class Vocab:
    """Text pieces get ids from 100 on, in the order they are first seen."""

    def __init__(self) -> None:
        self.pieces: dict[int, bytes] = {}

    def ids(self, *parts: str | bytes) -> list[int]:
        out = []
        for p in parts:
            if isinstance(p, str) and p in SPECIAL:
                out.append(SPECIAL[p])
                continue
            data = p.encode() if isinstance(p, str) else p
            tid = 100 + len(self.pieces)
            self.pieces[tid] = data
            out.append(tid)
        return out

    def piece(self, token: int) -> bytes:
        return self.pieces.get(token, b"")  # specials write no bytes (as on onnxruntime)


def read(*parts: str | bytes):
    v = Vocab()
    reader = HarmonyReader(TOKENS, v.piece)
    deltas = [reader.feed(t) for t in v.ids(*parts)]
    return reader.finish(), deltas


def test_reasoning_and_answer_are_split():
    (content, reasoning, calls), deltas = read(
        "<|channel|>", "analysis", "<|message|>", "User says hi", ". Reply", "<|end|>",
        "<|start|>", "assistant", "<|channel|>", "final", "<|message|>", "Hello", "!", "<|return|>")
    assert (content, reasoning, calls) == ("Hello!", "User says hi. Reply", ())
    assert "".join(d.reasoning for d in deltas) == "User says hi. Reply"
    assert "".join(d.content for d in deltas) == "Hello!"


def test_a_function_call_becomes_a_tool_call():
    (content, reasoning, calls), deltas = read(
        "<|channel|>", "analysis", "<|message|>", "Need weather.", "<|end|>",
        "<|start|>", "assistant", "<|channel|>", "commentary", " to=functions.get_weather", " ",
        "<|constrain|>", "json", "<|message|>", '{"city": ', '"Oslo"}', "<|call|>")
    assert content == "" and reasoning == "Need weather."
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", '{"city": "Oslo"}')]
    streamed = [d for x in deltas for d in x.tool_calls]
    assert streamed[0] == ToolCallDelta(0, "", calls[0].id, "get_weather")
    assert "".join(d.arguments for d in streamed) == '{"city": "Oslo"}'


def test_recipient_before_the_channel_as_the_template_writes_it():
    (content, _, calls), _ = read(
        "<|channel|>", "commentary", "<|message|>", "Checking.", "<|end|>",
        "<|start|>", "assistant to=functions.now", "<|channel|>", "commentary json",
        "<|message|>", "{}", "<|call|>")
    assert content == "Checking."  # commentary to nobody: a preamble the user sees
    assert [(c.name, c.arguments) for c in calls] == [("now", "{}")]


def test_a_call_cut_short_is_returned_as_content():
    (content, _, calls), _ = read(
        "<|channel|>", "commentary to=functions.get_weather", "<|message|>", '{"city": "Os')
    assert calls == () and content == '{"city": "Os'


def test_characters_split_across_tokens_are_joined():
    (content, _, _), deltas = read("<|channel|>", "final", "<|message|>", b"caf\xc3", b"\xa9",
                                   "<|return|>")  # fmt: skip
    assert content == "café" and "".join(d.content for d in deltas) == "café"


def test_text_that_is_not_harmony_is_kept_as_content():
    (content, reasoning, calls), _ = read("just ", "text")
    assert (content, reasoning, calls) == ("just text", "", ())


def test_header_parsing():
    assert parse_header("assistant<|channel|>analysis") == ("analysis", "")
    assert parse_header("<|channel|>commentary to=functions.f <|constrain|>json") == \
        ("commentary", "functions.f")
    assert parse_header("assistant to=functions.f<|channel|>commentary json") == \
        ("commentary", "functions.f")


def test_tokens_are_found_only_when_each_special_is_one_token():
    ids = {t: [i] for t, i in SPECIAL.items()}
    assert HarmonyTokens.find(lambda t: ids.get(t, [0, 0])) == TOKENS
    assert HarmonyTokens.find(lambda t: [9, 9]) is None


def test_is_harmony():
    assert is_harmony(CHAT_TEMPLATE)
    assert not is_harmony("{% for m in messages %}<|im_start|>{{ m.content }}{% endfor %}")
    assert not is_harmony(None)


def test_reasoning_content_becomes_thinking():
    given = [{"role": "user", "content": "hi"},
             {"role": "assistant", "content": "yo", "reasoning_content": "greet"}]
    norm = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert harmony_messages(norm, given)[1] == {"role": "assistant", "content": "yo",
                                                "thinking": "greet"}
    assert harmony_messages(norm, given)[0] == norm[0]


# ----- rendering --------------------------------------------------------------------------
def _system(tools: bool, effort: str = "medium") -> str:
    today = datetime.now().strftime("%Y-%m-%d")
    calls = "\nCalls to these tools must go to the commentary channel: 'functions'." if tools \
        else ""
    return ("<|start|>system<|message|>You are ChatGPT, a large language model trained by "
            f"OpenAI.\nKnowledge cutoff: 2024-06\nCurrent date: {today}\n\nReasoning: {effort}"
            "\n\n# Valid channels: analysis, commentary, final. Channel must be included for "
            f"every message.{calls}<|end|>")


FUNCTIONS = (
    "# Tools\n\n## functions\n\nnamespace functions {\n\n// Weather in a city\n"
    'type get_weather = (_: {\n// City name\ncity: string,\nunit?: "c" | "f", // default: c,\n'
    "days?: number,\n}) => any;\n\n} // namespace functions"
)


def test_a_conversation_renders_as_harmony():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert render_chat(CHAT_TEMPLATE, messages) == (
        _system(False) + "<|start|>developer<|message|># Instructions\n\nBe brief.\n\n<|end|>"
        "<|start|>user<|message|>hi<|end|><|start|>assistant")


def test_tools_calls_and_results_render_as_harmony():
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "reasoning_content": "Need the weather.",
         "tool_calls": [{"id": "c1", "type": "function", "function": {
             "name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    assert render_chat(CHAT_TEMPLATE, messages, tools=WEATHER) == (
        _system(True) + "<|start|>developer<|message|>" + FUNCTIONS + "<|end|>"
        "<|start|>user<|message|>Weather in Oslo?<|end|>"
        "<|start|>assistant<|channel|>analysis<|message|>Need the weather.<|end|>"
        '<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>'
        '{"city": "Oslo"}<|call|>'
        '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"sunny"'
        "<|end|><|start|>assistant")


def test_tool_choice_none_hides_the_tools():
    prompt = render_chat(CHAT_TEMPLATE, [{"role": "user", "content": "hi"}], tools=WEATHER,
                         tool_choice=ToolChoice("none"))
    assert "namespace functions" not in prompt and prompt.startswith(_system(False))


# ----- what transformers gives templates -------------------------------------------------------
def test_raise_exception_is_one_line_naming_the_message():
    with pytest.raises(ChatTemplateError, match="chat template failed: no tools here"):
        render_bounded("{{ raise_exception('no tools here') }}")
    with pytest.raises(ChatTemplateError, match="assistant tool call"):
        render_chat(CHAT_TEMPLATE, [{"role": "tool", "tool_call_id": "x", "content": "1"}])


def test_tojson_and_strftime_now_as_transformers_defines_them():
    out = render_bounded("{{ x|tojson }} {{ strftime_now('%Y') }}", x={"b": "<é>", "a": 1})
    assert out == '{"b": "<é>", "a": 1} ' + datetime.now().strftime("%Y")
    with pytest.raises(ChatTemplateError, match="indent"):
        render_bounded("{{ [1, 2]|tojson(indent=10**7) }}")
