"""Rendering a bundle's chat template with a bounded cost: a template is a program that comes
with the bundle, so one render may spend only so many steps, seconds and characters.

jinja's immutable sandbox already refuses unsafe attribute access and range() over 100,000
items; it does not bound `{{ 'x' * 10**9 }}`, nested loops or a gigabyte of output, which would
hang or abort a device. Every loop iteration, call, filter and operator here spends from the
render's budget, and what multiplies a value's size is checked before it runs.
runtime/generation/chat_template.py owns the messages; this module owns the rendering.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from datetime import datetime
from functools import lru_cache, wraps
from typing import Any

from jinja2 import Template, TemplateError, nodes
from jinja2.ext import Extension
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from contract.errors import first_line
from runtime.errors import ChatTemplateError


def render_bounded(template: str, **variables: Any) -> str:
    """`template` rendered with `variables`; any failure of the template (its own error, a
    Python error such as 1/0, or a bound below) is a ChatTemplateError: a 400, never a crash."""
    allowance = MAX_PROMPT_CHARS + len(json.dumps(variables, default=str))
    token = _BUDGET.set(_Budget(allowance))
    try:
        return _joined(_compiled(template).generate(**variables), allowance)
    except ChatTemplateError:
        raise
    except Exception as e:  # TemplateError, ZeroDivisionError, OverflowError, MemoryError, ...
        kind = "" if isinstance(e, TemplateError) else f"{type(e).__name__}: "
        raise ChatTemplateError(f"chat template failed: {kind}{first_line(e)}") from None
    finally:
        _BUDGET.reset(token)


def _joined(chunks: Iterator[str], limit: int) -> str:
    """The rendered prompt, refused as soon as it passes `limit` characters: a template that
    writes a gigabyte would otherwise be tokenized (and abort the process) after it."""
    out, total = [], 0
    for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise TemplateTooCostly(f"chat template failed: the prompt it renders exceeds "
                                    f"{limit:,} characters")
        out.append(chunk)
    return "".join(out)


@lru_cache(maxsize=8)
def _compiled(template: str) -> Template:
    """Compiling costs ~1 ms; a bundle has one template, so keep it. Every for loop's iterable
    and every `~` operand go through _Guard, so loops spend from the render's budget and a
    concatenation cannot stringify a huge value."""
    env = _BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_Guard],
                          finalize=_checked)
    tree = env.parse(template)
    for loop in tree.find_all(nodes.For):
        loop.iter = _guard_call("steps", loop.iter)
    for concat in tree.find_all(nodes.Concat):
        concat.nodes = [_guard_call("checked", n) for n in concat.nodes]
    return env.from_string(tree)


def _guard_call(method: str, node: nodes.Expr) -> nodes.Expr:
    """`node` passed through _Guard.`method` (an extension attribute: a template cannot
    shadow it as it could a global name)."""
    guard = nodes.ExtensionAttribute(_Guard.identifier, method, lineno=node.lineno)
    return nodes.Call(guard, [node], [], None, None, lineno=node.lineno)


# --- bounds on what a bundle's template (a program from the bundle) may make us do ----------
MAX_PROMPT_CHARS = 1_000_000  # what a template may add to the request's own text
MAX_STEPS = 1_000_000  # loop iterations, calls, filters and operators in one render
MAX_SECONDS = 5.0  # one render's wall time
MAX_WIDTH = 100_000  # a width or count argument (center, ljust, batch, '%999999d', ...)
MAX_INT_BITS = 1 << 16  # an integer the template computes (2 ** 10**9 would never finish)
_WIDTH_ARGS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "to_bytes",
                         "indent", "batch", "slice"})
# Filters that turn their value into text: theirs is checked like a `{{ }}` value's.
_TEXT_FILTERS = frozenset({"capitalize", "center", "e", "escape", "forceescape", "format",
                           "indent", "lower", "pprint", "replace", "safe", "string",
                           "striptags", "title", "tojson", "trim", "truncate", "upper",
                           "urlencode", "urlize", "wordcount", "wordwrap", "xmlattr"})
_FORMAT_SPEC = re.compile(r"%(?:\([^)]*\))?[^a-zA-Z%]*|\{[^{}]*\}")


class TemplateTooCostly(ChatTemplateError):
    """A template that exceeds a render bound; rendering it again (another message layout)
    would cost the same, so render_chat does not retry it."""


class _Budget:
    """What one render may still spend: steps, time, and characters per value."""

    def __init__(self, max_chars: int) -> None:
        self.steps, self.max_chars = MAX_STEPS, max_chars
        self.deadline = time.monotonic() + MAX_SECONDS

    def spend(self) -> None:
        self.steps -= 1
        if self.steps < 0:
            raise TemplateTooCostly(f"chat template failed: over {MAX_STEPS:,} steps to render")
        if time.monotonic() > self.deadline:
            raise TemplateTooCostly(f"chat template failed: over {MAX_SECONDS:g} s to render")


_BUDGET: ContextVar[_Budget | None] = ContextVar("chat_template_budget", default=None)


def _spend() -> None:
    """One step of the current render (none outside a render, e.g. constant folding)."""
    budget = _BUDGET.get()
    if budget is not None:
        budget.spend()


def _max_chars() -> int:
    budget = _BUDGET.get()
    return budget.max_chars if budget is not None else MAX_PROMPT_CHARS


def _limit(size: int, most: int, what: str) -> None:
    """Refuse an operation before it builds `size` (characters, items or bits) over `most`."""
    if size > most:
        raise TemplateTooCostly(f"chat template failed: {what} would be {size:,} (over {most:,})")


def _weight(value: Any, most: int) -> int:
    """About how many characters `value` takes as text: its strings and items, nested lists,
    dicts and namespaces included (a list can hold one long string many times); stops past
    `most`. Costs a walk of the value, so it is kept to where text is made."""
    total, todo = 0, [value]
    while todo and total <= most:
        v = todo.pop()
        if isinstance(v, str | bytes):
            total += len(v)
        elif isinstance(v, list | tuple | dict):
            total += len(v)
            todo.extend(v.items() if isinstance(v, dict) else v)
        elif isinstance(v, Namespace):
            todo.append(v._Namespace__attrs)  # its repr shows them all
    return total


def _checked(value: Any) -> Any:
    """`value` if its text fits the render's allowance (jinja's `finalize`: every `{{ }}`)."""
    _limit(_weight(value, _max_chars()), _max_chars(), "a value's text")
    return value


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """`'x' * 10**9`, `s + s` doubling in a loop, `2 ** 10**9`, `'%999999999d' % 1`."""
    ints = [isinstance(v, int) and not isinstance(v, bool) for v in (left, right)]
    most = _max_chars()
    if operator == "*" and all(ints):
        _limit(left.bit_length() + right.bit_length(), MAX_INT_BITS, "an integer's bits")
    elif operator == "*" and any(ints):
        count, seq = (left, right) if ints[0] else (right, left)
        _limit(_weight(seq, most) * max(count, 0), most, "a repeated value's length")
    elif operator == "+":
        _limit(_weight(left, most) + _weight(right, most), most, "a joined value's length")
    elif operator == "**" and all(ints) and right > 0:
        _limit(right * max(abs(left).bit_length() - 1, 0), MAX_INT_BITS, "a power's bits")
    elif operator == "%" and isinstance(left, str):
        _check_format(left, right if isinstance(right, tuple) else (right,), {})


def _check_format(fmt: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """No field width or precision over MAX_WIDTH (written out or given by `*`), and
    arguments whose text fits the allowance."""
    _limit(_weight([args, kwargs], _max_chars()), _max_chars(), "a format's arguments")
    for spec in _FORMAT_SPEC.findall(fmt):
        spec = spec.partition(":")[2] if spec.startswith("{") else spec
        for digits in re.findall(r"\d+", spec):
            _limit(int(digits[:9]), MAX_WIDTH, "a format width")
        if "*" in spec:
            _check_widths(args, kwargs)


def _check_widths(args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool):
            _limit(abs(value), MAX_WIDTH, "a width or count")


def _check_op(name: str, value: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """A method or filter that can build far more than it is given: width and count
    arguments, format specs, join's separator times the items, replace's and translate's
    growth."""
    most = _max_chars()
    if name in _WIDTH_ARGS:
        _check_widths(args, kwargs)
    elif name in ("format", "format_map") and isinstance(value, str):
        _check_format(value, args, kwargs)
    elif name == "join" and args:
        sep, items = (value, args[0]) if isinstance(value, str | bytes) else (args[0], value)
        count = len(items) if isinstance(items, list | tuple) else 0
        _limit(_weight(sep, most) * count + _weight(items, most), most, "a joined value")
    elif name == "replace" and len(args) >= 2 and \
            all(isinstance(v, str) for v in (value, args[0], args[1])):
        grows = max(len(args[1]) - len(args[0]), 0) * (len(value) // max(len(args[0]), 1) + 1)
        _limit(len(value) + grows, most, "a replaced value's length")
    elif name == "translate" and args and isinstance(args[0], dict):
        longest = max((_weight(v, most) for v in args[0].values()), default=1)
        _limit(_weight(value, most) * max(longest, 1), most, "a translated value's length")


def _listed(name: str, args: tuple[Any, ...], at: int) -> tuple[Any, ...]:
    """join's items as a list, so that _check_op can count them (a generator has no length)."""
    if name == "join" and len(args) > at and \
            not isinstance(args[at], str | bytes | list | tuple):
        return (*args[:at], list(args[at]), *args[at + 1:])
    return args


