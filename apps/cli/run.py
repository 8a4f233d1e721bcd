"""`edgemoe run | chat`: generate from a bundle, once or as a terminal conversation.

Options become one SamplingParams (validated before the model loads) and a GenerationRequest
that `Model.prepare` checks; the commands then only print what the runtime yields.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, TextIO

import typer

from apps.cli.errors import friendly
from runtime.generation.request import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_SAMPLING,
    GenerationRequest,
    SamplingParams,
)
from runtime.speculative.switch import DEFAULT_DRAFT_TOKENS

# A conversation reads better with some variety and room to answer than a one-shot `run`.
CHAT_SAMPLING = SamplingParams(max_tokens=256, temperature=0.7)

Budget = Annotated[str | None, typer.Option(help="'40%', '1.5GB' or bytes; default: profile's.")]
Backend = Annotated[
    str | None,
    typer.Option(help="llama.cpp (GGUF build) or onnx (ONNX build); default: the bundle's."),
]


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
    budget: Budget = None,
    backend: Backend = None,
    cold: Annotated[
        bool, typer.Option(help="Drop released experts from the page cache too.")
    ] = False,
    draft: Annotated[
        str | None,
        typer.Option(help="Speculative decoding: a smaller bundle of the same vocabulary "
                     "(within --budget) or 'ngram' (prompt lookup)."),
    ] = None,
    draft_tokens: Annotated[
        int, typer.Option(help="Tokens the draft proposes per step.")
    ] = DEFAULT_DRAFT_TOKENS,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print text, tokens, finish_reason, stats.")
    ] = False,
) -> None:
    """Generate from a bundle (streams text unless --json)."""
    import runtime

    params = SamplingParams(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
        stop=tuple(stop or ()),
    )
    with runtime.load(bundle, budget=budget, cold=cold, backend=backend, draft=draft,
                      draft_tokens=draft_tokens) as model:
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
            "stats": model.stats(),
        }
        typer.echo(json.dumps(out, indent=2))


@friendly
def chat(
    bundle: Path,
    budget: Budget = None,
    backend: Backend = None,
    max_tokens: Annotated[int | None, typer.Option()] = CHAT_SAMPLING.max_tokens,
    temperature: Annotated[float, typer.Option()] = CHAT_SAMPLING.temperature,
    system: Annotated[str | None, typer.Option(help="System message.")] = None,
) -> None:
    """Interactive chat in the terminal using the bundle's chat template (/exit to quit)."""
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature)
    chat_loop(bundle, budget=budget, params=params, system=system, backend=backend)


def chat_loop(
    bundle: Path,
    *,
    budget: str | None,
    params: SamplingParams,
    system: str | None,
    backend: str | None = None,
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
) -> None:
    """Read a line, stream the answer, remember both; until EOF or /exit."""
    import runtime

    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    with runtime.load(bundle, budget=budget, backend=backend) as model:
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
