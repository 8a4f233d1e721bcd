"""A budget changed while loaded: how fast memory follows a cut, and a cgroup cut with the
pressure follower against the kernel's own reclaim.

Run (part 2 as root, with the cgroup v1 memory controller or v2):
    .venv/bin/python bench/bench_budget.py [--fixture qwen3moe-medium] [--rounds 3]

Part 1, settle: the bundle loaded at `--budget` cold, `--decode` greedy tokens; after `--cut-at`
tokens `Model.set_budget` cuts the expert capacity by 30 % from another thread, as POST
/admin/budget does. Per token the model file mapping's RSS is read (/proc/self/smaps); printed:
tokens and milliseconds from the call until the mapping fits the new budget, RSS before/after,
experts released, decode tok/s before and after, tokens identical to a run without the cut.

Part 2, a cgroup squeezed: each run is a fresh process (cold) in a new memory cgroup; after
`--cut-at` tokens the limit is set just above what it holds and another tenant's anonymous
memory arrives over the next second (`Squeeze`: 16 MiB + 30 % of the model's resident expert
bytes; tokens are paced 5 ms apart, a kiosk streaming to a screen), so memory must come back
from the model (a limit cut below what a process holds is refused with EBUSY while its pages
are in use, so the squeeze comes from a neighbour, as a kiosk starting a video). `follow`: the
same PressureFollower `serve --follow-pressure` runs (every 0.1 s here) shrinks the budget by
expert heat; `kernel`: the budget stays and the kernel reclaims pages by its LRU. Printed per
mode: hit rate, storage read per token and decode tok/s after the squeeze, budget changes, OOM
kills (paired rounds, order alternating).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_memory_cap import MemoryCgroup, cgroup_problem
from common import REPO, add_thread_options, resolve_bundle, thread_setup

PROMPT = "import os\nimport sys\n\ndef main(argv):\n    "


def mapping_rss(name: str = "model.gguf") -> int:
    total, ours = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(maxsplit=1)[0]
        if not head.endswith(":"):
            ours = line.rstrip().endswith(name)
        elif ours and head == "Rss:":
            total += int(line.split()[1]) * 1024
    return total


def settle(bundle: Path, budget: str, n: int, cut_at: int, threads: int) -> dict:
    import runtime

    with runtime.load(bundle, budget=budget, n_ctx=1024, threads=threads) as m:
        ref = m.generate(PROMPT, max_tokens=n, temperature=0.0).tokens
    with runtime.load(bundle, budget=budget, n_ctx=1024, threads=threads, cold=True) as m:
        b = m.budget
        target = b.dense_bytes + b.kv_bytes + int(0.7 * b.expert_capacity_bytes)
        fit = b.dense_bytes + int(0.7 * b.expert_capacity_bytes)
        got, times, rss, called = [], [], [], None
        for ev in m.stream_events(PROMPT, max_tokens=n, temperature=0.0):
            if ev.token is None:
                continue
            got.append(ev.token)
            times.append(time.perf_counter())
            rss.append(mapping_rss())
            if len(got) == cut_at:
                called = time.perf_counter()
                t = threading.Thread(target=m.set_budget, args=(target,))
                t.start()
                t.join()
        s = m.stats()
    from contract.gguf_layout import open_reader

    header = int(open_reader(bundle / "model.gguf").data_offset)
    # Fits: dense + new capacity + the header + 512 KiB of pages shared at tensor edges.
    after = [i for i in range(cut_at, len(rss)) if rss[i] <= fit + header + 512 * 1024]
    first = after[0] if after else None
    change = s.budget_history[0]
    return {
        "identical": got == ref, "rss_before": rss[cut_at - 1], "rss_after": rss[-1],
        "fit": fit, "released": change.released,
        "settle_tokens": (first - cut_at + 1) if first is not None else None,
        "settle_ms": 1000 * (times[first] - called) if first is not None else None,
        "decode_before": (cut_at - 1) / (times[cut_at - 1] - times[0]),
        "decode_after": (len(times) - cut_at - 1) / (times[-1] - times[cut_at]),
    }


# --- part 2: a cgroup limit cut -----------------------------------------------------------------
def cgroup_child(spec: dict) -> dict:
    import runtime
    from runtime.experts.pressure import PressureFollower

    Path(spec["procs"]).write_text(str(os.getpid()))
    with runtime.load(spec["bundle"], budget=spec["budget"], n_ctx=1024,
                      threads=spec["threads"], cold=True) as m:
        follower = None
        if spec["follow"]:
            b = m.budget
            follower = PressureFollower(lambda: m, lambda _m: b.expert_bytes_total // 8,
                                        interval_s=0.1).start()
        times, before, read0, squeeze = [], None, 0, None
        for ev in m.stream_events(PROMPT, max_tokens=spec["n"], temperature=0.0):
            if ev.token is None:
                continue
            times.append(time.perf_counter())
            if len(times) == spec["cut_at"]:
                before, read0 = m.stats(), _read_bytes()
                squeeze = Squeeze(spec, before.resident_expert_bytes)
            if squeeze is not None:
                squeeze.step()
            time.sleep(0.005)
        s = m.stats()
        if follower is not None:
            follower.stop()
    k = spec["cut_at"]
    hits, misses = s.hits - before.hits, s.misses - before.misses
    return {"hit_rate": hits / max(1, hits + misses),
            "read_kib_per_token": (_read_bytes() - read0) / 1024 / (len(times) - k),
            "decode": (len(times) - k - 1) / (times[-1] - times[k]),
            "changes": s.budget_changes, "capacity": s.expert_capacity_bytes,
            "cut_share": squeeze.size if squeeze is not None else 0}


class Squeeze:
    """Another tenant arrives in the cgroup: the limit is set 16 MiB above what the cgroup
    holds now, then, over RAMP_S seconds (checked at each token), anonymous memory is allocated
    and touched: those 16 MiB plus `spec["squeeze"]` of the model's resident expert bytes, so
    memory must come back from the model while it decodes. The kernel can take back only
    unlocked file pages (its pinned experts are mlocked); the pressure follower can release and
    unpin experts. `size` says how much in all."""

    RAMP_S = 1.0  # the tenant's memory arrives over this long (a page touched at a time)

    def __init__(self, spec: dict, resident_expert_bytes: int) -> None:
        slack = 16 << 20
        Path(spec["limit"]).write_text(str(int(Path(spec["usage"]).read_text()) + slack))
        self.size = slack + int(spec.get("squeeze", 0.3) * resident_expert_bytes)
        self.held: list[bytearray] = []
        self._t0, self._got = time.perf_counter(), 0

    def step(self) -> None:
        """Allocate what the ramp has reached by now."""
        want = int(self.size * min(1.0, (time.perf_counter() - self._t0) / self.RAMP_S))
        if want > self._got:
            piece = bytearray(want - self._got)
            for i in range(0, len(piece), 4096):
                piece[i] = 1
            self.held.append(piece)
            self._got = want


def _read_bytes() -> int:
    """Bytes this process made storage read (page faults included): /proc/self/io."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def run_cgroup(bundle: Path, args: argparse.Namespace, follow: bool) -> dict:
    from runtime.experts.residency import drop_file_cache

    # Page cache is charged to the cgroup that first read it: dropped, the model's pages are
    # read again from inside the new group and count against its limit.
    drop_file_cache(bundle / "model.gguf")
    group = MemoryCgroup(8 << 30)
    try:
        v1 = group.v1
        spec = {"bundle": str(bundle), "budget": args.budget, "threads": args.threads,
                "n": args.decode, "cut_at": args.cut_at, "follow": follow,
                "squeeze": args.squeeze,
                "procs": str(group.path / "cgroup.procs"),
                "limit": str(group.path / ("memory.limit_in_bytes" if v1 else "memory.max")),
                "stat": str(group.path / "memory.stat"),
                "usage": str(group.path / ("memory.usage_in_bytes" if v1 else "memory.current"))}
        r = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], cwd=REPO,
                           capture_output=True, text=True, timeout=900,
                           env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'bench'}"})
        report = group.report()
    finally:
        group.close()
    if r.returncode != 0:
        return {"failed": r.returncode, "oom_kills": report.get("oom_kills"),
                "stderr": r.stderr[-300:]}
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "oom_kills": report["oom_kills"]}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(cgroup_child(json.loads(sys.argv[2]))))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixture", default="qwen3moe-medium")
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--quant", default="Q8_0")
    ap.add_argument("--budget", default="50%")
    ap.add_argument("--decode", type=int, default=96)
    ap.add_argument("--cut-at", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--squeeze", type=float, default=0.3,
                    help="share of the model's resident expert bytes another tenant takes")
    ap.add_argument("--no-settle", action="store_true", help="only the cgroup part")
    add_thread_options(ap)
    args = ap.parse_args()
    print(f"bench_budget: {thread_setup(args)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="edgemoe-bench-") as tmp:
        bundle = resolve_bundle(args, Path(tmp), args.quant)
        print(f"{bundle.name} at {args.budget}, {args.decode} tokens, cut after {args.cut_at}")
        runs = [] if args.no_settle else [
            settle(bundle, args.budget, args.decode, args.cut_at, args.threads)
            for _ in range(args.rounds)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]
               if all(isinstance(r[k], int | float) for r in runs)} if runs else {}
        if runs:
            print(f"30 % cut: settles in {med.get('settle_tokens')} token(s), "
                  f"{med.get('settle_ms', float('nan')):.1f} ms after the call; mapping RSS "
                  f"{med['rss_before'] / 2**20:.1f} -> {med['rss_after'] / 2**20:.1f} MiB (dense + "
                  f"new capacity {med['fit'] / 2**20:.1f} MiB), {med['released']:.0f} experts "
                  f"released; decode {med['decode_before']:.1f} -> "
                  f"{med['decode_after']:.1f} tok/s; "
                  f"tokens identical: {all(r['identical'] for r in runs)}", flush=True)
        problem = cgroup_problem()
        if problem:
            print(f"cgroup part skipped: {problem}")
            return
        out: dict[str, list[dict]] = {"kernel": [], "follow": []}
        for i in range(args.rounds):
            for mode in (("kernel", "follow") if i % 2 == 0 else ("follow", "kernel")):
                out[mode].append(run_cgroup(bundle, args, mode == "follow"))
        print(f"{'after a cgroup cut':>20} {'hit rate':>9} {'read KiB/token':>15} "
              f"{'decode tok/s':>13} {'budget changes':>15} {'OOM kills':>10} {'cut':>5}")
        for mode, rs in out.items():
            ok = [r for r in rs if "failed" not in r]
            if not ok:
                print(f"{mode:>20} failed: {rs[0]}")
                continue
            print(f"{mode:>20} {statistics.median(r['hit_rate'] for r in ok):9.3f} "
                  f"{statistics.median(r['read_kib_per_token'] for r in ok):15.1f} "
                  f"{statistics.median(r['decode'] for r in ok):13.1f} "
                  f"{statistics.median(r['changes'] for r in ok):15.0f} "
                  f"{sum(r['oom_kills'] or 0 for r in rs):10d} "
                  f"{statistics.median(r['cut_share'] for r in ok) / 2**20:11.1f}")
        ratio = [f["decode"] / k["decode"] for f, k in zip(out["follow"], out["kernel"],
                                                           strict=True)
                 if "failed" not in f and "failed" not in k]
        if ratio:
            print(f"decode after the cut, follow / kernel: x{statistics.median(ratio):.2f}")


if __name__ == "__main__":
    main()
