"""`edgemoe demo`: the product's main job on an embedded default, end to end."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from apps.cli.errors import friendly
from apps.cli.fixtures import dev_fixtures


@friendly
def demo(
    out: Annotated[Path, typer.Option(help="Where to put the fixture and bundle.")] = Path("demo"),
    fixture: Annotated[str, typer.Option(help="Fixture to build.")] = "qwen3moe-trained",
    profile: Annotated[str, typer.Option(help="Device profile to pack for.")] = "phone-8gb",
    prompt: Annotated[str, typer.Option()] = "def parse_args(argv):\n    ",
    budget: Annotated[str, typer.Option(help="Runtime budget for the demo generation.")] = "50%",
) -> None:
    """The main job end to end: build a fixture, pack it for a profile, generate."""
    run_demo(out, fixture, profile, prompt, budget, echo=typer.echo)


def run_demo(
    out: Path,
    fixture: str,
    profile: str,
    prompt: str,
    budget: str,
    echo: Callable[[str], None] = print,
) -> str:
    """Fixture -> bundle -> generation, reporting each step; returns the generated text (kept
    apart from the command so a test or script can run the same job)."""
    import runtime
    from packager.api import PackOptions, pack
    from packager.progress import RichProgress

    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / fixture
    if not (ckpt / "config.json").is_file():
        echo(f"building fixture {fixture} (deterministic, local) ...")
        dev_fixtures().build_fixture(fixture, ckpt)
    bundle = out / f"{fixture}-{profile}"
    result = pack(
        PackOptions(src=str(ckpt), out_dir=bundle, profile=profile, force=True), RichProgress()
    )
    echo(f"packed {bundle} ({result.manifest.quant} for {profile})")
    if result.report is not None and result.report.fidelity is not None:
        d = result.report.fidelity.divergence
        echo(f"divergence vs transformers: top-1 {d.top1_agreement:.3f}, KL {d.mean_kl:.2e}")
    with runtime.load(bundle, budget=budget) as model:
        r = model.generate(prompt, max_tokens=48)
        s = model.stats()
    echo(f"--- generation at budget {budget} ---\n{prompt}{r.text}")
    echo(
        f"--- resident experts {s.resident_expert_bytes:,} of {s.expert_bytes_total:,} bytes,"
        f" hits {s.hits}, misses {s.misses}, decode {r.timings.get('decode_tok_s', 0):.0f} tok/s"
    )
    return r.text
