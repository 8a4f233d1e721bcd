"""Runtime speed at expert budgets vs stock llama.cpp fully in RAM, and policies vs Belady.

Run:  .venv/bin/python bench/bench_runtime.py [--fixture qwen3moe-trained] [--quant Q8_0]
      .venv/bin/python bench/bench_runtime.py --fixture qwen3moe-medium --contention [--rounds 5]

Everything is measured side by side in one run and printed as ratios: decode and prefill tokens/s
at budgets 100/50/25 % against `llama_cpp.Llama(use_mmap=False)` on the same GGUF, each budget
*warm* (released expert pages stay in the OS page cache) and *cold* (released pages are also
dropped from the page cache, so every miss reads storage); then the hit rate of each cache
policy on a recorded routing trace relative to Belady's optimum. `--contention` instead
measures prefill and decode with a busy-loop neighbour on one core against the same run without
it, for the thread/wait settings runtime/threads.py chooses between.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

PROMPT_FILE_CHARS = 1500


def stock_llama(
    gguf: Path, prompt_ids: list[int], n_decode: int, threads: int
) -> tuple[float, float, list[int]]:
    import llama_cpp

    llm = llama_cpp.Llama(
        str(gguf),
        n_ctx=1024,
        n_batch=512,
        n_threads=threads,
        n_threads_batch=threads,
        use_mmap=False,
        verbose=False,
    )
    try:
        t0 = time.perf_counter()
        llm.eval(prompt_ids)
        prefill = len(prompt_ids) / (time.perf_counter() - t0)
        out = []
        t0 = time.perf_counter()
        for _ in range(n_decode):
            logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))
            tok = int(np.argmax(logits))
            out.append(tok)
            llm.eval([tok])
        decode = n_decode / (time.perf_counter() - t0)
        return prefill, decode, out
    finally:
        llm.close()


def edgemoe_run(
    bundle: Path, prompt: str, n_decode: int, budget: str, cold: bool, threads: int
) -> tuple[float, float, list[int], dict]:
    import runtime

    with runtime.load(bundle, budget=budget, cold=cold, n_ctx=1024, threads=threads) as model:
        r = model.generate(prompt, max_tokens=n_decode)
        s = model.stats()
    # decode_tok_s counts the n-1 decode steps after the first sampled token.
    return r.timings["prefill_tok_s"], r.timings["decode_tok_s"], r.tokens, s


# One measurement in a fresh process (OpenMP reads its wait policy once, at load).
CONTENTION_CHILD = """
import json, sys
import runtime
from edgemoe_fixtures.corpus import heldout_text
bundle, threads = sys.argv[1], int(sys.argv[2])
prompt = heldout_text()[:1500]
with runtime.load(bundle, budget="100%", n_ctx=1024, threads=threads) as m:
    m.generate(prompt[:200], max_tokens=4)
    r = m.generate(prompt, max_tokens=48)
