"""`edgemoe trace`: record a text's routing and replay cache policies against Belady."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from apps.cli.errors import friendly


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
    backend: Annotated[
        str | None, typer.Option(help="llama.cpp or onnx; default: the bundle's primary build.")
    ] = None,
) -> None:
    """Record a text's routing trace and replay cache policies against Belady's optimum."""
    from runtime.tracing import record_trace, replay_budgets

    joined = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in text)
    tr = record_trace(bundle, joined, max_tokens=max_tokens, backend=backend)
    if save:
        tr.save(save)
    report = replay_budgets(
        bundle, tr, budget or ["10%", "25%", "50%"], policy or ["lru", "lfu", "lrfu"],
        backend=backend,
    )
    typer.echo(f"{len(tr)} token steps traced")
    typer.echo(report.render())
