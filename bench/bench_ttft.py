"""Time to first token of a short chat, cold and warm, beside stock llama.cpp on the same GGUF.

Run:  .venv/bin/python bench/bench_ttft.py [--fixture qwen3moe-large] [--quant Q8_0]
          [--budgets 100%,25%] [--thread-counts default,1] [--caches cold,warm] [--rounds 5]
          [--prompt chat|bench] [--bundle PATH] [--child-prefix 'nice -n -5'] [--max-wait 0.1]

Every measurement is a fresh process, as a user's first question after starting a program is.
Cold: the GGUF is dropped from the page cache first (posix_fadvise DONTNEED), and edgemoe loads
with `cold=True` (prompt prefetch on: the cold default); warm: the GGUF is read once before the
clock starts and edgemoe loads with its defaults. The prompt is one short user message through
the bundle's chat template (`--prompt bench`: `edgemoe bench`'s 79-token plain prompt),
answered greedily (2 tokens). Per process: the load (importing the engine's Python package
and opening the model, as a program that starts does); the time to first token (the prompt's
engine step and the first sample, as `Model.stats()` counts it; for stock llama.cpp
`Llama.eval` over the same token ids and an argmax); edgemoe's breakdown
(runtime/generation/latency.py: PromptTiming); bytes read from storage at load and by the
prompt (/proc/self/io); how long its threads waited for a CPU others held (schedstat; a
measurement that waited more than --max-wait of its time is taken again, at most twice).
Stock llama.cpp runs with its defaults (`llama_cpp.Llama`: mmap, the whole file read at load),
the same n_ctx, thread count and thread waiting. Rounds are paired: every configuration once
per round in a rotating order; the table prints medians and, per cache state and thread count,
the median of per-round ratios to stock.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import add_thread_options, resolve_bundle, thread_setup

MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]

PRELUDE = r"""
import json, os, sys, time
spec = json.loads(sys.argv[1])
gguf = os.path.join(spec["bundle"], "model.gguf")
def waited():  # seconds this process's threads spent ready but waiting for a CPU
    total = 0
    for t in os.listdir("/proc/self/task"):
        try:
            total += int(open(f"/proc/self/task/{t}/schedstat").read().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return total / 1e9
def io():
    for line in open("/proc/self/io"):
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
if spec["cache"] == "cold":  # nothing of either engine imported yet: its clock covers that
    fd = os.open(gguf, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
else:
    with open(gguf, "rb") as f:
        while f.read(1 << 22):
            pass
"""

EDGEMOE = PRELUDE + r"""
r0, t0, q0 = io(), time.perf_counter(), waited()
import runtime.api
kw = {"wait_policy": spec["wait_policy"]} if spec["wait_policy"] else {}
with runtime.load(spec["bundle"], budget=spec["budget"], cold=spec["cache"] == "cold",
                  threads=spec["threads"], **kw) as m:
    load_s, r1 = time.perf_counter() - t0, io()
    if spec["messages"] is None:  # edgemoe bench's plain prompt
        from runtime.benchmark import DEFAULT_PROMPT
        ids = m.tokenize(DEFAULT_PROMPT)
        res = m.generate(DEFAULT_PROMPT, max_tokens=2, temperature=0.0)
    else:
        ids = m.tokenize(m.apply_chat_template(spec["messages"]))
        res = m.chat(spec["messages"], max_tokens=2, temperature=0.0)
    r2, s = io(), m.stats()
    busy = (waited() - q0) / (time.perf_counter() - t0)
    n_ctx, prefetch = m.n_ctx, str(m.prefetch)
breakdown = s.latency.ttft_breakdown
print(json.dumps({"ttft_ms": s.latency.ttft_ms_p50,
                  "breakdown": breakdown.to_dict() if breakdown is not None else None,
                  "load_ms": load_s * 1e3, "load_read": r1 - r0, "prompt_read": r2 - r1,
                  "prompt_ids": ids, "tokens": res.tokens, "n_ctx": n_ctx,
                  "prefetch": prefetch, "cpu_wait": max(0.0, busy)}))
"""

STOCK = PRELUDE + r"""
r0, t0, q0 = io(), time.perf_counter(), waited()
import llama_cpp, numpy as np
llm = llama_cpp.Llama(gguf, n_ctx=spec["n_ctx"], n_threads=spec["threads"],
                      n_threads_batch=spec["threads"], verbose=False)
load_s, r1 = time.perf_counter() - t0, io()
def greedy():
    return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1),
                                               shape=(llm.n_vocab(),))))