print(json.dumps({"prefill": r.timings["prefill_tok_s"], "decode": r.timings["decode_tok_s"]}))
"""
# label -> (threads, environment): OMP_WAIT_POLICY="" is libgomp's own default (spin, then
# sleep), what edgemoe ran before runtime/threads.py; unset, edgemoe asks for PASSIVE.
CONTENTION_CONFIGS = {
    "2 threads, OpenMP default spin": (2, {"OMP_WAIT_POLICY": ""}),
    "2 threads, passive (edgemoe)": (2, {}),
    "1 thread": (1, {}),
}


def contention(bundle: Path, rounds: int) -> None:
    """Prefill and decode with one of the two cores taken by a busy-loop neighbour, as a ratio
    to the same run without it (paired, back to back, neighbour order alternating)."""
    import json
    import os
    import subprocess
    import sys

    def run(threads: int, env: dict[str, str]) -> dict[str, float]:
        out = subprocess.run(
            [sys.executable, "-c", CONTENTION_CHILD, str(bundle), str(threads)],
            capture_output=True, text=True, timeout=600, env={**os.environ, **env},
        )
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        return json.loads(out.stdout.strip().splitlines()[-1])

    def busy(threads: int, env: dict[str, str]) -> dict[str, float]:
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(0.3)
            return run(threads, env)
        finally:
            hog.kill()
            hog.wait()

    print(f"\ncontention: {os.cpu_count()} CPUs, a busy-loop neighbour on one; "
          f"{rounds} paired rounds (median busy/quiet)")
    for label, (threads, env) in CONTENTION_CONFIGS.items():
        pairs = []
        for i in range(rounds):
            q, b = ((run(threads, env), busy(threads, env)) if i % 2 == 0
                    else reversed((busy(threads, env), run(threads, env))))
            pairs.append((q, b))
        cells = []
        for kind in ("prefill", "decode"):
            quiet = statistics.median(q[kind] for q, _ in pairs)
            ratio = statistics.median(b[kind] / q[kind] for q, b in pairs)
            cells.append(f"{kind} {quiet:7.1f} tok/s quiet, x{ratio:.2f} busy")
        print(f"  {label:<32} {'   '.join(cells)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixture", default="qwen3moe-trained")
    ap.add_argument("--quant", default="Q8_0")
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--contention", action="store_true",
                    help="only measure prefill/decode with a busy neighbour on one core")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    from edgemoe_fixtures import cached_fixture
    from edgemoe_fixtures.corpus import heldout_text
    from packager.api import PackOptions, pack
    from runtime.tracing import record_trace, replay_budgets

    work = Path(tempfile.mkdtemp(prefix="edgemoe-bench-"))
    bundle = work / "bundle"
    pack(
        PackOptions(
            src=str(cached_fixture(args.fixture)),
            out_dir=bundle,
            quant=args.quant,
            profile="laptop-16gb",
            reference=False,
        )
    )
    gguf = bundle / "model.gguf"
    if args.contention:
        contention(bundle, args.rounds)
        return
    text = heldout_text()
    prompt = text[:PROMPT_FILE_CHARS]
    import runtime

    with runtime.load(bundle, budget="100%") as m:
        prompt_ids = m.tokenize(prompt)
    print(
        f"bundle {args.fixture} {args.quant}: prompt {len(prompt_ids)} tokens, "
        f"decode {args.decode} tokens, {args.threads} threads, median of {args.repeats}"
    )

    base_p, base_d = [], []
    results: dict[tuple[str, bool], tuple[list[float], list[float], dict]] = {}
    ref_tokens = None
    ours_ref: list[int] = []
    same_as_stock = False
    for _ in range(args.repeats):
        p, d, toks = stock_llama(gguf, prompt_ids, args.decode, args.threads)
        base_p.append(p)
        base_d.append(d)
        ref_tokens = toks
        for budget in ("100%", "50%", "25%"):
            for cold in (False, True):
                if budget == "100%" and cold:
                    continue
                p, d, toks, stats = edgemoe_run(
                    bundle, prompt, args.decode, budget, cold, args.threads
                )
                ours = ours_ref = ours_ref if budget != "100%" else toks  # noqa: F841
                assert toks == ours_ref, f"edgemoe tokens changed with budget {budget} cold={cold}"
                same_as_stock = toks == ref_tokens[: len(toks)]
                entry = results.setdefault((budget, cold), ([], [], stats))
                entry[0].append(p)
                entry[1].append(d)
    bp, bd = statistics.median(base_p), statistics.median(base_d)
    print(
        f"greedy tokens identical at every budget; identical to stock llama.cpp: {same_as_stock}"
        " (stock repacks weights for other kernels, so near-ties may round differently)"
    )
    print(f"\nstock llama.cpp (all in RAM): prefill {bp:8.1f} tok/s   decode {bd:8.1f} tok/s")
    print(
        f"{'budget':>8} {'mode':>5} {'prefill':>9} {'ratio':>6} {'decode':>9} {'ratio':>6} "
        f"{'hit rate':>8} {'MiB loaded':>10}"
    )
    for (budget, cold), (ps, ds, stats) in results.items():
        p, d = statistics.median(ps), statistics.median(ds)
        total = stats["hits"] + stats["misses"]
        hit = stats["hits"] / total if total else 1.0
        print(
            f"{budget:>8} {'cold' if cold else 'warm':>5} {p:9.1f} {p / bp:6.2f} {d:9.1f} "
            f"{d / bd:6.2f} {hit:8.3f} {stats['bytes_loaded'] / 2**20:10.1f}"
        )

    trace = record_trace(bundle, text, max_tokens=4096)
    report = replay_budgets(
        bundle, trace, ["25%", "37.5%", "50%", "75%"], ["lru", "lfu", "lrfu"], pin_hot=False
    )
    print(f"\ncache policies on a {len(trace)}-token routing trace (hit rate, ratio to Belady):")
    print(report.render())


if __name__ == "__main__":
    main()
