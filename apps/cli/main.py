"""The `edgemoe` command: parse arguments, call the typed Python API, print. No logic lives here."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Pack and run MoE models on devices."
)
fixtures_app = typer.Typer(no_args_is_help=True, help="Build small local test checkpoints.")
app.add_typer(fixtures_app, name="fixtures")
profiles_app = typer.Typer(help="Device profiles.", invoke_without_command=True)
app.add_typer(profiles_app, name="profiles")


def _user_errors() -> tuple[type[BaseException], ...]:
    from contract.errors import EdgemoeError

    return (EdgemoeError,)


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn deliberate errors into one line on stderr and exit code 1 — never a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _user_errors() as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _progress(quiet: bool):
    from packager.progress import NullProgress, RichProgress

    return NullProgress() if quiet else RichProgress()


@app.command()
@friendly
def pack(
    src: Annotated[str, typer.Argument(help="Checkpoint folder or Hub repo id (org/name).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Bundle directory to create.")],
    profile: Annotated[
        str, typer.Option(help="Device profile name or .toml path.")
    ] = "laptop-16gb",
    format: Annotated[str, typer.Option("--format", help="Bundle format.")] = "gguf",
    quant: Annotated[str | None, typer.Option(help="llama.cpp type; default: profile's.")] = None,
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
    imatrix: Annotated[bool, typer.Option(help="Importance matrix from calibration text.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Pack a Hugging Face MoE checkpoint into a device bundle."""
    from packager.api import PackOptions
    from packager.api import pack as do_pack
    from packager.calibrate import read_texts
    from packager.planning import load_usage

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
        use_imatrix=imatrix,
    )
    result = do_pack(opts, _progress(quiet))
    if not quiet:
        typer.echo(
            f"bundle: {result.bundle}  ({result.manifest.quant}, {result.manifest.profile['name']})"
        )
        if result.report:
            d = result.report["divergence"]
            typer.echo(
                f"vs transformers: top-1 {d['top1_agreement']:.4f}, mean KL {d['mean_kl']:.2e}"
            )


@app.command()
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
    typer.echo(f"  profile      {m.profile.get('name')}")
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


@app.command()
@friendly
def verify(bundle: Path) -> None:
    """Re-check every checksum in a bundle."""
    from packager.api import verify as do_verify

    report = do_verify(bundle)
    for name in report.checked:
        typer.echo(f"ok       {name}")
    for problem in report.problems:
        typer.echo(f"FAILED   {problem}", err=True)
    if not report.ok:
        raise typer.Exit(1)
    typer.echo(f"{bundle}: all {len(report.checked)} files verified")


@app.command()
@friendly
def run(
    bundle: Path,
    prompt: Annotated[str, typer.Option(help="Prompt text.")],
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate at most.")] = 64,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option()] = 1.0,
    seed: Annotated[int | None, typer.Option()] = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop string (repeatable).")] = None,
    budget: Annotated[
        str | None, typer.Option(help="'40%', '1.5GB' or bytes; default: profile's.")
    ] = None,
    cold: Annotated[
        bool, typer.Option(help="Drop released experts from the page cache too.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print text, tokens, finish_reason, stats.")
    ] = False,
) -> None:
    """Generate from a bundle (streams text unless --json)."""
    import runtime

    with runtime.load(bundle, budget=budget, cold=cold) as model:
        kwargs = dict(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop=stop or None,
        )
        if as_json:
            r = model.generate(prompt, **kwargs)
            typer.echo(
                json.dumps(
                    {
                        "text": r.text,
                        "tokens": r.tokens,
                        "finish_reason": r.finish_reason,
                        "usage": {
                            "prompt_tokens": r.usage.prompt_tokens,
                            "completion_tokens": r.usage.completion_tokens,
                        },
                        "stats": model.stats(),
                    },
                    indent=2,
                )
            )
            return
        for piece in model.stream(prompt, **kwargs):
            typer.echo(piece, nl=False)
        typer.echo()


