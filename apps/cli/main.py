"""The `edgemoe` command: assembles the command groups, one module each, into one Typer app.

Each command only parses its options and calls the typed Python API (runtime, packager,
device_profiles); errors it meant to raise print as one `error:` line (see `errors.friendly`).
"""

from __future__ import annotations

import os

import typer

from apps.cli import bench, bundles, demo, fixtures, pack, profiles, run, serve, trace

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Pack and run MoE models on devices."
)
app.command()(pack.pack)
app.command()(pack.inspect)
app.command()(pack.verify)
app.command()(bundles.pull)
app.command()(bundles.push)
app.command()(run.run)
app.command()(run.chat)
app.command()(demo.demo)
app.command()(trace.trace)
app.command()(serve.serve)
app.command()(bench.bench)
app.add_typer(profiles.app, name="profiles")
app.command()(profiles.calibrate)
app.command()(profiles.plan)
app.command()(profiles.fits)
app.add_typer(fixtures.app, name="fixtures")


def main() -> None:
    # The reference path (transformers) is chatty; a CLI user wants our progress bars only.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    app()


if __name__ == "__main__":
    main()
