"""Decode speed with and without expert prefetch, against stock llama.cpp fully in RAM.

Run:  .venv/bin/python bench/bench_prefetch.py [--fixtures qwen3moe-trained,qwen3moe-medium]
          [--rounds 3] [--threads N] [--wait-policy P] [--decode 64]

Per fixture, in one run, side by side: stock `llama_cpp.Llama(use_mmap=False)` and edgemoe at
100 % (no routing tap), 100 % with the tap forced on (`record_routing=True`: what observing
routing costs), and 50 % / 25 % cold (page cache dropped before load and released experts
dropped again, so misses read storage), each without and with prefetch. Every configuration is
measured against stock token by token (a stock step, then an edgemoe step, alternating), and
reported as the median of the per-round ratios: on a shared machine only times taken at the same
moment compare. Tokens must be identical in every configuration.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import add_thread_options, thread_setup

PROMPT_CHARS = 1500
CONFIGS: tuple[tuple[str, str, bool, bool | None, bool], ...] = (
    # label, budget, cold, prefetch, record_routing
    ("100%", "100%", False, False, False),
    ("100% tap on", "100%", False, False, True),
    ("50% cold", "50%", True, False, False),
    ("50% cold + prefetch", "50%", True, True, False),
    ("25% cold", "25%", True, False, False),
    ("25% cold + prefetch", "25%", True, True, False),
)


class Stock:
    """Stock llama.cpp with the whole GGUF read into RAM, stepped one greedy token at a time."""

    def __init__(self, gguf: Path, prompt_ids: list[int], threads: int) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(str(gguf), n_ctx=1024, n_batch=512, n_threads=threads,
                                   n_threads_batch=threads, use_mmap=False, verbose=False)
        self.prompt_ids = prompt_ids

    def start(self) -> None:
        self.llm.reset()
        self.llm.eval(self.prompt_ids)

    def step(self) -> None:
        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits_ith(-1),
                                       shape=(self.llm.n_vocab(),))
        self.llm.eval([int(np.argmax(logits))])

    def close(self) -> None:
        self.llm.close()


def interleaved(stock: Stock, bundle: Path, prompt: str, n: int, threads: int, budget: str,
                cold: bool, prefetch: bool | None, record: bool
                ) -> tuple[float, list[int], dict]:
    """Speed of one edgemoe configuration as a ratio to stock, measured token against token:
    a stock step, then an edgemoe step (its generation loop as a user runs it), alternating, so
    both see the same moment of a shared machine. Wall time: a miss that reads storage is a
    cost the user waits for. Prefill and the first token are not timed."""
    import runtime
    from runtime.experts.residency import drop_file_cache

    if cold:
        drop_file_cache(bundle / "model.gguf")  # stock's copy is anonymous memory: unaffected
    with runtime.load(bundle, budget=budget, cold=cold, n_ctx=1024, threads=threads,
                      prefetch=prefetch, record_routing=record) as model:
        events = model.stream_events(prompt, max_tokens=n + 1, temperature=0.0)
        next(events)  # prefill and the first token
        stock.start()
        ours = theirs = 0.0
        steps, last = 0, None
        for _ in range(n + 2):
            t0 = time.perf_counter()
            stock.step()
            theirs += time.perf_counter() - t0
            steps += 1
            t0 = time.perf_counter()
            try:
                last = next(events)
            except StopIteration:
                break
            finally:
                ours += time.perf_counter() - t0
            if last.usage is not None:
                break
        events.close()  # leave the generation (it holds the model's lock until it ends)
        assert last is not None and last.usage is not None
        tokens = list(last.tokens or ())
        stats = model.stats()
    ours_per_token = ours / max(1, len(tokens) - 1)
    return (theirs / steps) / ours_per_token, tokens, stats


def tap_overhead(bundle: Path, prompt_ids: list[int], threads: int, rounds: int,
                 n: int = 300) -> tuple[list[float], list[float]]:
    """(CPU-time ratios, wall ratios) of decoding with the routing tap forced on
    (`record_routing=True`, log replayed included) vs no tap, at 100 %. Two models decode
    alternately, token by token, so both see the same moment of a shared machine; the decoding
    thread's CPU time is the steadier figure."""
    import runtime

    models = [runtime.load(bundle, budget="100%", n_ctx=1024, threads=threads,
                           record_routing=rec, prefetch=False) for rec in (False, True)]
    cpus, walls = [], []
    try:
        for _ in range(rounds):
            toks, cpu, wall = [], [0.0, 0.0], [0.0, 0.0]
            for m in models:
                m.engine.reset()
                m.step(prompt_ids[:128])
                toks.append(prompt_ids[128])
            for i in range(n):
                for j in ((0, 1) if i % 2 == 0 else (1, 0)):
                    w0, c0 = time.perf_counter(), time.thread_time()
                    logits = models[j].step([toks[j]])
                    cpu[j] += time.thread_time() - c0
                    wall[j] += time.perf_counter() - w0
                    toks[j] = int(np.argmax(logits))
            w0, c0 = time.perf_counter(), time.thread_time()
            models[1].pager.sync()
            cpu[1] += time.thread_time() - c0
            wall[1] += time.perf_counter() - w0
            cpus.append(cpu[1] / cpu[0])
            walls.append(wall[1] / wall[0])
    finally:
        for m in models:
            m.close()
    return cpus, walls


