"""`edgemoe run | chat`: generate from a bundle, once or as a terminal conversation.

Options become one SamplingParams (validated before the model loads) and a GenerationRequest
that `Model.prepare` checks; the commands then only print what the runtime yields.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

from apps.cli.errors import friendly
from apps.cli.options import with_options
from runtime.generation.request import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_SAMPLING,
    GenerationRequest,
    SamplingParams,
)
from runtime.options import LOAD_OPTIONS, LoadOptions, load_options

# A conversation reads better with some variety and room to answer than a one-shot `run`.
CHAT_SAMPLING = SamplingParams(max_tokens=256, temperature=0.7)


@friendly
def run(
    bundle: Path,
    prompt: Annotated[str, typer.Option(help="Prompt text.")],
    max_tokens: Annotated[
        int | None,
        typer.Option(help=f"Tokens at most; default: {DEFAULT_MAX_TOKENS} or what fits."),
    ] = DEFAULT_SAMPLING.max_tokens,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = DEFAULT_SAMPLING.temperature,
    top_p: Annotated[float, typer.Option()] = DEFAULT_SAMPLING.top_p,
    top_k: Annotated[int, typer.Option(help="0 = off.")] = DEFAULT_SAMPLING.top_k,
    seed: Annotated[int | None, typer.Option()] = DEFAULT_SAMPLING.seed,
    stop: Annotated[list[str] | None, typer.Option(help="Stop string (repeatable).")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print text, tokens, finish_reason, stats.")
    ] = False,
    **options: Any,
) -> None:
    """Generate from a bundle (streams text unless --json)."""
    import runtime

    params = SamplingParams(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
        stop=tuple(stop or ()),
    )
    with runtime.load(bundle, options=load_options(options)) as model:
        prepared = model.prepare(GenerationRequest(prompt=prompt, params=params))
        if not as_json:
            for ev in model.stream_prepared(prepared):
                typer.echo(ev.text, nl=False)
            typer.echo()
            return
        r = model.generate_prepared(prepared)
        out = {
            "text": r.text,
            "tokens": r.tokens,
            "finish_reason": r.finish_reason,
            "usage": {
                "prompt_tokens": r.usage.prompt_tokens,
                "completion_tokens": r.usage.completion_tokens,
            },
            "stats": model.stats().to_json(),
        }
        typer.echo(json.dumps(out, indent=2))


@friendly
def chat(
    bundle: Path,
    max_tokens: Annotated[int | None, typer.Option()] = CHAT_SAMPLING.max_tokens,
    temperature: Annotated[float, typer.Option()] = CHAT_SAMPLING.temperature,
    system: Annotated[str | None, typer.Option(help="System message.")] = None,
    **options: Any,
) -> None:
    """Interactive chat in the terminal using the bundle's chat template (/exit to quit)."""
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature)
    chat_loop(bundle, load_options(options), params=params, system=system)


def chat_loop(
    bundle: Path,
    options: LoadOptions,
    *,
    params: SamplingParams,
    system: str | None,
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
) -> None:
    """Read a line, stream the answer, remember both; until EOF or /exit."""
    import runtime

    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    with runtime.load(bundle, options=options) as model:
        stdout.write(f"edgemoe chat — {model.name} (Ctrl-D or /exit to quit)\n")
        while True:
            stdout.write("> ")
            stdout.flush()
            line = stdin.readline()
            if not line or line.strip() in ("/exit", "/quit"):
                break
            if not line.strip():
                continue
            history.append({"role": "user", "content": line.rstrip("\n")})
            prepared = model.prepare(GenerationRequest(messages=history, params=params))
            reply = []
            for ev in model.stream_prepared(prepared):
                stdout.write(ev.text)
                stdout.flush()
                reply.append(ev.text)
            stdout.write("\n")
            history.append({"role": "assistant", "content": "".join(reply)})


with_options(run, LOAD_OPTIONS)
with_options(chat, LOAD_OPTIONS)
