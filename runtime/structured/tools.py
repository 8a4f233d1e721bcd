"""Function calling: tool definitions, the one call syntax, its grammar, and reading calls back.

Every call is written in one syntax, whatever the checkpoint:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Oslo"}}
    </tool_call>

It is the syntax of the Qwen2/Qwen3/Hermes chat templates, so a template that renders `tools`
itself teaches the model exactly this; for any other template the functions are described in a
system message that asks for it (`fallback_system_text`). The grammar (Lark, with each
function's `parameters` schema inline: `runtime.structured.grammar`) makes a call parse and its
arguments validate:
- tool_choice "required" or a named function: the whole answer is one call (several with
  parallel_tool_calls), constrained from the first token;
- "auto": the model writes freely; once it writes `<tool_call>` the rest of the call is
  constrained (`ToolPlan.continuation`), so a plain-text answer costs nothing extra;
- "none": the tools are not shown and nothing is parsed.
`ToolCallReader` splits the generated text into content and calls as it streams.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import SamplingError
from runtime.structured.grammar import check_schema, literal, schema_rule

TRIGGER = "<tool_call>"
OPEN = TRIGGER + "\n"
HEAD = '{"name": "'
MID = '", "arguments": '
CLOSE = "}\n</tool_call>"
SEP = "\n"
MAX_PARALLEL_CALLS = 4
MAX_TOOLS = 64
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_EMPTY_PARAMS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]  # as given: what the prompt shows and the grammar enforces

    def as_openai(self) -> dict[str, Any]:
        fn: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description:
            fn["description"] = self.description
        return {"type": "function", "function": fn}


@dataclass(frozen=True)
class ToolChoice:
    mode: str  # "auto" | "none" | "required" | "function"
    name: str | None = None


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


@dataclass(frozen=True)
class ToolCallDelta:
    """A streamed piece of call `index`: the first carries id and name, the rest arguments."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None


def parse_tools(value: Any) -> tuple[ToolSpec, ...]:
    """OpenAI's `tools` list -> ToolSpecs; raises SamplingError naming the problem."""
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        raise SamplingError("tools must be a list of {type: function, function: {...}} objects")
    if len(value) > MAX_TOOLS:
        raise SamplingError(f"tools lists {len(value)} functions; at most {MAX_TOOLS} are allowed")
    out: list[ToolSpec] = []
    for i, tool in enumerate(value):
        if isinstance(tool, ToolSpec):
            out.append(tool)
            continue
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(tool, Mapping) or tool.get("type", "function") != "function" or \
                not isinstance(fn, Mapping):
            raise SamplingError(f"tools[{i}] must be {{type: function, function: {{...}}}}")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise SamplingError(f"tools[{i}].function.name must be 1-64 letters, digits, _ or -")
        params = fn.get("parameters", _EMPTY_PARAMS)
        if params is None:
            params = _EMPTY_PARAMS
        where = f"tools[{i}].function.parameters"
        if not isinstance(params, Mapping) or params.get("type") != "object":
            raise SamplingError(f"{where} must be an object schema (type \"object\")")
        out.append(ToolSpec(name, str(fn.get("description") or ""),
                            check_schema(dict(params), where)))
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise SamplingError("tools lists a function name twice")
    return tuple(out)


def parse_tool_choice(value: Any, tools: Sequence[ToolSpec]) -> ToolChoice:
    if isinstance(value, ToolChoice):
        choice = value
    elif value is None:
        choice = ToolChoice("auto" if tools else "none")
    elif isinstance(value, str):
        if value not in ("auto", "none", "required"):
            raise SamplingError("tool_choice must be 'auto', 'none', 'required' or "
                                "{type: function, function: {name}}")
        choice = ToolChoice(value)
    elif isinstance(value, Mapping) and isinstance(value.get("function"), Mapping):
        choice = ToolChoice("function", value["function"].get("name"))
    else:
        raise SamplingError("tool_choice must be 'auto', 'none', 'required' or "
                            "{type: function, function: {name}}")
    if choice.mode in ("required", "function") and not tools:
        raise SamplingError(f"tool_choice {choice.mode!r} needs tools")
    if choice.mode == "function" and choice.name not in {t.name for t in tools}:
        raise SamplingError(f"tool_choice names {choice.name!r}, which is not among the tools")
    return choice


# --- the grammar ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToolPlan:
    """What prepare decided for a request's tools: which may be called and how it is enforced.

    `rules` is the Lark grammar without its start rule (the arguments of every allowed function,
    `x_call` and `x_calls`); `lazy` plans (auto) install `continuation(...)` once the model
    opens a call.
    """

    tools: tuple[ToolSpec, ...]  # the callable ones
    parallel: bool
    lazy: bool
    rules: str
    required: bool

    def head(self, t: ToolSpec) -> str:
        return OPEN + HEAD + t.name + MID

    def continuation(self, written: str) -> str | None:
        """The grammar for the rest of a call whose first characters `written` (from the
        trigger on) were written unconstrained; None when they cannot start a valid call."""
        alts = []
        for i, t in enumerate(self.tools):
            head = self.head(t)
            if head.startswith(written):
                rest = head[len(written):]
                alts.append(f"{literal(rest)} x_args_{i}" if rest else f"x_args_{i}")
        if not alts:
            return None
        first = f"( {' | '.join(alts)} ) {literal(CLOSE)}"
        more = f" ( {literal(SEP)} x_calls )?" if self.parallel else ""
        return f"{self.rules}start: {first}{more}\n"

    @property
    def grammar(self) -> str:
        """The grammar of whole calls (what required/named tool choice samples with)."""
        return f"{self.rules}start: x_calls\n"


