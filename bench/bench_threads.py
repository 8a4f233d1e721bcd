"""How engine threads wait at llama.cpp's barriers: each candidate against stock llama.cpp, quiet
and with one core busy, at 1 thread and at every core the profile allows.

Run:  .venv/bin/python bench/bench_threads.py [--fixture qwen3moe-trained] [--threads 1,2]
      [--rounds 3] [--candidates spin,passive,spin-10k,active,adaptive]

llama.cpp's CPU backend sends every thread through a barrier after each graph node, hundreds of
times per token, and how a thread waits there decides decode speed: spinning wins when every
thread has a core of its own, sleeping wins when a neighbour holds one. OpenMP reads its wait
policy once, when the library loads, so every measurement is a fresh process. Each round runs
stock llama.cpp (`llama_cpp.Llama`, OpenMP's own default, the model fully in RAM) and every
candidate on the same bundle, in an order that rotates from round to round; a busy round runs the
same with a busy-loop process beside it. A measurement during which other processes kept more than
`--max-background` of a core busy is taken again, so "quiet" means quiet on a shared machine.
Printed: decode and prefill tok/s (medians) and the median of the per-round ratios candidate /
stock at the same thread count and load.

`--paired` measures the default policy more finely: the default waits as stock llama.cpp's
threads do (GNU OpenMP's own), so both engines can share one process and one thread team, and
decode alternates between them in blocks of 16 tokens (`--blocks` pairs, order swapped every
pair), which cancels the drift of a shared machine that separate processes cannot. edgemoe
loads first, so with `--cold` (the bundle dropped from the page cache before each process) it
reads the file its own way, as on a device's first run.
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

from common import REPO  # noqa: F401  (bench/ on the path, like the other scripts)

PROMPT_CHARS = 1500
DECODE = 64

# One measurement in a fresh process: mode, bundle, threads, wait policy ("" = edgemoe's
# default), prompt characters, tokens to decode, the neighbour's pid (0: none). It also reports
# how much of a core other processes kept busy while it was timing itself.
CHILD = """
import json, os, resource, sys, time
import numpy as np
mode, bundle, threads, policy = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
chars, n, hog = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
tick = os.sysconf("SC_CLK_TCK")
def busy():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (sum(f) - f[3] - f[4]) / tick
def hog_cpu():
    if not hog:
        return 0.0
    f = open(f"/proc/{hog}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick
def own():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
def window():
    return busy(), own(), hog_cpu(), time.monotonic()
def background(w0):
    b, o, h, t = window()
    return (b - w0[0] - (o - w0[1]) - (h - w0[2])) / (t - w0[3])
from edgemoe_fixtures.corpus import heldout_text
prompt = heldout_text()[:chars]
if mode == "stock":
    import llama_cpp
    llm = llama_cpp.Llama(bundle + "/model.gguf", n_ctx=1024, n_batch=512, n_threads=threads,
                          n_threads_batch=threads, use_mmap=False, verbose=False)
    ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    llm.eval(ids[:8]); llm.reset()
    w0 = window()
    t0 = time.perf_counter(); llm.eval(ids); prefill = len(ids) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(n):
        logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))
        llm.eval([int(np.argmax(logits))])
    decode = n / (time.perf_counter() - t0)
    ran = "stock"
else:
    import runtime
    kw = {"wait_policy": policy} if policy else {}
    with runtime.load(bundle, budget="100%", n_ctx=1024, threads=threads, **kw) as m:
        m.generate(prompt[:200], max_tokens=4)
        w0 = window()
        r = m.generate(prompt, max_tokens=n + 1)
        ran = m.stats().wait_policy
    prefill, decode = r.timings["prefill_tok_s"], r.timings["decode_tok_s"]
print(json.dumps({"prefill": prefill, "decode": decode, "policy": ran,
                  "background": background(w0)}))
"""


# Both engines in one process, decode alternating in blocks: threads, blocks, block tokens, the
# neighbour's pid (0: none). edgemoe loads first (at a full budget it reads the file in 2 MiB
# folios, runtime/backends/huge_pages.py); stock holds the model in RAM as above.
PAIRED = """
import json, sys, time
import numpy as np
bundle, threads, blocks, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
fa = {"auto": None, "on": True, "off": False}[sys.argv[6]]
stock_fa = sys.argv[7] == "on"  # llama-cpp-python's default is off; llama.cpp's own tools: auto
import runtime, llama_cpp
from edgemoe_fixtures.corpus import heldout_text
prompt = heldout_text()[:600]
m = runtime.load(bundle, budget="100%", n_ctx=4096, threads=threads, flash_attn=fa)
ids = m.tokenize(prompt)
llm = llama_cpp.Llama(bundle + "/model.gguf", n_ctx=4096, n_batch=512, n_threads=threads,
                      n_threads_batch=threads, use_mmap=False, flash_attn=stock_fa, verbose=False)
