"""`edgemoe bench`: time to first token, inter-token latency and their ceiling for one bundle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from apps.cli.errors import friendly


@friendly
def bench(
    bundle: Path,
    profile: Annotated[
        str | None, typer.Option(help="Device profile (name or .toml) whose latency targets to "
                                      "check; default: the bundle's.")
    ] = None,
    budget: Annotated[str | None, typer.Option(help="'40%', '1.5GB' or bytes.")] = None,
    cold: Annotated[
        bool, typer.Option(help="Start from storage: page cache dropped, misses read storage.")
    ] = False,
    prompt: Annotated[str | None, typer.Option(help="Prompt text (default: a short one).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 64,
    threads: Annotated[int | None, typer.Option(help="Threads; default: the profile's.")] = None,
    prefetch: Annotated[
        bool | None, typer.Option(help="Expert prefetch; default: on when --cold.")
    ] = None,
    wait_policy: Annotated[
        str | None, typer.Option(help="How engine threads wait: spin (default, as stock "
                                      "llama.cpp), passive, active, spin-10k.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Measure the latency a user would see (TTFT, inter-token p50/p95) and its ceiling."""
    from runtime.benchmark import DEFAULT_PROMPT, BenchOptions, run_benchmark

    report = run_benchmark(BenchOptions(
        bundle, profile=profile, budget=budget, cold=cold, prompt=prompt or DEFAULT_PROMPT,
        max_tokens=max_tokens, threads=threads, prefetch=prefetch, wait_policy=wait_policy,
    ))
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.render(), nl=False)
