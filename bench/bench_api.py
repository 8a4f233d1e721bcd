"""What the API features cost: `n` choices vs n requests.

Run:  .venv/bin/python bench/bench_api.py [--bundle DIR | --fixture qwen3moe-trained]
                                         [--rounds 9] [--threads 2]

n=4 vs four requests: one request with n=4 against four n=1 requests with the seeds its
choices use (`choice_seed`), so both produce exactly the same tokens (checked); the ratio is of
wall time (and of CPU time), with a long prompt (where computing it once matters) and a short
one. Baseline and candidate alternate order in paired rounds (drift on a busy machine hits both
alike) and each line prints the median of the paired ratios candidate/baseline. What
constrained decoding costs per token is bench/bench_structured.py.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import resolve_bundle

N_CTX = 1024
SHORT = "def parse(line):\n    "
LONG = "".join(f"def step_{i}(value):\n    return value * {i} + {i % 7}\n\n" for i in range(24))



def paired(rounds: int, base: Callable[[], float], cand: Callable[[], float]
           ) -> tuple[list[float], list[float], list[float]]:
    """(ratios cand/base, base times, cand times) over `rounds` pairs, the order alternating
    each round."""
    ratios, bs, cs = [], [], []
    for r in range(rounds):
        if r % 2:
            b = base()
            c = cand()
        else:
            c = cand()
            b = base()
        ratios.append(c / b)
        bs.append(b)
        cs.append(c)
    return ratios, bs, cs


def timed(fn: Callable[[], object], clock: Callable[[], float]) -> float:
    t0 = clock()
    fn()
    return clock() - t0


def line(name: str, runs: tuple[list[float], list[float], list[float]], unit: str) -> None:
    ratios, base, cand = runs
    print(f"{name:<52} {statistics.median(ratios):>6.3f}x  "
          f"[{statistics.median(base) * 1e3:.2f} -> {statistics.median(cand) * 1e3:.2f} ms "
          f"{unit}; pairs {min(ratios):.2f}..{max(ratios):.2f}, n={len(ratios)}]")


def bench_n(model, rounds: int) -> None:
    from runtime.generation.request import choice_seed

    kw = dict(max_tokens=16, temperature=1.0)
    for label, prompt in (("long prompt", LONG), ("short prompt", SHORT)):
        n_prompt = len(model.tokenize(prompt))
        together = model.generate(prompt, n=4, seed=3, **kw)
        apart = [model.generate(prompt, seed=choice_seed(3, i), **kw) for i in range(4)]
        assert [list(c.tokens) for c in together.choices] == [a.tokens for a in apart], \
            "n=4 must answer exactly what four requests with its seeds answer"
        for clock, unit in ((time.perf_counter, "wall time"), (time.process_time, "CPU time")):
            runs = paired(
                rounds,
                lambda p=prompt, c=clock: timed(
                    lambda: [model.generate(p, seed=choice_seed(3, i), **kw) for i in range(4)],
                    c),
                lambda p=prompt, c=clock: timed(lambda: model.generate(p, n=4, seed=3, **kw), c),
            )
            line(f"n=4 / four requests, {label} ({n_prompt} tokens)", runs, unit)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", help="a packed bundle (default: pack --fixture)")
    ap.add_argument("--fixture", default="qwen3moe-trained")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import runtime

    with tempfile.TemporaryDirectory() as tmp:
        bundle = resolve_bundle(args, Path(tmp), "Q8_0")
        with runtime.load(bundle, n_ctx=N_CTX, threads=args.threads) as model:
            print(f"bundle {bundle.name}, vocabulary {model.engine.n_vocab} tokens, "
                  f"{args.threads} threads")
            bench_n(model, args.rounds)


if __name__ == "__main__":
    main()
