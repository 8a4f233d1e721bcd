"""What checking every read costs: decode with the weight checks on against off, at 100/50/25 %.

Run:  .venv/bin/python bench/bench_verify.py [--fixture qwen3moe-medium] [--rounds 5]

Each measurement loads the bundle fresh with its model file dropped from the page cache and
`cold=True` (every miss reads storage), generates `--decode` greedy tokens after a prompt and
reads decode tok/s; `check_reads=True` (each expert preads + xxh3 on its first read and is paged
in by MADV_POPULATE_READ, dense tensors verified in a background thread; at 100 % the
background thread verifies every expert too) against `check_reads=False` (the path before),
in paired rounds with the order alternating, printed as the median of the paired ratios. Also
per budget: the time spent verifying experts per generated token (first reads only, so it falls
as the run goes on; wall time, and the decoding thread's CPU time for the checks (hashing the
pages just mapped), also as a share of the run: the page-in itself is the read the engine's
faults did before), experts verified, and the background check's time. Tokens must match.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import add_thread_options, resolve_bundle, thread_setup

PROMPT = "import os\nimport sys\n\ndef main(argv):\n    " * 8


def measure(bundle: Path, budget: str, checks: bool, n: int, threads: int) -> dict:
    import runtime
    from runtime.experts.residency import drop_file_cache

    drop_file_cache(bundle / "model.gguf")
    with runtime.load(bundle, budget=budget, cold=True, n_ctx=1024, threads=threads,
                      check_reads=checks) as model:
        r = model.generate(PROMPT, max_tokens=n, temperature=0.0)
        if model._background is not None:
            model._background.wait(600)
        s = model.stats()
    v = s.verification
    tokens = len(r.tokens) + r.usage.prompt_tokens
    wall = r.timings["prefill_s"] + r.timings["decode_s"]
    return {"decode": r.timings["decode_tok_s"], "prefill": r.timings["prefill_tok_s"],
            "tokens": r.tokens, "verify_us_per_token": 1e6 * v.expert_verify_s / tokens,
            "cpu_us_per_token": 1e6 * v.verify_cpu_s / tokens,
            "cpu_share": v.verify_cpu_s / wall,
            "experts": v.experts_verified, "dense_s": v.dense_verify_s,
            "dense_mb": v.dense_bytes_verified / 1e6, "misses": s.misses}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixture", default="qwen3moe-medium")
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--quant", default="Q8_0")
    ap.add_argument("--budgets", default="100%,50%,25%")
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    add_thread_options(ap)
    args = ap.parse_args()
    print(f"bench_verify: {thread_setup(args)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="edgemoe-bench-") as tmp:
        bundle = resolve_bundle(args, Path(tmp), args.quant)
        size = (bundle / "model.gguf").stat().st_size
        print(f"{bundle.name}: {size / 2**20:.0f} MiB, cold, {args.decode} tokens, "
              f"{args.rounds} paired rounds")
        print(f"{'budget':>7} {'decode on/off':>13} {'prefill on/off':>14} "
              f"{'check wall us/tok':>17} {'CPU us/tok':>10} {'CPU share':>9} "
              f"{'experts checked':>15} {'background':>18}")
        for budget in args.budgets.split(","):
            ratios, pre, on_runs = [], [], []
            for i in range(args.rounds):
                order = (True, False) if i % 2 == 0 else (False, True)
                got = {c: measure(bundle, budget, c, args.decode, args.threads) for c in order}
                assert got[True]["tokens"] == got[False]["tokens"], "checks changed the tokens"
                ratios.append(got[True]["decode"] / got[False]["decode"])
                pre.append(got[True]["prefill"] / got[False]["prefill"])
                on_runs.append(got[True])
            us = statistics.median(r["verify_us_per_token"] for r in on_runs)
            cpu = statistics.median(r["cpu_us_per_token"] for r in on_runs)
            share = statistics.median(r["cpu_share"] for r in on_runs)
            experts = statistics.median(r["experts"] for r in on_runs)
            dense = (f"{statistics.median(r['dense_mb'] for r in on_runs):.0f} MB in "
                     f"{statistics.median(r['dense_s'] for r in on_runs):.2f} s")
            print(f"{budget:>7} {statistics.median(ratios):13.3f} {statistics.median(pre):14.3f} "
                  f"{us:17.1f} {cpu:10.1f} {share:9.2%} {experts:15.0f} {dense:>18}",
                  flush=True)


if __name__ == "__main__":
    main()
