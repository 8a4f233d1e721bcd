"""`edgemoe serve`: its options are `runtime.server.settings.OPTIONS`, as for `python -m
runtime.server`, so both front-ends take the same flags with the same defaults and help."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from apps.cli.errors import friendly
from runtime.server.settings import OPTIONS, settings_from_options


@friendly
def serve(bundle: Path, **options: Any) -> None:
    """Serve a bundle over a local OpenAI-compatible HTTP API."""
    from runtime.server import serve as serve_bundle

    try:
        settings = settings_from_options(options)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    serve_bundle(bundle, settings)


def _signature() -> inspect.Signature:
    """The command's parameters for Typer, one per option of the table."""
    params = [
        inspect.Parameter(
            "bundle", inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=Annotated[Path, typer.Argument(help="Bundle directory to serve.")],
        )
    ]
    for o in OPTIONS:
        info = typer.Option(o.flag, help=o.help, envvar=o.env, show_default=o.env is None)
        if o.repeatable:
            annotation: Any = Annotated[list[o.type] | None, info]  # type: ignore[name-defined]
            default = None
        elif o.default is None:
            annotation, default = Annotated[o.type | None, info], None
        else:
            annotation, default = Annotated[o.type, info], o.default
        params.append(inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY,
                                        default=default, annotation=annotation))
    return inspect.Signature(params)


serve.__signature__ = _signature()  # type: ignore[attr-defined]