def plan_tools(tools: Sequence[ToolSpec], choice: ToolChoice, parallel: bool) -> ToolPlan:
    """The call rules for the functions `choice` allows."""
    allowed = tuple(t for t in tools if choice.mode != "function" or t.name == choice.name)
    lines, alts = [], []
    for i, t in enumerate(allowed):
        lines.append(f"x_args_{i}: {schema_rule(t.parameters)}")
        alts.append(f"{literal(t.name + MID)} x_args_{i}")
    lines.append(f"x_call: {literal(OPEN + HEAD)} ( {' | '.join(alts)} ) {literal(CLOSE)}")
    more = f" ( {literal(SEP)} x_call ){{0,{MAX_PARALLEL_CALLS - 1}}}" if parallel else ""
    lines.append(f"x_calls: x_call{more}")
    rules = "".join(line + "\n" for line in lines)
    return ToolPlan(allowed, parallel, choice.mode == "auto", rules, choice.mode != "auto")


# --- reading calls back --------------------------------------------------------------------------
@dataclass
class _Call:
    text: str = ""  # everything after the trigger so far
    name: str | None = None
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:24])
    args_start: int = 0
    args_end: int | None = None
    depth: int = 0  # of the arguments' brackets, while they are written
    in_string: bool = False
    escaped: bool = False
    sent: int = 0  # argument characters already streamed
    complete: bool = False

    def args_char(self, ch: str) -> bool:
        """Follow one character of the arguments (a JSON object); True once it closed."""
        if self.in_string:
            if self.escaped:
                self.escaped = False
            elif ch == "\\":
                self.escaped = True
            elif ch == '"':
                self.in_string = False
        elif ch == '"':
            self.in_string = True
        elif ch in "{[":
            self.depth += 1
        elif ch in "}]":
            self.depth -= 1
            return self.depth == 0
        return False


class ToolCallReader:
    """Splits generated text into content and tool calls as it arrives.

    In auto mode text is content until the trigger (a possible start of it is held back);
    required mode is calls only."""

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.in_calls = plan.required
        self.content: list[str] = []
        self.calls: list[_Call] = [_Call()] if plan.required else []
        self._held = ""
        self.abandoned = False

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        if not self.in_calls:
            return self._content(text), []
        deltas: list[ToolCallDelta] = []
        for ch in text:
            self._call_char(ch, deltas)
        return "", deltas

    def _content(self, text: str) -> str:
        if self.abandoned:
            self.content.append(text)
            return text
        buf = self._held + text
        idx = buf.find(TRIGGER)
        if idx >= 0:
            self._held, self.in_calls = "", True
            self.calls.append(_Call(text=buf[idx:]))
            out = buf[:idx]
        else:
            hold = next((n for n in range(min(len(TRIGGER) - 1, len(buf)), 0, -1)
                         if buf.endswith(TRIGGER[:n])), 0)
            out, self._held = buf[: len(buf) - hold], buf[len(buf) - hold:]
        self.content.append(out)
        return out

    def abandon(self) -> str:
        """The opened call cannot be completed (auto mode): its text becomes content."""
        self.abandoned, self.in_calls = True, False
        text = self.calls.pop().text if self.calls else ""
        self.content.append(text)
        return text

    def _call_char(self, ch: str, deltas: list[ToolCallDelta]) -> None:
        call = self.calls[-1]
        if call.complete:  # between calls: a separator, then the next call's text
            if ch == SEP:
                self.calls.append(_Call())
            return
        call.text += ch
        index = len(self.calls) - 1
        if call.name is None:
            head = OPEN + HEAD
            if len(call.text) > len(head) and call.text.endswith(MID):
                call.name = call.text[len(head): -len(MID)]
                call.args_start = len(call.text)
                deltas.append(ToolCallDelta(index, "", call.id, call.name))
            return
        if call.args_end is None:
            if call.args_char(ch):
                call.args_end = len(call.text)
            piece = call.text[call.args_start + call.sent: call.args_end or len(call.text)]
            if piece:
                call.sent += len(piece)
                deltas.append(ToolCallDelta(index, piece))
            return
        if call.text.endswith(CLOSE):
            call.complete = True

    def finish(self) -> tuple[str, tuple[ToolCall, ...]]:
        """(content, complete calls). An unfinished call's text is returned in the content, so
        a generation cut by max_tokens loses nothing."""
        content = "".join(self.content) + self._held
        done = [c for c in self.calls if c.complete]
        rest = [c for c in self.calls if not c.complete and c.text]
        if rest:
            content += "".join(c.text for c in rest)
        calls = tuple(
            ToolCall(c.id, c.name or "", c.text[c.args_start: c.args_end].strip())
            for c in done
        )
        return content, calls


# --- prompting without a tool-aware template ---------------------------------------------------
def fallback_system_text(tools: Sequence[ToolSpec], choice: ToolChoice) -> str:
    """What a template without tool support is given, as (the start of) a system message."""
    specs = json.dumps([t.as_openai()["function"] for t in tools], ensure_ascii=False)
    how = {
        "required": "You must call at least one function.",
        "function": f"You must call the function {choice.name}.",
    }.get(choice.mode, "Call a function only when it helps; otherwise answer in plain text.")
    return (
        "You can call these functions:\n"
        f"{specs}\n"
        f"{how} To call a function, answer with\n"
        f"{OPEN}{HEAD}FUNCTION_NAME{MID}ARGUMENTS_AS_JSON_OBJECT{CLOSE}\n"
        "and nothing else; the results come back in <tool_response> blocks."
    )


def call_text(name: str, arguments: Any) -> str:
    """An earlier call, written back in the call syntax (for a conversation's history)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return f"{OPEN}{HEAD}{name}{MID}{args}{CLOSE}"


def response_text(content: str) -> str:
    return f"<tool_response>\n{content}\n</tool_response>"
