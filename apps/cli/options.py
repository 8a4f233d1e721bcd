"""Typer parameters from an option table (runtime/options.py): commands that load a bundle take
the same flags, defaults and help as `runtime.load` and the server, declared once."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable
from typing import Annotated, Any

import typer

from runtime.options import Option


def parameter(o: Option) -> inspect.Parameter:
    """One keyword-only Typer parameter for `o`."""
    flag = f"{o.flag}/--no-{o.flag[2:]}" if o.either_way else o.flag
    info = typer.Option(flag, help=o.help, envvar=o.env, show_default=o.env is None)
    if o.repeatable:
        annotation: Any = Annotated[list[o.type] | None, info]  # type: ignore[name-defined]
        default = None
    elif o.default is None:
        annotation, default = Annotated[o.type | None, info], None
    else:
        annotation, default = Annotated[o.type, info], o.default
    return inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=annotation)


def with_options(command: Callable[..., Any], table: Iterable[Option]) -> Callable[..., Any]:
    """`command` (which takes **options) shown to Typer with its own parameters plus the
    table's, so it receives each option by name."""
    hints = typing.get_type_hints(inspect.unwrap(command), include_extras=True)
    first, *rest = [p.replace(annotation=hints.get(p.name, p.annotation))
                    for p in inspect.signature(command).parameters.values()
                    if p.kind is not inspect.Parameter.VAR_KEYWORD]
    rest = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in rest]
    command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [first, *rest, *(parameter(o) for o in table)])
    return command
