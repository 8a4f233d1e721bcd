"""`edgemoe trace`: record a text's routing and replay cache policies against Belady."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from apps.cli.errors import friendly
from apps.cli.options import with_options
from runtime.options import LOAD_OPTIONS, load_options

# Recording runs the engine, so its engine options apply; budgets and policies are what is
# compared (repeatable), not how one model loads.
ENGINE_OPTIONS = tuple(o for o in LOAD_OPTIONS if o.name in ("threads", "backend", "wait_policy"))


@friendly
def trace(
    bundle: Path,
    text: Annotated[list[Path], typer.Option("--text", help="Text file (repeatable).")],
    budget: Annotated[
        list[str] | None, typer.Option(help="Expert budget to replay (repeatable).")
    ] = None,
    policy: Annotated[
        list[str] | None, typer.Option(help="Policy to compare (repeatable).")
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="Tokens of text to trace at most.")] = 4096,
    save: Annotated[Path | None, typer.Option(help="Write the trace as JSON.")] = None,
    **options: Any,
) -> None:
    """Record a text's routing trace and replay cache policies against Belady's optimum.

    --budget and --policy repeat: each budget is replayed with each policy (default 10, 25 and
    50 %; lru, lfu, lrfu); the engine options are the ones `run` and `serve` take."""
    from runtime.tracing import record_trace, replay_budgets

    o = load_options(options)
    joined = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in text)
    tr = record_trace(bundle, joined, max_tokens=max_tokens, threads=o.threads,
                      backend=o.backend, wait_policy=o.wait_policy)
    if save:
        tr.save(save)
    report = replay_budgets(
        bundle, tr, budget or ["10%", "25%", "50%"], policy or ["lru", "lfu", "lrfu"],
        backend=o.backend,
    )
    typer.echo(f"{len(tr)} token steps traced")
    typer.echo(report.render())


with_options(trace, ENGINE_OPTIONS)
