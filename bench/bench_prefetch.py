"""Decode speed with and without expert prefetch, against stock llama.cpp fully in RAM.

Run:  .venv/bin/python bench/bench_prefetch.py [--fixtures qwen3moe-trained,qwen3moe-medium]
          [--rounds 3] [--threads N] [--wait-policy P] [--decode 64] [--tap-only]
          [--child-prefix 'nice -n -5'] [--bundles DIR] [--configs 100,50-cold,25-cold]
          [--tap-rounds 5]

Per fixture, in one run, side by side: stock `llama_cpp.Llama(use_mmap=False)` and edgemoe at
100 % (no routing tap), 100 % with the tap forced on (`record_routing=True`: what observing
routing costs), and 50 % / 25 % cold (page cache dropped before load and released experts
dropped again, so misses read storage), each without and with prefetch. Every configuration is
measured against stock token by token (a stock step, then an edgemoe step, alternating), and
reported as the median of the per-round ratios: on a shared machine only times taken at the same
moment compare. Tokens must be identical in every configuration. Then the routing tap's own
cost at 100 %: no tap, paging at a full budget (resizable) and recording routing, decoded token
by token in turn in fresh processes (`--child-prefix` goes before each).

The large fixtures (qwen3moe-large, gptoss-large, qwen35moe-large) take minutes to build and to
pack: `--bundles DIR` keeps each packed bundle there and reuses it, and `--configs` runs a few
configurations at a time (each is measured against stock on its own, so runs combine; the token
digest printed per configuration says whether runs decoded the same tokens).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import add_thread_options, cpu_window, others_busy, thread_setup

PROMPT_CHARS = 1500
CONFIGS: tuple[tuple[str, str, str, bool, bool | None, bool], ...] = (
    # key (--configs), label, budget, cold, prefetch, record_routing
    ("100", "100%", "100%", False, False, False),
    ("100-tap", "100% tap on", "100%", False, False, True),
    ("50-cold", "50% cold", "50%", True, False, False),
    ("50-cold-prefetch", "50% cold + prefetch", "50%", True, True, False),
    ("25-cold", "25% cold", "25%", True, False, False),
    ("25-cold-prefetch", "25% cold + prefetch", "25%", True, True, False),
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


# The tap's cost at 100 %: each configuration against no tap, decoded alternately.
TAP_CONFIGS: tuple[tuple[str, dict], ...] = (
    ("no tap", {}),
    # Paging at a full budget (a server following memory pressure): every expert resident and
    # never evicted, so one-token steps run through every layer (runtime/experts/quiet.py).
    ("paging, 100% (resizable)", {"resizable": True}),
    # A routing trace needs every event: the graph stops at every MoE layer.
    ("recording routing", {"record_routing": True}),
)


def tap_round(bundle: str, prompt_ids: list[int], threads: int, wait_policy: str | None,
              n: int) -> dict:
    """One round in this (fresh) process: every TAP_CONFIGS model decodes `n` tokens after the
    same 128-token prompt, one token each in turn (the order rotating), so all see the same
    moments of a shared machine. Returns per configuration the decoding thread's CPU seconds,
    wall seconds and tokens (the engine's other threads run the same graph either way)."""
    import runtime

    kw = {"wait_policy": wait_policy} if wait_policy else {}
    models = [runtime.load(bundle, budget="100%", n_ctx=1024, threads=threads, prefetch=False,
                           **kw, **extra) for _, extra in TAP_CONFIGS]
    k = len(models)
    cpu, wall, toks = [0.0] * k, [0.0] * k, [[] for _ in range(k)]
    try:
        last = []
        for m in models:
            m.engine.reset()
            m.step(prompt_ids[:128])
            last.append(prompt_ids[128])
        since = cpu_window()
        for i in range(n):
            for j in [(i + r) % k for r in range(k)]:
                w0, c0 = time.perf_counter(), time.thread_time()
                logits = models[j].step([last[j]])
                cpu[j] += time.thread_time() - c0
                wall[j] += time.perf_counter() - w0
                last[j] = int(np.argmax(logits))
                toks[j].append(last[j])
        for j, m in enumerate(models):  # what the tap logged is replayed: part of its cost
            w0, c0 = time.perf_counter(), time.thread_time()
            m.pager.sync()
            cpu[j] += time.thread_time() - c0
            wall[j] += time.perf_counter() - w0
        background = others_busy(since)
        hits = [m.stats().unobserved_hits for m in models]
    finally:
        for m in models:
            m.close()
    return {"cpu": cpu, "wall": wall, "tokens": toks, "unobserved_hits": hits,
            "background": background}


def tap_overhead(bundle: Path, prompt_ids: list[int], args: argparse.Namespace, rounds: int,
                 n: int = 300) -> None:
    """Print each TAP_CONFIGS configuration's decoding-thread CPU and wall time per token as a
    ratio to no tap: medians over `rounds` fresh processes (each started with --child-prefix)."""
    spec = {"bundle": str(bundle), "prompt_ids": prompt_ids, "threads": args.threads,
            "wait_policy": args.wait_policy, "n": n}
    runs: list[dict] = []
    tries = 0
    while len(runs) < rounds:
        cmd = [*shlex.split(args.child_prefix), sys.executable, __file__, "--tap-child",
               json.dumps(spec)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise SystemExit(f"tap round failed: {done.stderr.strip()[-500:]}")
        run = json.loads(done.stdout.strip().splitlines()[-1])
        tries += 1
        if run["background"] <= args.max_background or tries >= 10 * rounds:
            runs.append(run)
        else:
            print(f"    (others kept {run['background']:.2f} of a core busy; measuring again)",
                  flush=True)
            time.sleep(5)
    for run in runs:
        assert all(t == run["tokens"][0] for t in run["tokens"]), "tokens changed with the tap"
    print(f"routing tap at 100% ({rounds} fresh processes, {n} tokens each decoded alternately "
          f"with every configuration; others kept "
          f"{max(r['background'] for r in runs):.2f} of a core busy at most): ratio to no tap, "
          f"median (per round)")
    base_cpu = [r["cpu"][0] for r in runs]
    base_wall = [r["wall"][0] for r in runs]
    print(f"  {TAP_CONFIGS[0][0]:<26} {statistics.median(base_wall) / n * 1e6:7.0f} us/token "
          f"wall, {statistics.median(base_cpu) / n * 1e6:.0f} us decoding-thread CPU")
    for j, (label, _) in enumerate(TAP_CONFIGS[1:], start=1):
        cpus = [r["cpu"][j] / r["cpu"][0] for r in runs]
        walls = [r["wall"][j] / r["wall"][0] for r in runs]
        quiet = runs[-1]["unobserved_hits"][j]
        print(f"  {label:<26} CPU x{statistics.median(cpus):.3f} "
              f"({' '.join(f'{c:.3f}' for c in cpus)}), wall x{statistics.median(walls):.3f} "
              f"({' '.join(f'{w:.3f}' for w in walls)})"
              + (f"; hits without a stop {quiet}" if quiet else ""))


def packed(name: str, quant: str, keep: str | None) -> Path:
    """The fixture packed at `quant`: into a fresh temporary folder, or kept under `keep` and
    reused by later runs (a large fixture's pack takes minutes)."""
    from edgemoe_fixtures import cached_fixture, spec_hash
    from edgemoe_fixtures.specs import get_spec
    from packager.api import PackOptions, pack

    if keep is None:
        bundle = Path(tempfile.mkdtemp(prefix="edgemoe-bench-prefetch-")) / "bundle"
    else:  # the spec hash in the name: a rebuilt fixture is packed again
        bundle = Path(keep) / f"{name}-{spec_hash(get_spec(name))}-{quant}"
        if (bundle / "manifest.json").is_file():
            return bundle
    pack(PackOptions(src=str(cached_fixture(name)), out_dir=bundle, quant=quant,
                     profile="laptop-16gb", reference=False))
    return bundle


def describe(bundle: Path) -> str:
    """What the GGUF holds: its size, the experts' share and their tensor types (a checkpoint
    published with MXFP4 experts keeps them at every quant)."""
    from contract.manifest import read_manifest

    m = read_manifest(bundle)
    total = (bundle / m.model_file).stat().st_size
    types = sorted({t.ggml_type for layer in m.expert_layers for t in layer.tensors})
    return (f"GGUF {total / 1e6:.0f} MB, experts {m.expert_bytes_total / 1e6:.0f} MB "
            f"({m.expert_bytes_total / total:.1%}, {'/'.join(types)}), "
            f"{m.shape.n_experts} experts top-{m.shape.top_k} in {len(m.expert_layers)} layers")


def digest(tokens: list[int]) -> str:
    """A short name for a token sequence, to compare runs made in separate processes."""
    return hashlib.sha256(np.asarray(tokens, dtype=np.int64).tobytes()).hexdigest()[:12]


def bench_fixture(name: str, quant: str, args: argparse.Namespace) -> None:
    import runtime
    from edgemoe_fixtures.corpus import heldout_text

    bundle = packed(name, quant, args.bundles)
    prompt = heldout_text()[:PROMPT_CHARS]
    with runtime.load(bundle, budget="100%") as m:
        prompt_ids = m.tokenize(prompt)
    n, th, rounds = args.decode, args.threads, args.rounds
    if args.tap_only:
        print(f"\n{name} {quant}: {describe(bundle)}\nprompt {len(prompt_ids)} tokens, {th} "
              "threads")
        tap_overhead(bundle, prompt_ids, args, args.tap_rounds or max(rounds, 5))
        return
    print(f"\n{name} {quant}: {describe(bundle)}\nprompt {len(prompt_ids)} tokens, {n} decode "
          f"steps, {th} threads; decode speed as a ratio to stock llama.cpp (GGUF fully in RAM), "
          f"stepped token against token; median of {rounds} rounds", flush=True)
    reference: list[int] | None = None
    stock = Stock(bundle / "model.gguf", prompt_ids, th)
    prefetch_state: dict[str, str] = {}
    try:
        print(f"{'configuration':<22} {'ratio':>6}  {'per round':<24} {'hit rate':>8} "
              f"{'prefetch used/unused':>20} {'tokens':>12} {'others':>6}")
        for key, label, budget, cold, prefetch, record in CONFIGS:
            if key not in args.configs:
                continue
            ratios, since = [], cpu_window()
            for _ in range(rounds):
                ratio, tokens, stats = interleaved(stock, bundle, prompt, n, th, budget, cold,
                                                   prefetch, record)
                reference = reference or tokens
                assert tokens == reference, f"tokens changed: {label}"
                ratios.append(ratio)
            lookups = stats.hits + stats.misses
            hit = f"{stats.hits / lookups:.3f}" if stats.offloading and lookups else "-"
            pf = stats.prefetch  # None: nothing paged
            on = pf is not None and pf.state == "on"
            used = (f"{pf.prefetch_used_experts or 0}/{pf.prefetch_unused_experts or 0}"
                    if pf is not None and on else "-")
            if prefetch:  # "on", or "off: why" (e.g. a gating rule pre-gating cannot rank)
                prefetch_state[label] = str(pf.state if pf is not None else None) + (
                    f" (governor width {pf.prefetch_width} at the end, "
                    f"{pf.prefetch_changes} changes)" if pf is not None and on else "")
            print(f"{label:<22} {statistics.median(ratios):6.2f}  "
                  f"{' '.join(f'{r:.2f}' for r in ratios):<24} {hit:>8} {used:>20} "
                  f"{digest(reference):>12} {others_busy(since):6.2f}", flush=True)
    finally:
        stock.close()
    print("tokens identical in every edgemoe configuration above (greedy); others: cores other "
          "processes kept busy meanwhile")
    for label, state in prefetch_state.items():
        print(f"prefetch at {label}: {state}")
    if args.tap_rounds != 0:
        tap_overhead(bundle, prompt_ids, args, args.tap_rounds or max(rounds, 5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixtures", default="qwen3moe-trained,qwen3moe-medium")
    ap.add_argument("--quant", default="Q8_0")
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tap-only", action="store_true",
                    help="only the routing tap's cost at 100%% (no prefetch table)")
    ap.add_argument("--child-prefix", default="",
                    help="a command put before each tap-cost child process (e.g. 'nice -n -5')")
    ap.add_argument("--max-background", type=float, default=0.2,
                    help="cores other processes may keep busy during a tap-cost round "
                         "(a busier round is taken again)")
    ap.add_argument("--tap-rounds", type=int, default=None,
                    help="rounds of the routing tap's cost (default: max(rounds, 5); 0: skip)")
    ap.add_argument("--bundles", default=None,
                    help="keep packed bundles in this folder and reuse them (default: pack anew)")
    ap.add_argument("--configs", default=",".join(c[0] for c in CONFIGS),
                    help="which configurations to measure (default: all)")
    ap.add_argument("--tap-child", default=None, help=argparse.SUPPRESS)
    add_thread_options(ap)
    args = ap.parse_args()
    keys = [c[0] for c in CONFIGS]
    args.configs = [k.strip() for k in args.configs.split(",") if k.strip()]
    unknown = [k for k in args.configs if k not in keys]
    if unknown:
        ap.error(f"unknown configuration {', '.join(unknown)} (known: {', '.join(keys)})")
    if args.tap_child is not None:
        spec = json.loads(args.tap_child)
        print(json.dumps(tap_round(spec["bundle"], spec["prompt_ids"], spec["threads"],
                                   spec["wait_policy"], spec["n"])))
        return
    print(f"bench_prefetch: {thread_setup(args)}", flush=True)
    for name in args.fixtures.split(","):
        bench_fixture(name.strip(), args.quant, args)


if __name__ == "__main__":
    main()
