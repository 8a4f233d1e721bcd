"""`edgemoe fixtures build`: small real MoE checkpoints, built locally (development fixtures)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer

from apps.cli.errors import friendly

app = typer.Typer(no_args_is_help=True, help="Build small local test checkpoints.")


def dev_fixtures() -> ModuleType:
    """The development fixtures (`dev/`, not in the edgemoe wheel), or a clear error."""
    try:
        import edgemoe_fixtures
    except ImportError:
        from contract.errors import EdgemoeError

        raise EdgemoeError(
            "this command builds checkpoints with the development fixtures, which the edgemoe "
            "wheel does not ship: from a source checkout, `pip install -e ./dev`"
        ) from None
    return edgemoe_fixtures


@app.command("build")
@friendly
def fixtures_build(
    out: Annotated[Path, typer.Argument(help="Folder to write checkpoints into.")],
    name: Annotated[
        list[str] | None,
        typer.Option("--name", help="Fixture name (repeatable); default: all but the large "
                     "ones only benches use (edgemoe_fixtures.BENCH_FIXTURES)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Build small real MoE checkpoints locally and deterministically."""
    for path in dev_fixtures().build_fixtures(name or None, out, quiet):
        typer.echo(str(path))
