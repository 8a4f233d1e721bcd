"""`edgemoe profiles [show] | calibrate | plan`: device profiles and planning a build for one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from apps.cli.errors import friendly

app = typer.Typer(help="Device profiles.", invoke_without_command=True)


@app.callback()
@friendly
def profiles_list(ctx: typer.Context) -> None:
    """List the built-in device profiles."""
    if ctx.invoked_subcommand is None:
        from device_profiles import list_profiles, render_profile_table

        typer.echo(render_profile_table(list_profiles()))


@app.command("show")
@friendly
def profiles_show(name: Annotated[str, typer.Argument(help="Profile name or .toml path.")]) -> None:
    """Show one profile with the source of every number."""
    from device_profiles import load_profile, render_profile

    typer.echo(render_profile(load_profile(name)))


@friendly
def calibrate(
    src: Annotated[str, typer.Argument(help="Checkpoint folder, Hub repo id or bundle.")],
    text: Annotated[list[Path], typer.Option("--text", help="Calibration text file (repeatable).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="usage.json to write.")],
    engine: Annotated[str, typer.Option(help="auto, llama.cpp or transformers.")] = "auto",
    plot: Annotated[Path | None, typer.Option(help="Also write a PNG heat map.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Tokens of text to use at most.")] = None,
) -> None:
    """Record how often each expert is chosen, per layer, on your text."""
    from packager.calibrate import calibrate_to_file

    prof = calibrate_to_file(src, text, out, engine, plot, max_tokens=max_tokens)
    typer.echo(
        f"{out}: {prof.n_tokens} tokens via {prof.source}; "
        + ", ".join(f"layer {k}: entropy {v:.2f}" for k, v in sorted(prof.entropy.items())[:4])
    )


@friendly
def plan(
    src: Annotated[str, typer.Argument(help="Checkpoint folder or Hub repo id.")],
    profile: Annotated[
        str, typer.Option(help="Device profile name or .toml path.")
    ] = "laptop-16gb",
    usage: Annotated[Path | None, typer.Option(help="usage.json from `edgemoe calibrate`.")] = None,
    quant: Annotated[str | None, typer.Option(help="Force a quant type.")] = None,
    prune: Annotated[float, typer.Option(help="Fraction of experts to prune per layer.")] = 0.0,
    context: Annotated[
        int | None, typer.Option(help="Context length (default: profile's).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Plan a device build: quant per tensor group, hot experts, expected hit rate and speed."""
    from packager.plan.render import render_plan
    from packager.planning import load_usage, plan_for

    p = plan_for(
        src,
        profile,
        load_usage(usage) if usage else None,
        quant=quant,
        prune_fraction=prune,
        context_length=context,
    )
    typer.echo(json.dumps(p.to_dict(), indent=2) if as_json else render_plan(p))
