"""Structured output: what a request constrains (response_format, a raw grammar, tools) and the
grammar that enforces it while sampling, decided once by `Model.prepare`.

- `response_format` `{"type": "json_object"}`: any JSON object; `{"type": "json_schema",
  "json_schema": {"name", "schema", "strict"}}`: a document valid against the schema (always
  enforced, whatever `strict` says). Unsupported schema keywords are refused up front
  (`json_schema.check_schema`).
- `grammar`: a raw GBNF grammar (llama.cpp server's extension), used as given.
- tools: see `runtime.structured.tools`; with tool_choice "auto" and a response_format the answer
is either   a document of that format or calls.
A generation that reaches max_tokens before its document is complete ends with finish_reason
"length" and the text as generated (not valid JSON). To make that rare, the last tokens steer to
the shortest valid end (`runtime.structured.closing`): it happens only when max_tokens is smaller
than the schema's shortest document, or with a raw grammar (whose ends edgemoe cannot measure).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runtime.errors import SamplingError
from runtime.structured.closing import STRING, STRUCTURE
from runtime.structured.gbnf import GrammarBuilder
from runtime.structured.json_progress import JsonProgress
from runtime.structured.json_schema import Schema, check_schema
from runtime.structured.tools import (
    ToolCall,
    ToolCallDelta,
    ToolCallReader,
    ToolChoice,
    ToolPlan,
    ToolSpec,
    plan_tools,
)

FORMATS = ("text", "json_object", "json_schema")
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_GRAMMAR_CHARS = 256 * 1024
# Tokens of slack on top of the measured need before closing starts (the end-of-generation
# token included).
CLOSING_MARGIN = 6


@dataclass(frozen=True)
class ResponseFormat:
    """A checked response_format; `schema` None with type json_object means any JSON object."""

    type: str = "text"
    schema: Schema | None = None
    name: str | None = None
    strict: bool = False

    @property
    def constrains(self) -> bool:
        return self.type != "text"


def parse_response_format(value: Any) -> ResponseFormat | None:
    """OpenAI's response_format object (or a ResponseFormat) -> ResponseFormat."""
    if value is None or isinstance(value, ResponseFormat):
        return value
    if not isinstance(value, Mapping) or value.get("type") not in FORMATS:
        raise SamplingError("response_format must be {type: text | json_object | json_schema}")
    kind = value["type"]
    if kind != "json_schema":
        return ResponseFormat(kind)
    spec = value.get("json_schema")
    if not isinstance(spec, Mapping):
        raise SamplingError("response_format of type json_schema needs a json_schema object "
                            "{name, schema, strict}")
    name = spec.get("name", "response")
    if not isinstance(name, str) or not _NAME.match(name):
        raise SamplingError("response_format json_schema.name must be 1-64 letters, digits, "
                            "_ or -")
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise SamplingError("response_format json_schema.strict must be a boolean")
    raw = spec.get("schema")
    if raw is None:
        return ResponseFormat("json_object", None, name, bool(strict))
    return ResponseFormat("json_schema", check_schema(raw, "response_format", prefix="rf-"),
                          name, bool(strict))


def check_grammar_text(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise SamplingError("grammar must be a non-empty GBNF text")
    if len(value) > MAX_GRAMMAR_CHARS:
        raise SamplingError(f"grammar must be at most {MAX_GRAMMAR_CHARS} characters")
    return value


@dataclass(frozen=True)
class Constraint:
    """How one request's output is constrained: the grammar the sampler starts with (None:
    free until a lazy tool call opens), the document to measure for closing, the tools."""

    grammar: str | None = None
    document: ResponseFormat | None = None  # the content is a JSON document of this format
    tools: ToolPlan | None = None
    source: str = "response_format"  # the request field to name in errors

    @property
    def active(self) -> bool:
        return self.grammar is not None or self.tools is not None


NO_CONSTRAINT = Constraint()


def build_constraint(
    response_format: ResponseFormat | None,
    grammar: str | None,
    tools: Sequence[ToolSpec],
    choice: ToolChoice,
    parallel: bool,
) -> Constraint:
    """Decide the grammar for a request (pure: no engine needed)."""
    fmt = response_format if response_format is not None and response_format.constrains else None
    calling = bool(tools) and choice.mode != "none"
    if grammar is not None:
        if fmt is not None:
            raise SamplingError("grammar cannot be combined with a JSON response_format; give one")
        if calling:
            raise SamplingError("grammar cannot be combined with tools; set tool_choice 'none'")
        return Constraint(grammar, None, None, "grammar")
    if fmt is None and not calling:
        return NO_CONSTRAINT
    builder = GrammarBuilder()
    content = None
    if fmt is not None:
        content = builder.schema(fmt.schema, "rf") if fmt.schema is not None else builder.generic()
    if not calling:
        return Constraint(builder.render(content), fmt)
    plan = plan_tools(tools, choice, parallel, builder)
    if plan.required:
        return Constraint(plan.grammar, None, plan, "tools")
    if content is None:  # auto: free text until the model opens a call
        return Constraint(None, None, plan, "tools")
    union = ToolPlan(plan.tools, plan.parallel, False, plan.rules, False)
    return Constraint(f"{plan.rules}\nroot ::= {content} | x-calls", fmt, union, "tools")


class OutputTracker:
    """One choice's output as it is generated: content and tool calls apart, and how many bytes
    the shortest valid end still needs (None when nothing is being constrained)."""

    def __init__(self, constraint: Constraint) -> None:
        self.constraint = constraint
        self.reader = ToolCallReader(constraint.tools) if constraint.tools is not None else None
        doc = constraint.document
        self.document = JsonProgress(doc.schema) if doc is not None else None
        self.grammar_on = constraint.grammar is not None
        self._lazy_done = False

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        """(content piece, call deltas) for newly generated text."""
        if self.reader is None:
            if self.document is not None:
                self.document.feed(text)
            return text, []
        content, deltas = self.reader.feed(text)
        if self.document is not None and content:
            self.document.feed(content)
        return content, deltas

    def lazy_grammar(self) -> tuple[str | None, str]:
        """Once an auto-mode call has opened: (grammar for the rest of it, content to emit).

        (None, "") while nothing is due; (None, text) when the opened text cannot become a
        valid call, which then stays content."""
        plan = self.constraint.tools
        if self._lazy_done or self.reader is None or plan is None or not plan.lazy:
            return None, ""
        if not self.reader.in_calls:
            return None, ""
        self._lazy_done = True
        grammar = plan.continuation(self.reader.calls[-1].text)
        if grammar is None:
            return None, self.reader.abandon()
        self.grammar_on = True
        return grammar, ""

    def need(self) -> int | None:
        if not self.grammar_on:
            return None
        if self.reader is not None and self.reader.in_calls:
            return self.reader.need() + CLOSING_MARGIN
        if self.document is not None:
            return self.document.need() + CLOSING_MARGIN
        if self.reader is not None and self.reader.plan.required:
            return self.reader.need() + CLOSING_MARGIN
        return None

    def place(self) -> str:
        """Where the output stands, for the closing bonus: inside a JSON string or not."""
        if self.reader is not None and self.reader.in_calls:
            return STRING if self.reader.in_string() else STRUCTURE
        if self.document is not None and self.document.in_string():
            return STRING
        return STRUCTURE

    def finish(self) -> tuple[str, tuple[ToolCall, ...]]:
        if self.reader is None:
            return "", ()
        return self.reader.finish()
