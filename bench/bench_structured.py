"""What constrained decoding costs per token, on both backends, side by side in one run.

Run:  .venv/bin/python bench/bench_structured.py [--bundle DIR | --fixture qwen3moe-trained]
                                                [--rounds 9] [--threads 1] [--tokens 64]
                                                [--requests 4]

Packs one checkpoint as `gguf,onnx` (Q8_0 and int8) unless --bundle names a bundle holding both,
then, per backend, generates the same prompt unconstrained and under each constraint: a JSON
schema (with `pattern`, numeric bounds and `anyOf`), `json_object`, a raw GBNF grammar, and a
required tool call. The answers differ in length, so each is timed per generated token: the
request's CPU time less the prompt's (measured apart: the same prompt on both sides, generating
one token), over the tokens after the first, summed over --requests requests with seeds 1, 2, ...
(one seed's answer can be two tokens long: `{}`). Baseline and candidate alternate order in
paired rounds (drift on a busy machine hits both alike) and each line prints the median of the
paired ratios constrained/unconstrained. CPU time is what other
processes on a shared machine disturb least; keep --threads 1 with it so no engine thread spins
waiting for a preempted sibling.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

N_CTX = 1024
PROMPT = "def parse(line):\n    "
PERSON = {"type": "json_schema", "json_schema": {"name": "person", "schema": {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0,
                                                       "maximum": 130},
                   "city": {"type": "string", "pattern": "^[A-Z][a-z]+( [A-Z][a-z]+)*$"},
                   "email": {"anyOf": [{"type": "string", "format": "email"}, {"type": "null"}]},
                   "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 8}},
    "required": ["name", "age", "city", "email", "tags"], "additionalProperties": False}}}
LINES = 'root ::= line+\nline ::= [a-z][a-z ,.()=_]* "\\n"'
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"},
                                     "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"], "additionalProperties": False}}}]
ASK = [{"role": "user", "content": "What is the weather in Oslo?"}]


def paired(rounds: int, base: Callable[[], float], cand: Callable[[], float]) -> list[float]:
    """Ratios cand/base over `rounds` pairs, the order alternating each round."""
    ratios = []
    for r in range(rounds):
        if r % 2:
            b, c = base(), cand()
        else:
            c, b = cand(), base()
        ratios.append(c / b)
    return ratios


def cpu(run: Callable[[], object]) -> tuple[float, int]:
    t0 = time.process_time()
    r = run()
    return time.process_time() - t0, len(r.tokens)  # type: ignore[attr-defined]


def per_token(run: Callable[[int], object], prompt_cpu: float, requests: int) -> float:
    """CPU per decoded token over `requests` requests (seeds 1..requests): each request's CPU
    less its prompt's, over the tokens after each one's first (which the prompt's logits give)."""
    spent = decoded = 0.0
    for seed in range(1, requests + 1):
        s, tokens = cpu(lambda seed=seed: run(seed))
        spent += max(s - prompt_cpu, 0.0)
        decoded += max(tokens - 1, 0)
    return spent / max(decoded, 1)


def bench_backend(model, rounds: int, tokens: int, only: list[str], requests: int
                  ) -> dict[str, float]:
    from runtime.generation.request import GenerationRequest, SamplingParams

    kw = dict(max_tokens=tokens, temperature=0.8)
    tool_prompt = model.prepare(GenerationRequest(
        messages=ASK, tools=TOOLS, tool_choice="required",
        params=SamplingParams(max_tokens=tokens))).prompt
    cases: dict[str, tuple[str, Callable[[int], object]]] = {
        "json_schema": (PROMPT, lambda seed: model.generate(
            PROMPT, response_format=PERSON, seed=seed, **kw)),
        "json_object": (PROMPT, lambda seed: model.generate(
            PROMPT, response_format={"type": "json_object"}, seed=seed, **kw)),
        "grammar": (PROMPT, lambda seed: model.generate(PROMPT, grammar=LINES, seed=seed, **kw)),
        "tools": (tool_prompt, lambda seed: model.chat(
            ASK, tools=TOOLS, tool_choice="required", seed=seed, **kw)),
    }
    out = {}
    for name, (prompt, constrained) in cases.items():
        if name not in only:
            continue
        def plain(seed: int, p: str = prompt) -> object:
            return model.generate(p, seed=seed, **kw)

        constrained(1)  # warm: the vocabulary for the library, the compiled grammar
        prompt_cpu = statistics.median(
            cpu(lambda p=prompt: model.generate(p, max_tokens=1))[0] for _ in range(5))
        ratios = paired(rounds, lambda f=plain, c=prompt_cpu: per_token(f, c, requests),
                        lambda f=constrained, c=prompt_cpu: per_token(f, c, requests))
        out[name] = statistics.median(ratios)
        base = statistics.median(per_token(plain, prompt_cpu, requests) for _ in range(3))
        print(f"  {name:<18} {out[name]:6.3f}x  [unconstrained {base * 1e3:.3f} ms/token; "
              f"pairs {min(ratios):.2f}..{max(ratios):.2f}, n={len(ratios)}]", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", help="a packed bundle with both builds (default: pack --fixture)")
    ap.add_argument("--fixture", default="qwen3moe-trained")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=4,
                    help="requests per measurement, seeds 1.. (their tokens are summed)")
    ap.add_argument("--backends", default="llama.cpp,onnx")
    ap.add_argument("--cases", default="json_schema,json_object,grammar,tools",
                    help="which constraints to time (comma-separated)")
    args = ap.parse_args()
    import runtime

    with tempfile.TemporaryDirectory() as tmp:
        if args.bundle:
            bundle = Path(args.bundle)
        else:
            from edgemoe_fixtures import cached_fixture
            from packager.api import PackOptions, pack

            bundle = Path(tmp) / f"{args.fixture}-Q8_0"
            pack(PackOptions(src=str(cached_fixture(args.fixture)), out_dir=bundle,
                             profile="laptop-16gb", quant="Q8_0", format="gguf,onnx",
                             reference=False))
        for backend in args.backends.split(","):
            with runtime.load(bundle, backend=backend, n_ctx=N_CTX, threads=args.threads) as m:
                print(f"{backend}: bundle {bundle.name}, vocabulary {m.engine.n_vocab} tokens, "
                      f"{args.threads} thread(s); constrained / unconstrained CPU per token",
                      flush=True)
                bench_backend(m, args.rounds, args.tokens, args.cases.split(","), args.requests)


if __name__ == "__main__":
    main()