@app.command()
@friendly
def chat(
    bundle: Path,
    budget: Annotated[str | None, typer.Option(help="'40%', '1.5GB' or bytes.")] = None,
    max_tokens: Annotated[int, typer.Option()] = 256,
    temperature: Annotated[float, typer.Option()] = 0.7,
    system: Annotated[str | None, typer.Option(help="System message.")] = None,
) -> None:
    """Interactive chat in the terminal using the bundle's chat template (/exit to quit)."""
    from apps.cli.chat import chat_loop

    chat_loop(bundle, budget=budget, max_tokens=max_tokens, temperature=temperature, system=system)


@app.command()
@friendly
def demo(
    out: Annotated[Path, typer.Option(help="Where to put the fixture and bundle.")] = Path("demo"),
    fixture: Annotated[str, typer.Option(help="Fixture to build.")] = "qwen3moe-trained",
    profile: Annotated[str, typer.Option(help="Device profile to pack for.")] = "phone-8gb",
    prompt: Annotated[str, typer.Option()] = "def parse_args(argv):\n    ",
    budget: Annotated[str, typer.Option(help="Runtime budget for the demo generation.")] = "50%",
) -> None:
    """The main job end to end: build a fixture, pack it for a profile, generate."""
    from apps.cli.demo import run_demo

    run_demo(out, fixture, profile, prompt, budget, echo=typer.echo)


@app.command()
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
) -> None:
    """Record a text's routing trace and replay cache policies against Belady's optimum."""
    from runtime.tracing import record_trace, replay_budgets

    joined = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in text)
    tr = record_trace(bundle, joined, max_tokens=max_tokens)
    if save:
        tr.save(save)
    report = replay_budgets(
        bundle, tr, budget or ["10%", "25%", "50%"], policy or ["lru", "lfu", "lrfu"]
    )
    typer.echo(f"{len(tr)} token steps traced")
    typer.echo(report.render())


@app.command()
@friendly
def serve(
    bundle: Path,
    host: Annotated[str, typer.Option(help="Bind address (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8080,
    budget: Annotated[str | None, typer.Option(help="'40%', '1.5GB' or bytes.")] = None,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="EDGEMOE_API_KEY", help="Require 'Authorization: Bearer KEY'."),
    ] = None,
    model_alias: Annotated[str | None, typer.Option(help="Model id to publish.")] = None,
    max_queue: Annotated[int, typer.Option(help="Requests waiting before 429.")] = 8,
    n_ctx: Annotated[int | None, typer.Option(help="Context window.")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option(help="Allow this CORS origin.")] = None,
) -> None:
    """Serve a bundle over a local OpenAI-compatible HTTP API."""
    from runtime.server.serve import serve as do_serve
    from runtime.server.settings import ServerSettings

    try:
        settings = ServerSettings(
            host=host,
            port=port,
            api_key=api_key,
            model_alias=model_alias,
            max_queue=max_queue,
            budget=budget,
            n_ctx=n_ctx,
            cors_origins=tuple(cors_origin or ()),
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    do_serve(bundle, settings)


@profiles_app.callback()
@friendly
def profiles_list(ctx: typer.Context) -> None:
    """List the built-in device profiles."""
    if ctx.invoked_subcommand is None:
        from device_profiles import list_profiles, render_profile_table

        typer.echo(render_profile_table(list_profiles()))


@profiles_app.command("show")
@friendly
def profiles_show(name: Annotated[str, typer.Argument(help="Profile name or .toml path.")]) -> None:
    """Show one profile with the source of every number."""
    from device_profiles import load_profile, render_profile

    typer.echo(render_profile(load_profile(name)))


@app.command("calibrate")
@friendly
def calibrate_cmd(
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


@app.command()
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
    from packager.plan import render_plan
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


@fixtures_app.command("build")
@friendly
def fixtures_build(
    out: Annotated[Path, typer.Argument(help="Folder to write checkpoints into.")],
    name: Annotated[
        list[str] | None, typer.Option("--name", help="Fixture name (repeatable).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Build small real MoE checkpoints locally and deterministically."""
    from apps.cli.demo import dev_fixtures

    for path in dev_fixtures().build_fixtures(name or None, out, quiet):
        typer.echo(str(path))


def main() -> None:
    # The reference path (transformers) is chatty; a CLI user wants our progress bars only.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    app()


if __name__ == "__main__":
    main()