def stock_step(tok):
    llm.eval([tok])
    logits = llm._ctx.get_logits_ith(-1)
    return int(np.argmax(np.ctypeslib.as_array(logits, shape=(llm.n_vocab(),))))
def edge_step(tok):
    return int(np.argmax(m.step([tok])))
llm.eval(llm.tokenize(prompt.encode(), add_bos=True, special=True))
tok = {"stock": stock_step(int(ids[-1])), "edgemoe": int(np.argmax(m.step(ids)))}
step = {"stock": stock_step, "edgemoe": edge_step}
times = {"stock": [], "edgemoe": []}
for b in range(blocks):
    for name in (("stock", "edgemoe") if b % 2 == 0 else ("edgemoe", "stock")):
        t, f = tok[name], step[name]
        t0 = time.perf_counter()
        for _ in range(n):
            t = f(t)
        times[name].append(n / (time.perf_counter() - t0))
        tok[name] = t
s = m.stats()
print(json.dumps({"times": times, "policy": s.wait_policy, "huge": s.huge_mapped_bytes,
                  "mapped": s.mapping_rss_bytes}))
"""


def run_paired(bundle: Path, threads: int, blocks: int, cold: bool,
               neighbour: Neighbour | None, prefix: tuple[str, ...], flash_attn: str,
               stock_flash_attn: str = "off") -> dict:
    """One process stepping both engines in turn (see PAIRED)."""
    if cold:
        from runtime.experts.residency import drop_file_cache

        drop_file_cache(bundle / "model.gguf")
    out = subprocess.run(
        [*prefix, sys.executable, "-c", PAIRED, str(bundle), str(threads), str(blocks), "16",
         str(neighbour.proc.pid if neighbour else 0), flash_attn, stock_flash_attn],
        capture_output=True, text=True, timeout=1800, env=os.environ.copy(),
    )
    if out.returncode:
        raise SystemExit(f"paired run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def paired(bundle: Path, threads: list[int], loads: list[str], blocks: int, cold: bool,
           prefix: tuple[str, ...], flash_attn: str = "auto",
           stock_flash_attn: str = "off") -> None:
    """The default policy against stock llama.cpp, in one process per (load, threads)."""
    print(f"{'load':5} {'thr':>3} {'stock tok/s':>11} {'edgemoe':>8} {'ratio':>6} "
          f"{'q1-q3':>11}  policy, huge-mapped share of the mapping", flush=True)
    for load in loads:
        for t in threads:
            if load == "busy":
                with Neighbour() as hog:
                    res = run_paired(bundle, t, blocks, cold, hog, prefix, flash_attn,
                                     stock_flash_attn)
            else:
                res = run_paired(bundle, t, blocks, cold, None, prefix, flash_attn,
                                 stock_flash_attn)
            st, ed = res["times"]["stock"], res["times"]["edgemoe"]
            ratios = sorted(e / s for e, s in zip(ed, st, strict=True))
            q = statistics.quantiles(ratios, n=4)
            share = res["huge"] / res["mapped"] if res["huge"] is not None and res["mapped"] else 0
            print(f"{load:5} {t:3} {statistics.median(st):11.1f} {statistics.median(ed):8.1f} "
                  f"{statistics.median(ratios):6.3f} {q[0]:5.3f}-{q[2]:5.3f}  {res['policy']}, "
                  f"{share:.2f}", flush=True)


def run_child(mode: str, bundle: Path, threads: int, policy: str, max_background: float,
              neighbour: Neighbour | None = None, prefix: tuple[str, ...] = ()) -> dict:
    """One measurement; repeated (up to 30 times) while other processes of this shared machine
    kept more than `max_background` of a core busy during it, so "quiet" means quiet."""
    for _ in range(30):
        out = subprocess.run(
            [*prefix, sys.executable, "-c", CHILD, mode, str(bundle), str(threads), policy,
             str(PROMPT_CHARS), str(DECODE), str(neighbour.proc.pid if neighbour else 0)],
            capture_output=True, text=True, timeout=900, env=os.environ.copy(),
        )
        if out.returncode:
            raise SystemExit(f"{mode} {policy} failed:\n{out.stderr[-3000:]}")
        res = json.loads(out.stdout.strip().splitlines()[-1])
        if res["background"] <= max_background:
            return res
        print(f"    (others kept {res['background']:.2f} of a core busy; measuring again)",
              flush=True)
        time.sleep(10)
    raise SystemExit("the machine never went quiet enough; raise --max-background")


class Neighbour:
    """A busy loop on one core for the length of a `with` block (what a camera's video encoder
    or a second app does to a shared CPU)."""

    def __enter__(self) -> Neighbour:
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


def measure(bundle: Path, threads: list[int], candidates: list[str], rounds: int,
            loads: list[str], max_background: float, prefix: tuple[str, ...]) -> dict:
    """{(load, threads, name): [result per round]}; name "stock" is the baseline."""
    results: dict[tuple[str, int, str], list[dict]] = {}
    names = ["stock", *candidates]
    for r in range(rounds):
        for load in loads:
            for t in threads:
                order = names[r % len(names):] + names[: r % len(names)]
                for name in order:
                    mode = "stock" if name == "stock" else "edgemoe"
                    policy = "" if name == "stock" else name
                    if load == "busy":
                        with Neighbour() as hog:
                            res = run_child(mode, bundle, t, policy, max_background, hog, prefix)
                    else:
                        res = run_child(mode, bundle, t, policy, max_background, prefix=prefix)
                    results.setdefault((load, t, name), []).append(res)
                    print(f"  round {r + 1} {load:5} {t} thr {name:10} decode {res['decode']:7.1f}"
                          f"  prefill {res['prefill']:7.1f}  ({res['policy']}; background "
                          f"{res['background']:.2f} core)", flush=True)
    return results


def report(results: dict, threads: list[int], candidates: list[str], loads: list[str]) -> None:
    print("\nmedian tok/s, and median of per-round ratios to stock llama.cpp "
          "(same threads, same load)")
    print(f"{'load':5} {'thr':>3} {'candidate':10} {'decode':>8} {'ratio':>6} "
          f"{'prefill':>8} {'ratio':>6}  ran as")
    for load in loads:
        for t in threads:
            base = results[(load, t, "stock")]
            for name in ["stock", *candidates]:
                rows = results[(load, t, name)]
                cells = []
                for kind in ("decode", "prefill"):
                    med = statistics.median(x[kind] for x in rows)
                    ratio = statistics.median(x[kind] / b[kind] for x, b in zip(rows, base,
                                                                                 strict=True))
                    cells.append(f"{med:8.1f} {ratio:6.2f}")
                print(f"{load:5} {t:3} {name:10} {' '.join(cells)}  {rows[-1]['policy']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fixture", default="qwen3moe-trained")
    ap.add_argument("--bundle", help="an existing bundle (default: pack --fixture at --quant)")
    ap.add_argument("--quant", default="Q8_0")
    ap.add_argument("--threads", default=f"1,{min(2, os.cpu_count() or 1)}")
    ap.add_argument("--candidates", default="spin,passive,spin-10k,active")
    ap.add_argument("--loads", default="quiet,busy")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-background", type=float, default=0.1,
                    help="cores other processes may keep busy during a measurement")
    ap.add_argument("--paired", action="store_true",
                    help="the default policy against stock in one process, blocks alternating")
    ap.add_argument("--blocks", type=int, default=40, help="--paired: 16-token block pairs")
    ap.add_argument("--cold", action="store_true",
                    help="--paired: drop the bundle from the page cache before each process")
    ap.add_argument("--flash-attn", default="auto", choices=("auto", "on", "off"),
                    help="--paired: edgemoe's flash attention (default: edgemoe's, auto = on)")
    ap.add_argument("--stock-flash-attn", default="off", choices=("on", "off"),
                    help="--paired: stock's flash attention (default: llama-cpp-python's, off; "
                         "llama.cpp's own tools default to auto, which is on for CPUs)")
    ap.add_argument("--child-prefix", default="",
                    help="a command put before each measured child (e.g. 'nice -n -5')")
    args = ap.parse_args()
    threads = sorted({int(x) for x in args.threads.split(",")})
    candidates = [c for c in args.candidates.split(",") if c]
    loads = [x for x in args.loads.split(",") if x]
    if args.bundle:
        bundle = Path(args.bundle)
    else:
        from edgemoe_fixtures import cached_fixture
        from packager.api import PackOptions, pack

        bundle = Path(tempfile.mkdtemp(prefix="edgemoe-threads-")) / "bundle"
        pack(PackOptions(src=str(cached_fixture(args.fixture)), out_dir=bundle, quant=args.quant,
                         profile="laptop-16gb", reference=False))
    what = (f"default wait policy ({os.environ.get('OMP_WAIT_POLICY') or 'spin'}) against stock "
            f"in one process, {args.blocks} block pairs{', cold' if args.cold else ''}, "
            f"flash attention: edgemoe {args.flash_attn}, stock {args.stock_flash_attn}"
            if args.paired else f"candidates {candidates}, {args.rounds} rounds, decode "
            f"{DECODE} tokens after a {PROMPT_CHARS}-char prompt")
    print(f"bench_threads: {args.fixture if not args.bundle else bundle} {args.quant}, "
          f"{os.cpu_count()} CPUs, threads {threads}, {what}", flush=True)
    if args.paired:
        paired(bundle, threads, loads, args.blocks, args.cold,
               tuple(shlex.split(args.child_prefix)), args.flash_attn, args.stock_flash_attn)
        return
    results = measure(bundle, threads, candidates, args.rounds, loads, args.max_background,
                      tuple(shlex.split(args.child_prefix)))
    report(results, threads, candidates, loads)


if __name__ == "__main__":
    main()
