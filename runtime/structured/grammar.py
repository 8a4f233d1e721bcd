"""Grammars for constrained decoding, as llguidance reads them: Lark text with inline JSON Schemas.

Every constraint a request can carry becomes one Lark grammar (llguidance's dialect): a JSON
Schema is `start: %json {...}`, a tool call embeds each function's parameter schema the same way,
and a raw `grammar` is taken as Lark or converted from GBNF (llama.cpp's format) by llguidance's
own converter. llguidance implements JSON Schema itself (`pattern`, numeric bounds, `oneOf`,
`allOf`, `$ref`, formats, ...) and refuses what it cannot enforce, naming the keyword, so a schema
is either honoured or refused up front, never silently loosened. Two options are ours, set on
every schema (`JSON_OPTIONS`): whitespace between tokens is bounded (a small model could
otherwise write blank lines forever) and any `\\uXXXX` escape is allowed in strings.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from runtime.errors import SamplingError

MAX_GRAMMAR_CHARS = 256 * 1024
MAX_SCHEMA_CHARS = 256 * 1024
MAX_MESSAGE_CHARS = 300
# llguidance's per-schema options ("x-guidance"): one space, or a newline and indentation.
JSON_OPTIONS = {
    "whitespace_pattern": "(?: |\\n[ \\t]{0,20})?",
    "json_allow_general_unicode_escapes": True,
}
ANY_OBJECT: dict[str, Any] = {"type": "object"}


def literal(text: str) -> str:
    """`text` as a Lark string literal that matches exactly `text` (JSON's escaping, which
    llguidance's Lark reads the same way)."""
    return json.dumps(text)


def schema_rule(schema: dict[str, Any]) -> str:
    """The Lark body of a rule whose value is a JSON document valid against `schema`."""
    clean = {k: v for k, v in schema.items() if k != "x-guidance"}
    return "%json " + json.dumps({**clean, "x-guidance": JSON_OPTIONS}, ensure_ascii=True)


def schema_grammar(schema: dict[str, Any]) -> str:
    """A whole grammar: one JSON document valid against `schema`, nothing around it."""
    return f"start: {schema_rule(schema)}\n"


def _one_line(message: str) -> str:
    text = " ".join(message.split())
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


@lru_cache(maxsize=64)
def _problem(grammar: str) -> str | None:
    return problem(grammar, None, cached=False)


def problem(grammar: str, tokenizer: Any = None, cached: bool = True) -> str | None:
    """Why llguidance refuses `grammar` (one line), or None when it accepts it. Without a
    tokenizer only the grammar itself is checked (no engine needed; the verdicts on recent
    grammars are kept, as a client tends to send one schema again and again)."""
    if tokenizer is None and cached:
        return _problem(grammar)
    import llguidance

    limits = llguidance.LLParserLimits(verbose_errors=False)
    lark = llguidance.LLMatcher.grammar_from_lark(grammar)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
        lark, tokenizer, limits=limits
    )
    return _one_line("; ".join(messages) or "refused") if is_error else None


def check_schema(schema: Any, param: str) -> dict[str, Any]:
    """`schema` if constrained decoding can enforce it; raises SamplingError naming the keyword
    (the message starts with `param`, the request field)."""
    if not isinstance(schema, dict):
        raise SamplingError(f"{param} schema must be a JSON object")
    try:
        size = len(json.dumps(schema))
    except (TypeError, ValueError) as e:
        raise SamplingError(f"{param} schema is not JSON ({e})") from None
    if size > MAX_SCHEMA_CHARS:
        raise SamplingError(f"{param} schema must be at most {MAX_SCHEMA_CHARS} characters")
    why = problem(schema_grammar(schema))
    if why is not None:
        raise SamplingError(f"{param} schema is not supported for constrained decoding: {why}")
    return schema


def user_grammar(text: Any) -> str:
    """A request's raw `grammar` (Lark, or GBNF as llama.cpp's server takes it) as Lark;
    raises SamplingError saying what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise SamplingError("grammar must be a non-empty GBNF or Lark text")
    if len(text) > MAX_GRAMMAR_CHARS:
        raise SamplingError(f"grammar must be at most {MAX_GRAMMAR_CHARS} characters")
    from llguidance.gbnf_to_lark import any_to_lark

    try:
        lark = any_to_lark(text)
    except Exception as e:  # the converter raises plain Exceptions for GBNF errors
        raise SamplingError(f"grammar could not be parsed: {_one_line(str(e))}") from None
    why = problem(lark)
    if why is not None:
        raise SamplingError(f"grammar could not be parsed: {why}")
    return lark
