"""`edgemoe pack | inspect | verify`: build a device bundle and check one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from apps.cli.errors import friendly


@friendly
def pack(
    src: Annotated[str, typer.Argument(help="Checkpoint folder or Hub repo id (org/name).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Bundle directory to create.")],
    profile: Annotated[
        str, typer.Option(help="Device profile name or .toml path.")
    ] = "laptop-16gb",
    format: Annotated[
        str | None,
        typer.Option(
            "--format", help="gguf, onnx or gguf,onnx (first = primary); default: profile's."
        ),
    ] = None,
    quant: Annotated[
        str | None,
        typer.Option(help="llama.cpp type, or ONNX fp32|fp16|int8|int4; default: profile's."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    revision: Annotated[str | None, typer.Option(help="Hub revision.")] = None,
    no_reference: Annotated[
        bool, typer.Option(help="Skip the transformers divergence report.")
    ] = False,
    calibrate: Annotated[
        list[Path] | None,
        typer.Option(help="Calibration text file (repeatable): expert usage picks the hot set."),
    ] = None,
    usage: Annotated[Path | None, typer.Option(help="usage.json from `edgemoe calibrate`.")] = None,
    prune: Annotated[float, typer.Option(help="Remove this fraction of experts per layer.")] = 0.0,
    distill: Annotated[
        int,
        typer.Option(
            help="After --prune: train the pruned model on the unpruned one's logits for up to "
            "this many steps (early stopping on held-out calibration text)."
        ),
    ] = 0,
    imatrix: Annotated[bool, typer.Option(help="Importance matrix from calibration text.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Pack a Hugging Face MoE checkpoint into a device bundle."""
    from packager.api import PackOptions
    from packager.api import pack as do_pack
    from packager.calibrate import read_texts
    from packager.planning import load_usage
    from packager.progress import NullProgress, RichProgress

    opts = PackOptions(
        src=src,
        out_dir=out,
        profile=profile,
        format=format,
        quant=quant,
        force=force,
        revision=revision,
        reference=False if no_reference else None,
        calibration=tuple(read_texts(calibrate)) if calibrate else (),
        usage=load_usage(usage) if usage else None,
        prune=prune,
        distill=distill,
        use_imatrix=imatrix,
    )
    result = do_pack(opts, NullProgress() if quiet else RichProgress())
    if not quiet:
        m = result.manifest
        builds = ", ".join(f"{b.format} {b.quant}" for b in m.all_builds())
        typer.echo(f"bundle: {result.bundle}  ({builds}; {m.profile.name})")
        report = result.report
        if report is None:
            return
        if report.text_model is not None:
            typer.echo(report.text_model)
        if report.calibration_text is not None:
            typer.echo(f"calibration text: {report.calibration_text}")
        builds = (("", report.fidelity), *((f" [{f}]", b) for f, b in report.other_builds.items()))
        for name, build in builds:
            if build is not None:
                d = build.divergence
                typer.echo(f"vs transformers{name}: top-1 {d.top1_agreement:.4f}, "
                           f"mean KL {d.mean_kl:.2e}")


@friendly
def inspect(
    bundle: Path,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Show a bundle's manifest."""
    from packager.api import inspect as do_inspect

    m = do_inspect(bundle)
    if as_json:
        typer.echo(m.to_json())
        return
    s = m.shape
    typer.echo(f"{bundle}: {s.hf_architecture} -> {m.format} ({s.gguf_arch}), quant {m.quant}")
    typer.echo(f"  profile      {m.profile.name}")
    for b in m.all_builds():
        data = f" + {b.data_file}" if b.data_file else ""
        typer.echo(f"  build        {b.format} {b.quant}: {b.model_file}{data}")
    typer.echo(
        f"  source       {m.source.kind}:{m.source.ref}"
        + (f"@{m.source.revision}" if m.source.revision else "")
    )
    typer.echo(
        f"  MoE          {len(s.moe_layers)}/{s.n_layers} layers, {s.n_experts} experts, "
        f"top-{s.top_k}, {s.n_shared_experts} shared"
    )
    typer.echo(f"  dense bytes  {m.dense_bytes:,}")
    typer.echo(
        f"  expert bytes {m.expert_bytes_total:,} ({m.expert_layers[0].expert_bytes:,} per expert)"
    )
    hot = sum(len(v) for v in m.hot_experts.values())
    typer.echo(f"  hot experts  {hot}")
    for name, entry in sorted(m.files.items()):
        typer.echo(f"  file         {name:<24} {entry.bytes:>14,}  {entry.sha256[:16]}")


@friendly
def verify(
    bundle: Path,
    fast: Annotated[bool, typer.Option(
        "--fast", help="Check the weights by their xxh3 checksums (per tensor and expert, "
        "naming what differs) instead of sha256.")] = False,
) -> None:
    """Re-check every checksum in a bundle."""
    from packager.api import verify as do_verify

    report = do_verify(bundle, fast=fast)
    for note in report.notes:
        typer.echo(f"note: {note}", err=True)
    for name in report.checked:
        typer.echo(f"ok       {name}")
    for problem in report.problems:
        typer.echo(f"FAILED   {problem}", err=True)
    if not report.ok:
        raise typer.Exit(1)
    typer.echo(f"{bundle}: all {len(report.checked)} files verified")
