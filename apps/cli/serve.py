"""`edgemoe serve`: its options are `runtime.server.settings.OPTIONS`, as for `python -m
runtime.server`, so both front-ends take the same flags with the same defaults and help."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from apps.cli.errors import friendly
from apps.cli.options import with_options
from runtime.errors import EdgemoeError
from runtime.server.settings import OPTIONS, settings_from_options


@friendly
def serve(bundle: Annotated[Path, typer.Argument(help="Bundle directory to serve.")],
          **options: Any) -> None:
    """Serve a bundle over a local OpenAI-compatible HTTP API."""
    from runtime.server import serve as serve_bundle

    try:
        settings = settings_from_options(options)
    except (ValueError, EdgemoeError) as e:
        raise typer.BadParameter(str(e)) from None
    serve_bundle(bundle, settings)


with_options(serve, OPTIONS)