def bench_fixture(name: str, quant: str, args: argparse.Namespace) -> None:
    import runtime
    from edgemoe_fixtures import cached_fixture
    from edgemoe_fixtures.corpus import heldout_text
    from packager.api import PackOptions, pack

    bundle = Path(tempfile.mkdtemp(prefix="edgemoe-bench-prefetch-")) / "bundle"
    pack(PackOptions(src=str(cached_fixture(name)), out_dir=bundle, quant=quant,
                     profile="laptop-16gb", reference=False))
    prompt = heldout_text()[:PROMPT_CHARS]
    with runtime.load(bundle, budget="100%") as m:
        prompt_ids = m.tokenize(prompt)
    n, th, rounds = args.decode, args.threads, args.rounds
    print(f"\n{name} {quant}: prompt {len(prompt_ids)} tokens, {n} decode steps, {th} threads; "
          f"decode speed as a ratio to stock llama.cpp (GGUF fully in RAM), stepped token against "
          f"token; median of {rounds} rounds")
    reference: list[int] | None = None
    stock = Stock(bundle / "model.gguf", prompt_ids, th)
    try:
        print(f"{'configuration':<22} {'ratio':>6}  {'per round':<30} {'hit rate':>8} "
              f"{'prefetch used/unused':>20}")
        for label, budget, cold, prefetch, record in CONFIGS:
            ratios, stats = [], {}
            for _ in range(rounds):
                ratio, tokens, stats = interleaved(stock, bundle, prompt, n, th, budget, cold,
                                                   prefetch, record)
                reference = reference or tokens
                assert tokens == reference, f"tokens changed: {label}"
                ratios.append(ratio)
            lookups = stats["hits"] + stats["misses"]
            hit = f"{stats['hits'] / lookups:.3f}" if stats.get("offloading") and lookups else "-"
            used = (f"{stats.get('prefetch_used_experts', 0)}/"
                    f"{stats.get('prefetch_unused_experts', 0)}"
                    if stats.get("prefetch") == "on" else "-")
            print(f"{label:<22} {statistics.median(ratios):6.2f}  "
                  f"{' '.join(f'{r:.2f}' for r in ratios):<30} {hit:>8} {used:>20}")
    finally:
        stock.close()
    print("tokens identical in every edgemoe configuration (greedy)")
    cpus, walls = tap_overhead(bundle, prompt_ids, th, max(rounds, 5))
    print(f"routing tap at 100% (forced on vs off, {max(rounds, 5)} rounds of 300 tokens "
          f"decoded alternately): decoding-thread CPU x{statistics.median(cpus):.3f} "
          f"({' '.join(f'{c:.3f}' for c in cpus)}), wall x{statistics.median(walls):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixtures", default="qwen3moe-trained,qwen3moe-medium")
    ap.add_argument("--quant", default="Q8_0")
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    add_thread_options(ap)
    args = ap.parse_args()
    print(f"bench_prefetch: {thread_setup(args)}", flush=True)
    for name in args.fixtures.split(","):
        bench_fixture(name.strip(), args.quant, args)


if __name__ == "__main__":
    main()
