"""`edgemoe demo`: the product's main job on an embedded default, end to end."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def dev_fixtures():
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


def run_demo(
    out: Path,
    fixture: str,
    profile: str,
    prompt: str,
    budget: str,
    echo: Callable[[str], None] = print,
) -> str:
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
    if result.report:
        d = result.report["divergence"]
        echo(f"divergence vs transformers: top-1 {d['top1_agreement']:.3f}, KL {d['mean_kl']:.2e}")
    with runtime.load(bundle, budget=budget) as model:
        r = model.generate(prompt, max_tokens=48)
        s = model.stats()
    echo(f"--- generation at budget {budget} ---\n{prompt}{r.text}")
    echo(
        f"--- resident experts {s['resident_expert_bytes']:,} of {s['expert_bytes_total']:,} bytes,"
        f" hits {s['hits']}, misses {s['misses']}, decode {s.get('decode_tok_s', 0):.0f} tok/s"
    )
    return r.text
