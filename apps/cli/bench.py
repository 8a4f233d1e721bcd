"""`edgemoe bench`: time to first token, inter-token latency and their ceiling for one bundle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from apps.cli.errors import friendly
from apps.cli.options import with_options
from runtime.options import LOAD_OPTIONS, load_options


@friendly
def bench(
    bundle: Path,
    profile: Annotated[
        str | None, typer.Option(help="Device profile (name or .toml) whose latency targets to "
                                      "check; default: the bundle's.")
    ] = None,
    prompt: Annotated[str | None, typer.Option(help="Prompt text (default: a short one).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 64,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    **options: Any,
) -> None:
    """Measure the latency a user would see (TTFT, inter-token p50/p95) and its ceiling;
    --cold starts from storage (page cache dropped)."""
    from runtime.benchmark import DEFAULT_PROMPT, BenchOptions, run_benchmark

    report = run_benchmark(BenchOptions(
        bundle, profile=profile, prompt=prompt or DEFAULT_PROMPT, max_tokens=max_tokens,
        load=load_options(options),
    ))
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.render(), nl=False)


with_options(bench, LOAD_OPTIONS)
