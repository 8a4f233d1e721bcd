"""The SIGBUS window that remains: expert pages the engine touches that are not in memory.

Run (the capped rows as root, cgroup v1 memory controller or v2):
    .venv/bin/python bench/bench_sigbus_window.py [--fixture qwen3moe-medium] [--budget 25%]

edgemoe brings an expert's pages in with pread / MADV_POPULATE_READ when the pager admits it,
so a storage fault there is an error. What it cannot cover is a page dropped between that and
the engine's touch: then llama.cpp's own fault reads storage, and a read error or a truncated
file is SIGBUS. This measures how often that happens. Every routing event is delivered to
Python (native tap off); after the pager has admitted and populated the layer's experts, i.e.
just before llama.cpp's expert matmuls run, mincore says whether every page of every routed
expert is in the page cache; a page that is not will be read from storage by the engine's
fault. Dense pages in memory after the first token are checked at each later token start
(the most found dropped at once is printed). Printed per condition: expert
uses, uses with a page out of memory (the window), dense pages out at token starts, and the
time from the end of the pager's work to the layer's next event (the matmul's span, during
which a page could be dropped). Conditions: no limit; a memory cgroup squeezed by another
tenant's memory (bench_budget.squeeze: the kernel must take back expert pages), with and
without the pressure follower.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_budget import Squeeze
from bench_memory_cap import MemoryCgroup, cgroup_problem
from common import REPO, resolve_bundle

PROMPT = "import os\nimport sys\n\ndef main(argv):\n    " * 4


def child(spec: dict) -> dict:
    os.environ["EDGEMOE_NATIVE_TAP"] = "0"  # every routing event reaches Python
    import runtime
    from runtime.experts.pressure import PressureFollower
    from runtime.experts.residency import ResidencyError, page_cache_residency

    if spec.get("procs"):
        Path(spec["procs"]).write_text(str(os.getpid()))
    with runtime.load(spec["bundle"], budget=spec["budget"], n_ctx=1024, threads=1,
                      cold=True) as m:
        mapping, layers = m.residency.mapping, {x.layer: x for x in m.build.expert_layers}
        counts = {"uses": 0, "out": 0, "dense_out": 0, "dense_checks": 0}
        gaps: list[float] = []
        last = [0.0]

        def cached(lo: int, hi: int) -> list[bool]:
            out: list[bool] = []
            for addr, length in mapping.pieces(lo // 4096 * 4096, -(-hi // 4096) * 4096) or []:
                try:
                    out += page_cache_residency(addr, length)
                except ResidencyError:  # llama.cpp unmapped the unused head/tail of its mapping
                    continue
            return out

        def out_of_memory(lo: int, hi: int) -> bool:
            return not all(cached(lo, hi))

        original = m.engine._observer

        def observe(event):  # type: ignore[no-untyped-def]
            if last[0]:
                gaps.append(time.perf_counter() - last[0])
            stop = original(event)
            for e in set(event.ids.ravel().tolist()):
                counts["uses"] += 1
                if any(out_of_memory(s, t) for s, t in layers[event.layer].ranges(e)):
                    counts["out"] += 1
            last[0] = time.perf_counter()
            return stop

        m.engine._observer = observe
        follower = None
        if spec.get("follow"):
            b = m.budget
            follower = PressureFollower(lambda: m, lambda _m: b.expert_bytes_total // 8,
                                        interval_s=0.2).start()
        dense = [(t.offset, t.offset + t.stride * m.manifest.shape.n_experts)
                 for x in m.build.expert_layers for t in x.tensors]
        size = m.bundle.model_path.stat().st_size
        from runtime.backends.llama_cpp.lazy_load import complement

        holes = complement(dense, size)
        n, squeeze = 0, None
        for ev in m.stream_events(PROMPT, max_tokens=spec["n"], temperature=0.0):
            if ev.token is None:
                continue
            n += 1
            last[0] = 0.0
            now = [p for lo, hi in holes for p in cached(lo, hi)]
            if n == 1:  # what the first token needed is in memory now: the baseline
                baseline = now
            counts["dense_checks"] += 1
            dropped = sum(1 for was, is_ in zip(baseline, now, strict=True) if was and not is_)
            counts["dense_out"] = max(counts["dense_out"], dropped)
            if n == spec["cut_at"] and spec.get("limit"):
                squeeze = Squeeze(spec, m.stats().resident_expert_bytes)
            if squeeze is not None:
                squeeze.step()
        if follower is not None:
            follower.stop()
        changes = m.stats().budget_changes
    return {**counts, "gap_us": 1e6 * statistics.median(gaps) if gaps else 0.0,
            "changes": changes}


def run(bundle: Path, args: argparse.Namespace, capped: bool, follow: bool) -> dict:
    spec = {"bundle": str(bundle), "budget": args.budget, "n": args.decode, "cut_at": 16,
            "follow": follow}
    from runtime.experts.residency import drop_file_cache

    drop_file_cache(bundle / "model.gguf")  # so its pages are charged to the new cgroup
    group = MemoryCgroup(8 << 30) if capped else None
    if group is not None:
        spec.update(procs=str(group.path / "cgroup.procs"), stat=str(group.path / "memory.stat"),
                    usage=str(group.path / ("memory.usage_in_bytes" if group.v1
                                            else "memory.current")),
                    limit=str(group.path / ("memory.limit_in_bytes" if group.v1
                                            else "memory.max")))
    try:
        r = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], cwd=REPO,
                           capture_output=True, text=True, timeout=1800,
                           env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'bench'}"})
    finally:
        if group is not None:
            group.close()
    if r.returncode != 0:
        return {"failed": r.returncode, "stderr": r.stderr[-400:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixture", default="qwen3moe-medium")
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--quant", default="Q8_0")
    ap.add_argument("--budget", default="25%")
    ap.add_argument("--decode", type=int, default=128)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgemoe-bench-") as tmp:
        bundle = resolve_bundle(args, Path(tmp), args.quant)
        print(f"{bundle.name} at {args.budget} cold, {args.decode} tokens, 1 thread")
        conditions = [("no limit", False, False)]
        if cgroup_problem() is None:
            conditions += [("cgroup squeezed, budget kept", True, False),
                           ("cgroup squeezed, --follow-pressure", True, True)]
        print(f"{'condition':>32} {'expert uses':>11} {'page out at use':>15} "
              f"{'dense dropped':>15} {'layer span us':>13} {'budget changes':>14}")
        for name, capped, follow in conditions:
            r = run(bundle, args, capped, follow)
            if "failed" in r:
                print(f"{name:>32} failed: {r}")
                continue
            print(f"{name:>32} {r['uses']:11d} {r['out']:8d} ({r['out'] / max(1, r['uses']):.1%})"
                  f" {r['dense_out']:15d} {r['gap_us']:13.0f} {r['changes']:14d}", flush=True)


if __name__ == "__main__":
    main()