t1 = time.perf_counter()
llm.eval(spec["prompt_ids"])
first = greedy()
ttft_s = time.perf_counter() - t1
llm.eval([first])
tokens = [first, greedy()]
r2 = io()
busy = (waited() - q0) / (time.perf_counter() - t0)
print(json.dumps({"ttft_ms": ttft_s * 1e3, "breakdown": None, "load_ms": load_s * 1e3,
                  "load_read": r1 - r0, "prompt_read": r2 - r1, "tokens": tokens,
                  "cpu_wait": max(0.0, busy)}))
"""

PARTS = ("graph_ms", "compute_ms", "experts_ms", "verify_ms", "first_sample_ms")


def measure(label: str, code: str, spec: dict, args: argparse.Namespace) -> dict:
    """One fresh-process measurement, taken again while its threads waited for a CPU more
    than --max-wait of the time (at most 3 tries: then the last one counts)."""
    here = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": f"{here}:{here}/dev"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # compiled once, as an installed package is
    for attempt in range(3):
        done = subprocess.run([*shlex.split(args.child_prefix), sys.executable, "-c", code,
                               json.dumps(spec)], capture_output=True, text=True, env=env,
                              timeout=600)
        if done.returncode != 0:
            raise SystemExit(f"{label} failed:\n{done.stderr[-2000:]}")
        res = json.loads(done.stdout.strip().splitlines()[-1])
        if res["cpu_wait"] <= args.max_wait or attempt == 2:
            return res
        print(f"    ({label}: waited for a CPU {res['cpu_wait']:.0%} of the time; again)",
              flush=True)
        time.sleep(2)
    raise AssertionError("unreachable")


def configurations(args: argparse.Namespace, bundle: Path, probe: dict) -> list:
    """(group, label, code, spec) per configuration; a group is a cache state and thread
    count, whose first configuration (stock llama.cpp) the others are compared with."""
    out = []
    for cache in args.caches:
        for threads in args.thread_list:
            group = f"{cache}, {threads} thr"
            base = {"bundle": str(bundle), "cache": cache, "threads": threads,
                    "wait_policy": args.wait_policy, "messages": args.messages}
            out.append((group, f"{group}: stock llama.cpp", STOCK,
                        {**base, "n_ctx": probe["n_ctx"], "prompt_ids": probe["prompt_ids"]}))
            for budget in args.budgets:
                out.append((group, f"{group}: edgemoe {budget}", EDGEMOE,
                            {**base, "budget": budget}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixture", default="qwen3moe-large")
    ap.add_argument("--bundle", default=None, help="a packed bundle instead of --fixture")
    ap.add_argument("--quant", default="Q8_0")
    ap.add_argument("--budgets", default="100%,25%")
    ap.add_argument("--thread-counts", default="default,1",
                    help="comma-separated; 'default' is --threads (the profile's count here)")
    ap.add_argument("--caches", default="cold,warm")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt", choices=("chat", "bench"), default="chat",
                    help="a short chat through the bundle's template, or edgemoe bench's "
                         "79-token plain prompt")
    ap.add_argument("--child-prefix", default="",
                    help="a command put before each measured child (e.g. 'nice -n -5')")
    ap.add_argument("--max-wait", type=float, default=0.1,
                    help="share of a measurement its threads may wait for a CPU others hold")
    add_thread_options(ap)
    args = ap.parse_args()
    print(f"bench_ttft: {thread_setup(args)}", flush=True)
    args.budgets = args.budgets.split(",")
    args.caches = args.caches.split(",")
    args.thread_list = list(dict.fromkeys(
        args.threads if t == "default" else int(t) for t in args.thread_counts.split(",")))
    packs = Path(".") if args.bundle else Path(tempfile.mkdtemp(prefix="edgemoe-bench-ttft-"))
    bundle = resolve_bundle(args, packs, quant=args.quant)  # packs: unused with --bundle
    args.messages = MESSAGES if args.prompt == "chat" else None
    probe = measure("probe", EDGEMOE, {"bundle": str(bundle), "cache": "warm", "budget": "100%",
                                       "threads": args.thread_list[0], "messages": args.messages,
                                       "wait_policy": args.wait_policy}, args)
    gguf_mb = (bundle / "model.gguf").stat().st_size / 1e6
    print(f"{bundle.name}: {gguf_mb:.0f} MB GGUF; a {len(probe['prompt_ids'])}-token "
          f"{args.prompt} prompt, n_ctx {probe['n_ctx']}; {args.rounds} paired rounds, each "
          f"run a fresh process", flush=True)
    configs = configurations(args, bundle, probe)
    runs: dict[str, list[dict]] = {label: [] for _, label, _, _ in configs}
    for r in range(args.rounds):
        order = configs[r % len(configs):] + configs[: r % len(configs)]
        for _, label, code, spec in order:
            res = measure(label, code, spec, args)
            runs[label].append(res)
            print(f"  round {r + 1}: {label}: TTFT {res['ttft_ms']:.1f} ms, load "
                  f"{res['load_ms']:.0f} ms (waited for a CPU {res['cpu_wait']:.0%})", flush=True)
        report(configs, runs, probe, r + 1)  # after every round: a cut-off run still reports


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(x[key] for x in rows)


def report(configs: list, runs: dict[str, list[dict]], probe: dict, rounds: int) -> None:
    runs = {label: rows[:rounds] for label, rows in runs.items()}
    tokens = {json.dumps(x["tokens"]) for rows in runs.values() for x in rows}
    assert tokens == {json.dumps(probe["tokens"])}, f"tokens differ: {tokens}"
    print(f"\nafter {rounds} round(s):\n{'configuration':<34} {'TTFT':>7} {'x stock':>7} "
          f"{'load':>6} {'load+TTFT':>9} {'load MB':>7} {'prompt MB':>9}  "
          + " ".join(f"{p[:-3]:>7}" for p in PARTS) + "  dense pending MB")
    stock: dict[str, list[dict]] = {}
    for group, label, code, _ in configs:
        rows = runs[label]
        if code is STOCK:
            stock[group] = rows
        ratio = statistics.median(x["ttft_ms"] / b["ttft_ms"]
                                  for x, b in zip(rows, stock[group], strict=True))
        parts, pending = [], "-"
        breakdowns = [x["breakdown"] for x in rows if x.get("breakdown")]
        for p in PARTS:
            got = [b[p] for b in breakdowns if b.get(p) is not None]
            parts.append(f"{statistics.median(got):7.1f}" if got else f"{'-':>7}")
        if breakdowns and breakdowns[0].get("dense_pending_bytes") is not None:
            pending = f"{statistics.median(b['dense_pending_bytes'] for b in breakdowns) / 1e6:.1f}"
        total = statistics.median(x["load_ms"] + x["ttft_ms"] for x in rows)
        print(f"{label:<34} {_median(rows, 'ttft_ms'):7.1f} {ratio:7.2f} "
              f"{_median(rows, 'load_ms'):6.0f} {total:9.0f} "
              f"{_median(rows, 'load_read') / 1e6:7.1f} {_median(rows, 'prompt_read') / 1e6:9.1f}"
              f"  " + " ".join(parts) + f"  {pending}")
    worst = max(x["cpu_wait"] for rows in runs.values() for x in rows)
    print(f"ms, medians over rounds; x stock: median of per-round TTFT / stock llama.cpp's in "
          f"the same cache state and thread count; TTFT = the prompt's step + first sample, load "
          f"excluded; breakdown in ms (runtime/generation/latency.py); a measurement's threads "
          f"waited for a CPU at most {worst:.0%} of its time; greedy tokens identical in every "
          f"configuration ({probe['tokens']}); edgemoe prefetch cold: {_prefetch(runs)}",
          flush=True)


def _prefetch(runs: dict[str, list[dict]]) -> str:
    seen = {x["prefetch"] for label, rows in runs.items() if label.startswith("cold")
            for x in rows if "prefetch" in x}
    return ", ".join(sorted(seen)) or "-"


if __name__ == "__main__":
    main()
