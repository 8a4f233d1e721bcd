"""Soak: thousands of mixed requests against `edgemoe serve` at a partial budget, watching the
server process for leaks.

Run:  .venv/bin/python bench/soak_server.py [--bundle DIR | --fixture qwen3moe-tiny]
          [--requests 10000] [--duration 1800] [--clients 16] [--budget 50%] [--json OUT]

One `edgemoe serve` process on a free loopback port (budget 50% by default, so experts page in
and out all the time) and `--clients` concurrent clients on one asyncio loop, each looping over a
seeded mix: chat and completions, streamed and not, streams abandoned after their first chunk
(a client disconnect mid-stream), malformed JSON, out-of-range parameters, unknown models,
bodies over the size limit, and GET /v1/models, /health, /metrics. It stops at `--requests` or
`--duration`, whichever comes first. Every answer is checked against the statuses its kind may
get (a 429 is allowed for generations: the queue is bounded; the client then backs off).

Every `--sample-every` seconds the server's VmRSS (anonymous and file-backed apart), threads,
open descriptors and mappings are read from /proc. The first `--warmup` share of the requests is
warm-up; "start" is the median of the samples in the next 10 % of the run, "end" the median of
the last 10 %, and drift is (end - start) / start (goal: within 5 %; threads and descriptors
may differ by the 1 and 2 a breathing pool moves by at any instant: `BREATH`). Printed: latency
percentiles per kind and overall, status counts, 429s, 5xx (goal 0), unexpected answers, and the
resource table. Exit status 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from common import free_port, launch_server, resolve_bundle, wait_healthy

MAX_BODY = 64 << 10  # the server's --max-body-bytes here: oversize bodies stay cheap to send
# kind -> (weight in the mix, statuses it may get)
MIX: dict[str, tuple[int, frozenset[int]]] = {
    "chat": (20, frozenset({200, 429})),
    "chat_stream": (14, frozenset({200, 429})),
    "completion": (20, frozenset({200, 429})),
    "completion_stream": (14, frozenset({200, 429})),
    "stream_disconnect": (8, frozenset({200, 429})),
    "malformed_json": (5, frozenset({400})),
    "bad_parameter": (5, frozenset({400})),
    "oversize_body": (3, frozenset({413})),
    "unknown_model": (4, frozenset({404})),
    "models": (4, frozenset({200})),
    "health": (2, frozenset({200})),
    "metrics": (1, frozenset({200})),
}
RESOURCES = ("rss", "rss_anon", "rss_file", "threads", "fds", "maps")


@dataclass
class Sample:
    t: float
    done: int
    steady: bool  # every client still busy (not warm-up's start nor the run's ramp-down)
    rss: int
    rss_anon: int
    rss_file: int
    threads: int
    fds: int
    maps: int


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter = field(default_factory=Counter)
    by_kind: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    unexpected: list[str] = field(default_factory=list)
    done: int = 0




def start_server(args: argparse.Namespace, bundle: Path, log_path: Path
                 ) -> tuple[subprocess.Popen[bytes], str, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "apps.cli.main", "serve", str(bundle), "--host", "127.0.0.1",
           "--port", str(port), "--budget", args.budget, "--n-ctx", str(args.n_ctx),
           "--threads", str(args.threads), "--max-queue", str(args.max_queue),
           "--max-body-bytes", str(MAX_BODY), "--log-level", "warning"]
    proc = launch_server(cmd, log_path)
    base = f"http://127.0.0.1:{port}"
    return proc, base, wait_healthy(proc, base, log_path)


def sample(pid: int, done: int, steady: bool) -> Sample:
    status: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads"):
            status[key] = int(value.split()[0])
    maps = Path(f"/proc/{pid}/maps").read_text().count("\n")
    # (threads are counted from /proc/PID/status; thread_names() says which they are)
    return Sample(time.monotonic(), done, steady, status["VmRSS"] << 10, status["RssAnon"] << 10,
                  (status["RssFile"] + status.get("RssShmem", 0)) << 10, status["Threads"],
                  len(os.listdir(f"/proc/{pid}/fd")), maps)


def thread_names(pid: int) -> dict[str, int]:
    """The server's threads by name (comm), to tell a leak from a pool that breathes."""
    names: Counter = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names[(task / "comm").read_text().strip()] += 1
        except OSError:
            pass
    return dict(sorted(names.items()))


