"""How a bundle is loaded: one LoadOptions record for Python, the CLI and the server.

`runtime.load` takes these fields as keywords (or the record itself), `edgemoe run | chat |
bench | serve | trace` and `python -m runtime.server` build their flags from the option table
below, and the server's settings hold one LoadOptions: the same names, defaults and checks
everywhere. A record is checked when it is built, so a bad value fails before a model loads.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from runtime.backends.registry import format_for
from runtime.budget import parse_budget
from runtime.errors import EdgemoeError
from runtime.experts.policy import DEFAULT_POLICY, POLICIES, make_policy
from runtime.experts.prefetcher import PrefetchSettings
from runtime.speculative.switch import DEFAULT_DRAFT_TOKENS, check_draft_tokens
from runtime.threads import WAIT_POLICIES, check_wait_policy


class OptionsError(EdgemoeError, ValueError):
    """An option out of range or unknown; the message names it."""


def option(default: Any, help: str, *, flag: str | None = None, env: str | None = None) -> Any:
    """A record field that is also a command-line option (`Option`)."""
    return field(default=default, metadata={"help": help, "flag": flag, "env": env})


@dataclass(frozen=True)
class LoadOptions:
    """How to load a bundle. Every field's default is what a plain `runtime.load(bundle)` does.

    budget: "40%" of expert bytes, a size ("1.5GB") or bytes for weights + KV cache; None uses
    the bundle's device profile. cold: also drop released experts from the OS page cache, so a
    miss reads storage (what a device without spare RAM sees). backend: "llama.cpp" (the GGUF
    build) or "onnx" (the ONNX build); None runs the bundle's primary build. prefetch: read the
    next MoE layer's guessed experts early (runtime/experts/prefetcher.py): True, False,
    PrefetchSettings, or None = when cold. draft: speculative decoding with a smaller bundle of
    the same vocabulary, or "ngram" (prompt lookup, no model); its memory comes out of `budget`
    (runtime/speculative/draft_budget.py). wait_policy: how engine threads wait (runtime/
    threads.py): at llama.cpp's barriers, fixed per process once the first engine has loaded,
    and between onnxruntime's kernels, per session. flash_attn: llama.cpp's flash attention on
    (True) or off (False); None is llama.cpp's `auto` (README,
    "Flash attention"); onnxruntime builds have their own attention and ignore it. record_routing
    (Python only): keep the routing tap on at every budget, for measurements. check_reads
    (Python only): verify each expert against the manifest's xxh3 checksums on its first read
    and the dense tensors in the background, and page experts in so a storage fault is an error,
    never SIGBUS (runtime/integrity/); False is the path before these checks, for measurements.
    resizable (Python only; `serve --follow-pressure` sets it): page experts even at a full
    budget, so `Model.set_budget` can shrink it later (the routing tap costs ~3 % decode).
    """

    budget: str | int | None = option(
        None, "Memory budget: '40%' of expert bytes, '1.5GB' or bytes; default: the profile's."
    )
    n_ctx: int | None = option(None, "Context window in tokens; default: the profile's.")
    threads: int | None = option(None, "CPU threads; default: the profile's.")
    backend: str | None = option(
        None, "Engine: llama.cpp (GGUF build) or onnx (ONNX build); default: the bundle's."
    )
    policy: str = option(
        DEFAULT_POLICY, f"Expert cache policy: {', '.join(sorted(POLICIES))} (options as "
        "'lrfu:half_life=64')."
    )
    cold: bool = option(
        False, "Drop released experts from the page cache too, so a miss reads storage."
    )
    prefetch: bool | PrefetchSettings | None = option(
        None, "Read the next layers' guessed experts early; default: on when --cold."
    )
    draft: str | None = option(
        None, "Speculative decoding: a smaller bundle of the same vocabulary (low-bit or "
        "pruned), its memory within --budget, or 'ngram' (prompt lookup, no model)."
    )
    draft_tokens: int = option(DEFAULT_DRAFT_TOKENS, "Tokens the draft proposes per step.")
    wait_policy: str | None = option(
        None, f"How engine threads wait at barriers: {', '.join(WAIT_POLICIES)}; default: spin "
        "(as stock llama.cpp; onnxruntime: 50 us, then sleep)."
    )
    flash_attn: bool | None = option(
        None, "llama.cpp's flash attention: on or off; default: llama.cpp's auto (on for CPUs). "
        "Off often decodes faster on CPUs but holds a prompt batch's attention scores in memory; "
        "a quantized KV cache needs it on."
    )
    verify: bool = option(False, "Re-hash every file before loading (default: sampled blocks).")
    record_routing: bool = False
    check_reads: bool = True
    resizable: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.draft, Path):
            object.__setattr__(self, "draft", str(self.draft))
        parse_budget(self.budget)  # BudgetError names the value
        for name in ("n_ctx", "threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 1):
                raise OptionsError(f"{name} must be an integer >= 1 or None, got {value!r}")
        format_for(self.backend)  # an unknown backend lists the known ones
        try:
            make_policy(self.policy)
        except ValueError as e:
            raise OptionsError(str(e)) from None
        if not isinstance(self.prefetch, bool | PrefetchSettings | None):
            raise OptionsError(f"prefetch must be true, false, PrefetchSettings or None, got "
                               f"{self.prefetch!r}")
        check_draft_tokens(self.draft_tokens)
        check_wait_policy(self.wait_policy)
        if self.flash_attn is not None and not isinstance(self.flash_attn, bool):
            raise OptionsError(f"flash_attn must be true, false or None, got {self.flash_attn!r}")


# --- the option table ------------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """One record field as a command line shows it."""

    name: str  # the field
    flag: str  # "--max-queue"
    type: type  # what one value on the command line parses to: str, int, float or bool
    default: Any
    help: str
    env: str | None = None  # read when the flag is not given
    repeatable: bool = False  # given several times, collected into a tuple

    @property
    def switch(self) -> bool:
        """A flag without a value: on when given (default off)."""
        return self.type is bool and self.default is False

    @property
    def either_way(self) -> bool:
        """--x / --no-x, unset by default (None: let the runtime decide)."""
        return self.type is bool and self.default is None


def _value_type(annotation: Any) -> tuple[type, bool]:
    """(type of one command-line value, repeatable) for a field's annotation."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        return typing.get_args(annotation)[0], True
    if origin in (typing.Union, types.UnionType):
        # The first non-None member: a budget is typed as text on a command line.
        return next(a for a in typing.get_args(annotation) if a is not type(None)), False
    return annotation, False


def option_table(record: type) -> tuple[Option, ...]:
    """The options of a record's fields declared with `option(...)`, in field order."""
    hints = typing.get_type_hints(record)
    out = []
    for f in fields(record):
        if "help" not in f.metadata:
            continue
        value_type, repeatable = _value_type(hints[f.name])
        flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
        out.append(Option(f.name, flag, value_type, f.default, f.metadata["help"],
                          f.metadata["env"], repeatable))
    return tuple(out)


LOAD_OPTIONS: tuple[Option, ...] = option_table(LoadOptions)


def from_options(record: type, table: tuple[Option, ...], values: Mapping[str, Any]) -> Any:
    """`record` built from parsed options keyed by field name (absent or None: the default)."""
    given: dict[str, Any] = {}
    for o in table:
        value = values.get(o.name)
        if value is not None:
            given[o.name] = tuple(value) if o.repeatable else value
    return record(**given)


def load_options(values: Mapping[str, Any]) -> LoadOptions:
    """LoadOptions from parsed command-line values (OptionsError, BudgetError, ... if bad)."""
    return from_options(LoadOptions, LOAD_OPTIONS, values)
