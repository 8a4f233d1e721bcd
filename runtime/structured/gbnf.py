"""GBNF grammars (llama.cpp's grammar format) for constrained decoding, built in one place.

JSON Schemas go through llama-cpp-python's converter (`llama_cpp.llama_grammar.SchemaConverter`,
pure Python) after `json_schema.check_schema` has refused what it would ignore, with three
corrections that keep every output valid JSON:
- string characters exclude control characters (the stock rule lets a raw newline into a JSON
  string, which no JSON parser accepts);
- literals (enum/const values, property names) are escaped for GBNF exactly (the stock escaping
  breaks on a backslash or quote inside a value);
- a free-form value (`{}`, `"type": "object"` without properties, `json_object`) nests at most
  GENERIC_DEPTH levels, so a document can always be closed in a bounded number of tokens.
Several schemas share one converter (each under its own rule prefix), so a tool-call grammar
holds every function's arguments rule at once.
"""

from __future__ import annotations

import copy
from typing import Any

from runtime.errors import SamplingError
from runtime.structured.json_schema import Schema

GENERIC_DEPTH = 4
# JSON string characters: anything but a quote, a backslash or a control character, or an escape.
_CHAR = (
    r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] '
    r"[0-9a-fA-F])"
)
_SCALARS = "string | number | boolean | null"
_GBNF_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def literal(text: str) -> str:
    """`text` as a GBNF string literal that matches exactly `text`."""
    out = []
    for ch in text:
        if ch in _GBNF_ESCAPES:
            out.append(_GBNF_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _converter_class() -> type:
    from llama_cpp.llama_grammar import SchemaConverter

    class Converter(SchemaConverter):  # type: ignore[misc, valid-type]
        def _format_literal(self, literal_text: str) -> str:
            return literal(literal_text)

    return Converter


class GrammarBuilder:
    """Rules from one or more schemas plus hand-written rules, rendered as one GBNF text.

    Rule names written by hand start with "x-" so they never meet the converter's names."""

    def __init__(self) -> None:
        self._conv = _converter_class()(
            prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
        )
        self._generic = False

    def schema(self, schema: Schema, name: str) -> str:
        """Add the rules of a checked schema under `name`; returns the rule to reference."""
        root = copy.deepcopy(schema.root)  # the converter rewrites $ref strings in place
        try:
            self._conv.resolve_refs(root, name)
            return str(self._conv.visit(root, name))
        except (AssertionError, ValueError, KeyError, TypeError, IndexError, AttributeError,
                RecursionError) as e:
            raise SamplingError(f"{name} schema could not be turned into a grammar ({e})") from None

    def generic(self) -> str:
        """The rule for any JSON object (what `json_object` asks for)."""
        self._generic = True
        self._add_primitives("object")
        return "object"

    def rule(self, name: str, body: str) -> str:
        """Add a hand-written rule (name must start with "x-")."""
        assert name.startswith("x-"), name
        self._conv._rules[name] = body
        return name

    def render(self, root: str | None) -> str:
        """The whole grammar with `root ::= <root>` (root None: every rule but the root, to
        which a root line is appended later)."""
        rules: dict[str, Any] = self._conv._rules
        if self._generic or any(n in rules for n in ("object", "array", "value")):
            self._bound_generic()
        if "char" in rules:
            rules["char"] = _CHAR
        lines = [f"{name} ::= {body}" for name, body in sorted(rules.items()) if name != "root"]
        if root is not None:
            lines.append(f"root ::= {root}")
        return "\n".join(lines)

    # --- internals -------------------------------------------------------------------------
    def _add_primitives(self, *names: str) -> None:
        from llama_cpp.llama_grammar import PRIMITIVE_RULES

        for name in names:
            self._conv._add_primitive(name, PRIMITIVE_RULES[name])

    def _bound_generic(self) -> None:
        """Replace the converter's recursive `value`/`object`/`array` with a nesting bound."""
        self._add_primitives("string", "number", "boolean", "null")
        rules = self._conv._rules

        def level(d: int) -> tuple[str, str, str]:
            if d == 1:
                return "value", "object", "array"
            return f"x-value-{d}", f"x-object-{d}", f"x-array-{d}"

        for d in range(1, GENERIC_DEPTH + 1):
            value, obj, arr = level(d)
            if d == GENERIC_DEPTH:  # the innermost level holds no containers
                rules[value] = _SCALARS
                continue
            inner = level(d + 1)[0]
            rules[value] = f"{obj} | {arr} | {_SCALARS}"
            rules[obj] = (
                f'"{{" space ( string ":" space {inner} ( "," space string ":" space {inner} )* )?'
                ' "}" space'
            )
            rules[arr] = f'"[" space ( {inner} ( "," space {inner} )* )? "]" space'