# --- one request of each kind --------------------------------------------------------------------
async def _stream(c: httpx.AsyncClient, path: str, body: dict, abandon: bool) -> int:
    async with c.stream("POST", path, json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return r.status_code
        done = False
        async for line in r.aiter_lines():
            if abandon and line.startswith("data: "):
                return 200  # leaving the block drops the connection mid-stream
            if line == "data: [DONE]":
                done = True
            elif line.startswith('data: {"error"'):
                return 599  # an error event after a 200: counted as a server failure
        return 200 if done else 598  # a stream that stopped without [DONE]


async def one(c: httpx.AsyncClient, kind: str, model: str, rng: random.Random,
              max_tokens: int) -> tuple[int, float]:
    """Send one request of `kind`; (status, Retry-After seconds or 0)."""
    n = rng.randint(1, max_tokens)
    chat = {"model": model, "max_tokens": n,
            "messages": [{"role": "user", "content": f"Say {rng.randint(0, 999)}."}]}
    comp = {"model": model, "max_tokens": n, "prompt": f"Count {rng.randint(0, 999)}:"}
    if kind in ("chat", "completion"):
        r = await c.post("/v1/chat/completions" if kind == "chat" else "/v1/completions",
                         json=chat if kind == "chat" else comp)
        return r.status_code, float(r.headers.get("retry-after", 0))
    if kind in ("chat_stream", "completion_stream", "stream_disconnect"):
        path = "/v1/completions" if kind == "completion_stream" else "/v1/chat/completions"
        body = {**(comp if kind == "completion_stream" else chat), "stream": True}
        if kind == "stream_disconnect":
            body["max_tokens"] = max_tokens * 8  # long enough to still run when abandoned
        return await _stream(c, path, body, abandon=kind == "stream_disconnect"), 0.0
    if kind == "malformed_json":
        r = await c.post("/v1/chat/completions", content=b'{"model": "x", "messages": [',
                         headers={"Content-Type": "application/json"})
    elif kind == "bad_parameter":
        r = await c.post("/v1/completions", json={**comp, "temperature": 7})
    elif kind == "oversize_body":
        r = await c.post("/v1/completions", json={**comp, "prompt": "a" * MAX_BODY})
    elif kind == "unknown_model":
        r = await c.post("/v1/completions", json={**comp, "model": "no-such-model"})
    else:
        r = await c.get({"models": "/v1/models", "health": "/health", "metrics": "/metrics"}[kind])
    return r.status_code, 0.0


async def client(i: int, base: str, model: str, args: argparse.Namespace, tally: Tally,
                 budget: list[int], stop_at: float) -> None:
    rng = random.Random(args.seed * 1000 + i)
    kinds, weights = list(MIX), [w for w, _ in MIX.values()]
    async with httpx.AsyncClient(base_url=base, timeout=args.timeout) as c:
        while budget[0] > 0 and time.monotonic() < stop_at:
            budget[0] -= 1
            kind = rng.choices(kinds, weights)[0]
            t0 = time.perf_counter()
            try:
                status, retry_after = await one(c, kind, model, rng, args.max_tokens)
            except httpx.HTTPError as e:
                status, retry_after = 597, 0.0
                tally.unexpected.append(f"{kind}: {type(e).__name__}: {e}")
            tally.latencies[kind].append(time.perf_counter() - t0)
            tally.statuses[status] += 1
            tally.by_kind[kind][status] += 1
            tally.done += 1
            if status not in MIX[kind][1] and status < 597:
                tally.unexpected.append(f"{kind}: status {status}")
            if status == 429:
                await asyncio.sleep(min(retry_after, 0.25))


def sampler(pid: int, tally: Tally, every: float, stop: threading.Event,
            steady: Callable[[], bool], out: list[Sample]) -> None:
    while True:
        try:
            out.append(sample(pid, tally.done, steady()))
        except (OSError, KeyError):
            return
        if stop.wait(every):
            return


# --- report --------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# Counts that a pool breathing by a worker (a thread, its socket) moves by at any instant: a
# difference this small between the two windows is not drift. A server of 7 threads that
# happens to be sampled with one more at the end would otherwise read +14 %.
BREATH = {"threads": 1, "fds": 2}


def drift(samples: list[Sample], total: int, warmup: float) -> dict[str, dict[str, float]]:
    after = [s for s in samples if s.steady and s.done >= warmup * total] or samples
    k = max(1, len(after) // 10)
    first, last = after[:k], after[-k:]
    out: dict[str, dict[str, float]] = {}
    for name in RESOURCES:
        start = statistics.median(getattr(s, name) for s in first)
        end = statistics.median(getattr(s, name) for s in last)
        peak = max(getattr(s, name) for s in after)
        moved = end - start
        beyond = max(0.0, abs(moved) - BREATH.get(name, 0))
        out[name] = {"start": start, "end": end, "max": peak,
                     "drift": (beyond if moved >= 0 else -beyond) / start if start else 0.0}
    return out


def report(tally: Tally, samples: list[Sample], wall: float, args: argparse.Namespace,
           exit_code: int | None, log_problems: list[str]) -> dict:
    everything = [x for v in tally.latencies.values() for x in v]
    fivexx = sum(n for s, n in tally.statuses.items() if s >= 500)
    res = drift(samples, tally.done, args.warmup)
    flat = all(abs(res[n]["drift"]) <= args.flat for n in ("rss", "rss_anon", "threads", "fds"))
    summary = {
        "requests": tally.done, "wall_s": round(wall, 1),
        "requests_per_s": round(tally.done / wall, 1) if wall else 0.0,
        "p50_ms": 1000 * pct(everything, 0.5), "p95_ms": 1000 * pct(everything, 0.95),
        "p99_ms": 1000 * pct(everything, 0.99),
        "status_counts": {str(k): v for k, v in sorted(tally.statuses.items())},
        "count_429": tally.statuses.get(429, 0), "count_5xx": fivexx,
        "unexpected": len(tally.unexpected), "unexpected_examples": tally.unexpected[:10],
        "per_kind": {k: {"n": len(v), "p50_ms": 1000 * pct(v, 0.5),
                         "p95_ms": 1000 * pct(v, 0.95), "p99_ms": 1000 * pct(v, 0.99),
                         "statuses": {str(s): n for s, n in sorted(tally.by_kind[k].items())}}
                     for k, v in sorted(tally.latencies.items())},
        "resources": res, "flat": flat, "samples": [asdict(s) for s in samples],
        "server_exit_code": exit_code, "server_log_problems": log_problems,
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
    }
    summary["ok"] = (fivexx == 0 and not tally.unexpected and flat and not log_problems)
    return summary


def print_report(s: dict) -> None:
    print(f"{s['requests']} requests in {s['wall_s']} s ({s['requests_per_s']}/s), "
          f"{s['settings']['clients']} clients, budget {s['settings']['budget']}")
    print(f"latency ms: p50 {s['p50_ms']:.1f}  p95 {s['p95_ms']:.1f}  p99 {s['p99_ms']:.1f}")
    print(f"statuses: {s['status_counts']}  429s: {s['count_429']}  5xx: {s['count_5xx']}  "
          f"unexpected: {s['unexpected']}")
    print(f"{'kind':<18}{'n':>7}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}  statuses")
    for kind, k in s["per_kind"].items():
        print(f"{kind:<18}{k['n']:>7}{k['p50_ms']:>9.1f}{k['p95_ms']:>9.1f}{k['p99_ms']:>9.1f}"
              f"  {k['statuses']}")
    print(f"{'resource':<10}{'start':>14}{'end':>14}{'max':>14}{'drift':>9}")
    for name, r in s["resources"].items():
        print(f"{name:<10}{r['start']:>14,.0f}{r['end']:>14,.0f}{r['max']:>14,.0f}"
              f"{100 * r['drift']:>8.1f}%")
    print("threads early:", s["threads_by_name"]["early"])
    print("threads at end:", s["threads_by_name"]["end"])
    for line in s["unexpected_examples"] + s["server_log_problems"]:
        print("  !", line)
    print("OK" if s["ok"] else "GOALS MISSED")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle")
    p.add_argument("--fixture", default="qwen3moe-tiny")
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--duration", type=float, default=1800.0, help="Seconds at most.")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--budget", default="50%")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--max-queue", type=int, default=8)
    p.add_argument("--n-ctx", type=int, default=512)
    # One engine thread: on a small, shared CPU the routing probe's per-node synchronisation
    # makes 2 threads far slower than 1 (measured on the tiny model: 16 vs 320 tokens/s).
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--sample-every", type=float, default=1.0)
    p.add_argument("--warmup", type=float, default=0.2, help="Share of requests for warm-up.")
    p.add_argument("--flat", type=float, default=0.05, help="Allowed drift after warm-up.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="Also write the report (with every sample) here.")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        bundle = resolve_bundle(args, Path(tmp))
        log_path = Path(tmp) / "server.log"
        proc, base, model = start_server(args, bundle, log_path)
        tally, samples, stop = Tally(), [], threading.Event()
        t0 = time.monotonic()
        budget = [args.requests]

        def steady() -> bool:
            return budget[0] > 0 and time.monotonic() < t0 + args.duration

        watch = threading.Thread(target=sampler, args=(proc.pid, tally, args.sample_every,
                                                       stop, steady, samples), daemon=True)
        watch.start()

        async def run() -> None:
            stop_at = t0 + args.duration
            await asyncio.gather(*(client(i, base, model, args, tally, budget, stop_at)
                                   for i in range(args.clients)))

        names_start: dict[str, int] = {}

        async def run_and_look() -> None:
            nonlocal names_start
            task = asyncio.ensure_future(run())
            await asyncio.sleep(min(10.0, args.duration / 4))
            names_start = thread_names(proc.pid)
            await task

        try:
            asyncio.run(run_and_look())
            names_end = thread_names(proc.pid)
        finally:
            wall = time.monotonic() - t0
            stop.set()
            watch.join(10)
            proc.send_signal(signal.SIGTERM)
            try:
                code: int | None = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = None
        log = log_path.read_text(errors="replace")
        problems = [line for line in log.splitlines()
                    if any(w in line for w in ("Traceback", "ERROR", "Fatal Python error",
                                               "CancelledError"))][:10]
        summary = report(tally, samples, wall, args, code, problems)
        summary["threads_by_name"] = {"early": names_start, "end": names_end}
    print_report(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
