"""pydantic's validation errors as edgemoe's: one line per problem naming file, field, expectation.

The contract's models (manifest, device profile) declare their rules with pydantic; this module
turns what pydantic reports into the messages users read, e.g.
`bundles/x/manifest.json: field 'shape.top_k' must be an integer, got 'two'`, so no model
formats its own errors and no ValidationError (or traceback) ever reaches a user.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError, WrapValidator
from pydantic_core import ErrorDetails, PydanticCustomError

from contract.errors import EdgemoeError

T = TypeVar("T")

# The error type of every rule the contract states itself. Its context carries either
# `expected` (and optionally `got`) or `text`, and optionally `field`: a path below the error's
# location, for rules that span fields and so are checked by the enclosing model.
RULE = "edgemoe_rule"

# What pydantic's own error types mean, phrased as an expectation ("must be ...").
_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number",
    "string_type": "a string", "bool_type": "true or false", "bool_parsing": "true or false",
    "dict_type": "an object", "model_type": "an object", "model_attributes_type": "an object",
    "dataclass_type": "an object", "dataclass_exact_type": "an object",
    "list_type": "a list", "tuple_type": "a list", "iterable_type": "a list",
    "none_required": "null", "literal_error": "{expected}",
    "greater_than": "greater than {gt}", "greater_than_equal": "at least {ge}",
    "less_than": "less than {lt}", "less_than_equal": "at most {le}",
    "too_short": "a list of at least {min_length} item(s)",
    "too_long": "a list of at most {max_length} item(s)",
    "string_too_short": "a string of at least {min_length} character(s)",
    "string_pattern_mismatch": "a string matching {pattern}",
}
_REPR_LIMIT = 80


def rule(expected: str, *, got: Any = ..., field: Sequence[str | int] = ()) -> PydanticCustomError:
    """A broken rule: `field` must be `expected` (`got` defaults to the value being validated)."""
    ctx: dict[str, Any] = {"expected": printable(expected), "field": tuple(field),
                           "at": _at(field)}
    if got is not ...:
        ctx["got"] = _got(got)  # shown as repr, so a hostile string cannot break rendering
    return PydanticCustomError(RULE, "{at}must be {expected}", ctx)


def problem(text: str, *, field: Sequence[str | int] = ()) -> PydanticCustomError:
    """A broken rule that does not read as "must be ...", e.g. an unknown quant name."""
    return PydanticCustomError(RULE, "{at}{text}", {"text": printable(text),
                                                     "field": tuple(field), "at": _at(field)})


def printable(text: str) -> str:
    """`text` with what UTF-8 cannot encode (a lone surrogate from a JSON escape such as
    "\\ud800") written as a backslash escape: pydantic encodes an error's context to UTF-8
    when it renders the message, and would raise UnicodeEncodeError instead."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _at(field: Sequence[str | int]) -> str:
    """pydantic's own rendering (str(ValidationError), e.g. from a constructor) shows only the
    enclosing location, so a rule on a sub-field names it in the message as well."""
    return f"field '{printable(field_path(field))}': " if field else ""


def expect(expected: str, check: Callable[[Any], Any] | None = None) -> WrapValidator:
    """Annotated metadata: any type or constraint failure of the inner type reads as
    "must be `expected`"; `check` (optional) may normalise the value or raise ValueError."""

    def wrap(value: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            result = handler(value)
        except ValidationError as e:
            if any(err["type"] == RULE for err in e.errors()):
                raise  # an inner rule already said what it expects
            raise rule(expected) from None
        if check is None:
            return result
        try:
            return check(result)
        except PydanticCustomError:
            raise  # the check said precisely what is wrong
        except ValueError:
            raise rule(expected) from None

    return WrapValidator(wrap)


def field_path(loc: Iterable[str | int]) -> str:
    """('expert_layers', 0, 'tensors') -> "expert_layers[0].tensors"."""
    out = ""
    for part in loc:
        if isinstance(part, int) or (isinstance(part, str) and part.isdigit()):
            out += f"[{part}]"
        elif part.isidentifier():
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def _got(value: Any) -> str:
    """The offending value as a short repr (repr escapes lone surrogates; printable() is for
    objects whose own repr does not)."""
    text = printable(repr(value))
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


def describe(err: ErrorDetails, where: str) -> str:
    """One of pydantic's error records as one line for a user."""
    ctx = err.get("ctx") or {}
    loc = list(err["loc"])
    kind = err["type"]
    if kind == RULE:
        loc += list(ctx.get("field", ()))
    key = None
    if loc and loc[-1] == "[key]":  # a dict key failed: loc is (..., key, "[key]")
        loc, key = loc[:-2], loc[-2]
    path = field_path(loc)
    subject = f"field '{path}'" if path else "the top level"
    if key is not None:
        subject += f" key {key!r}"
    if kind in ("missing", "missing_argument", "missing_keyword_only_argument"):
        return f"{where}: missing field '{path}'"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return f"{where}: unknown field '{path}'"
    if kind == RULE and "text" in ctx:
        return f"{where}: {subject}: {ctx['text']}" if path else f"{where}: {ctx['text']}"
    if kind == RULE:
        expected, shown = ctx["expected"], ctx.get("got") or _got(err["input"])
    elif kind in _EXPECTED:
        expected, shown = _EXPECTED[kind].format(**ctx), _got(err["input"])
    else:
        return f"{where}: {subject}: {err['msg']}"
    got_text = "" if key is not None else f", got {shown}"  # a bad key is shown already
    return f"{where}: {subject} must be {expected}{got_text}"


def problems(error: ValidationError, where: str) -> list[str]:
    """Every problem pydantic found, one line each, in the order it found them."""
    return [describe(err, where) for err in error.errors()]


def validate(
    adapter: TypeAdapter[T],
    data: Any,
    where: str,
    error: type[EdgemoeError],
    context: dict[str, Any] | None = None,
) -> T:
    """`adapter.validate_python(data)`, raising `error` with one line per problem instead."""
    try:
        return adapter.validate_python(data, context=context)
    except ValidationError as e:
        raise error(one_line(e, where)) from None


def one_line(error: ValidationError, where: str, most: int = 3) -> str:
    """The problems as ONE line (a CLI prints `error: ...` once): the first few, then a count.
    Text that cannot be encoded (lone surrogates from a hostile file) is escaped, not raised."""
    try:
        found = problems(error, where)
    except (UnicodeEncodeError, UnicodeDecodeError):
        return f"{where}: {error.error_count()} invalid field(s) (unprintable values)"
    safe = [p.encode("utf-8", "backslashreplace").decode("utf-8") for p in found[:most]]
    prefix = f"{where}: "
    rest = [p[len(prefix):] if p.startswith(prefix) else p for p in safe[1:]]
    more = f" (and {len(found) - most} more)" if len(found) > most else ""
    return "; ".join(safe[:1] + rest) + more
