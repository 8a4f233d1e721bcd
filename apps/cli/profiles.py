"""`edgemoe profiles [show] | calibrate | plan | fits`: device profiles, and planning a build for
one (from a checkpoint or from a config alone)."""

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
    src: Annotated[str, typer.Argument(
        help="Checkpoint folder or Hub repo id; or, without weights, a config.json, a Hub id "
        "whose config.json is cached, or a known model (`edgemoe fits --list`).")],
    profile: Annotated[
        str, typer.Option(help="Device profile name or .toml path.")
    ] = "laptop-16gb",
    usage: Annotated[Path | None, typer.Option(help="usage.json from `edgemoe calibrate`.")] = None,
    quant: Annotated[str | None, typer.Option(help="Force a quant type.")] = None,
    prune: Annotated[float, typer.Option(help="Fraction of experts to prune per layer.")] = 0.0,
    context: Annotated[
        int | None, typer.Option(help="Context length (default: profile's).")
    ] = None,
    budget: Annotated[str | None, typer.Option(
        help="Plan at a runtime expert budget ('25%', '1.5GB'), as `edgemoe run --budget`.")
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
        budget=budget,
    )
    typer.echo(json.dumps(p.to_dict(), indent=2) if as_json else render_plan(p))


@friendly
def fits(
    models: Annotated[list[str] | None, typer.Argument(
        help="Known models (default: all of them).")] = None,
    profile: Annotated[list[str] | None, typer.Option(
        "--profile", help="Device profile (repeatable; default: every built-in one).")] = None,
    quant: Annotated[str | None, typer.Option(help="Force a quant type.")] = None,
    budget: Annotated[str | None, typer.Option(help="Runtime expert budget ('25%').")] = None,
    markdown: Annotated[bool, typer.Option("--markdown")] = False,
    list_known: Annotated[bool, typer.Option("--list", help="List the known models.")] = False,
) -> None:
    """What fits where: published MoE configurations against device profiles, from configs
    alone (sizes per quant, minimum budget, the planner's quant and decode/prefill tok/s)."""
    from device_profiles import list_profiles, load_profile
    from packager.plan.errors import PlanError
    from packager.plan.fit_table import fit_rows, param_count, render_markdown, render_text
    from packager.plan.known import find_known, known_models, known_names

    if list_known:
        for m in known_models():
            typer.echo(f"{m.name:<20} {m.hub_id:<36} {param_count(m.total_params)} total, "
                       f"{param_count(m.active_params)} active")
        return
    chosen = []
    for name in models or [m.name for m in known_models()]:
        m = find_known(name)
        if m is None:
            raise PlanError(f"{name}: not a known model ({known_names()})")
        chosen.append(m)
    devices = [load_profile(p) for p in profile] if profile else list_profiles()
    rows = fit_rows(chosen, devices, quant=quant, budget=budget)
    typer.echo(render_markdown(rows, devices) if markdown else render_text(rows, devices),
               nl=False)