def _guarded_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` (a jinja filter) spending a step, with _check_op (and, for a filter that makes
    text, a check of its value's text) before it runs; wraps() keeps jinja's pass_* marker."""
    skip = 1 if getattr(fn, "jinja_pass_arg", None) is not None else 0
    makes_text = name in _TEXT_FILTERS

    @wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _spend()
        args = _listed(name, args, skip)
        if len(args) > skip:
            if makes_text:
                _checked(args[skip])
            _check_op(name, args[skip], args[skip + 1:], kwargs)
        return fn(*args, **kwargs)

    return guarded


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """jinja's immutable sandbox with a bounded cost: every loop iteration, call, filter and
    operator spends from the render's budget, and what multiplies a value's size is checked
    before it runs (jinja's own safe range() already refuses over 100,000 items). Without
    this a manifest's `{{ 'x' * 10**9 }}` or nested range(99999) loops hang or exhaust a
    device."""

    intercepted_binops = frozenset({"*", "+", "**", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals.pop("lipsum", None)  # lipsum(10**9): no chat template needs lorem ipsum
        # What transformers gives every chat template (gpt-oss's uses all three): tojson as
        # json.dumps (keys in their order, no HTML escaping), raise_exception, strftime_now.
        self.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
        self.filters["tojson"] = _tojson
        self.filters = {name: _guarded_filter(name, fn) for name, fn in self.filters.items()}

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _spend()
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _spend()
        method = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format
        owner = getattr(method, "__self__", None)
        if isinstance(owner, str | bytes | int):
            name = getattr(method, "__name__", "")
            args = _listed(name, args, 0)
            _check_op(name, owner, args, kwargs)
        return super().call(context, obj, *args, **kwargs)


def _raise_exception(message: Any) -> None:
    raise TemplateError(str(message))


def _strftime_now(fmt: Any) -> str:
    return datetime.now().strftime(str(fmt))


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    if isinstance(indent, int) and indent > MAX_WIDTH:
        raise TemplateTooCostly(f"chat template failed: tojson indent {indent:,} exceeds "
                                f"{MAX_WIDTH:,}")
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


class _Guard(Extension):
    """What _compiled routes for loops and `~` operands through."""

    def steps(self, iterable: Iterable[Any]) -> Iterator[Any]:
        for item in iterable:
            _spend()
            yield item

    def checked(self, value: Any) -> Any:
        return _checked(value)
