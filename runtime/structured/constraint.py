"""Structured output: what a request constrains (response_format, a raw grammar, tools), decided
once by `Model.prepare`, and one choice's constrained output as it is generated.

- `response_format` `{"type": "json_object"}`: any JSON object; `{"type": "json_schema",
  "json_schema": {"name", "schema", "strict"}}`: a document valid against the schema (always
  enforced, whatever `strict` says). A schema the library cannot enforce is refused up front,
  naming the keyword (`runtime.structured.grammar.check_schema`).
- `grammar`: a raw grammar, GBNF (llama.cpp server's extension) or llguidance's Lark.
- tools: see `runtime.structured.tools`; with tool_choice "auto" and a response_format the answer
  is either a document of that format or calls.
Everything becomes one Lark grammar that llguidance enforces while sampling, on every backend
(`runtime.structured.guide`). Near max_tokens the output is steered to its shortest valid end;
when even that does not fit, it ends with finish_reason "length" and the text as generated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.backends.base import Backend
from runtime.errors import SamplingError
from runtime.structured.grammar import (
    ANY_OBJECT,
    MAX_GRAMMAR_CHARS,
    check_schema,
    schema_grammar,
    schema_rule,
    user_grammar,
)
from runtime.structured.guide import Guide, vocabulary
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


@dataclass(frozen=True)
class ResponseFormat:
    """A checked response_format; `schema` None with type json_object means any JSON object."""

    type: str = "text"
    schema: dict[str, Any] | None = None
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
    return ResponseFormat("json_schema", check_schema(raw, "response_format"), name,
                          bool(strict))


def check_grammar_text(value: Any) -> str | None:
    """The cheap checks of a raw grammar (type, size); it is parsed at prepare."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise SamplingError("grammar must be a non-empty GBNF or Lark text")
    if len(value) > MAX_GRAMMAR_CHARS:
        raise SamplingError(f"grammar must be at most {MAX_GRAMMAR_CHARS} characters")
    return value


@dataclass(frozen=True)
class Constraint:
    """How one request's output is constrained: the Lark grammar enforced from the first token
    (None: free until a lazy tool call opens) and the tools."""

    grammar: str | None = None
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
        return Constraint(user_grammar(grammar), None, "grammar")
    if fmt is None and not calling:
        return NO_CONSTRAINT
    schema = None if fmt is None else fmt.schema if fmt.schema is not None else ANY_OBJECT
    if not calling:
        assert schema is not None
        return Constraint(schema_grammar(schema))
    plan = plan_tools(tools, choice, parallel)
    if plan.required:
        return Constraint(plan.grammar, plan, "tools")
    if schema is None:  # auto: free text until the model opens a call
        return Constraint(None, plan, "tools")
    union = ToolPlan(plan.tools, plan.parallel, False, plan.rules, False)
    return Constraint(f"{plan.rules}x_doc: {schema_rule(schema)}\nstart: x_doc | x_calls\n",
                      union, "tools")


def check_constraint(engine: Backend, constraint: Constraint) -> None:
    """Compile the request's grammar against `engine`'s vocabulary once, before it may queue,
    so a grammar it cannot run is a 400 at once (a lazy tool grammar in its complete form)."""
    grammar = constraint.grammar
    if grammar is None and constraint.tools is not None:
        grammar = constraint.tools.grammar
    if grammar is not None:
        vocabulary(engine).matcher(grammar, constraint.source)


class OutputTracker:
    """One choice's constrained output as it is generated: the guide that masks each token
    (none while an auto-mode answer is free text), and content and tool calls apart."""

    def __init__(self, constraint: Constraint, engine: Backend, max_tokens: int,
                 draw_first: bool = False) -> None:
        """`draw_first`: the sampler is greedy or samples the whole softmax (see Guide.step)."""
        self.constraint = constraint
        self.draw_first = draw_first
        self.vocab = vocabulary(engine)
        self.guide = None if constraint.grammar is None else \
            Guide(self.vocab, constraint.grammar, constraint.source, max_tokens)
        self.reader = ToolCallReader(constraint.tools) if constraint.tools is not None else None
        self._lazy_done = False

    def pick(self, logits: np.ndarray, sample: Any, left: int) -> int | None:
        """The next token (`left` tokens left, this one included); None: none can follow."""
        if self.guide is None:
            return int(sample(logits))
        return self.guide.step(logits, sample, left, self.draw_first)

    @property
    def done(self) -> bool:
        """The constrained output is complete and its grammar admits nothing more."""
        return self.guide is not None and self.guide.done

    def feed(self, text: str, left: int) -> tuple[str, list[ToolCallDelta]]:
        """(content piece, call deltas) for newly generated text (`left` tokens still to go)."""
        if self.reader is None:
            return text, []
        content, deltas = self.reader.feed(text)
        return content + self._lazy_start(left), deltas

    def _lazy_start(self, left: int) -> str:
        """Once an auto-mode call has opened, constrain the rest of it; returns text that
        becomes content instead (an opening that cannot become a valid call)."""
        plan = self.constraint.tools
        if self._lazy_done or self.reader is None or plan is None or not plan.lazy:
            return ""
        if not self.reader.in_calls:
            return ""
        self._lazy_done = True
        written = self.reader.calls[-1].text
        grammar = plan.continuation(written)
        if grammar is None:
            return self.reader.abandon()
        self.guide = Guide(self.vocab, grammar, self.constraint.source, left, written)
        return ""

    def finish(self) -> tuple[str, tuple[ToolCall, ...]]:
        if self.reader is None:
            return "", ()
        return self.reader.finish()
