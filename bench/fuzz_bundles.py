"""A longer fuzz campaign over everything a device reads: bundle manifest, GGUF, device
profiles, routing traces and usage profiles. Prints one outcome table per kind and keeps every
failing input for reproduction.

Run:  .venv/bin/python bench/fuzz_bundles.py --cases-per-kind 1000 --seed 1 [--jobs 2]
      .venv/bin/python bench/fuzz_bundles.py --seed 1 --kinds gguf --only 417   # one case again

Packs its own bundle from the `qwen3moe-tiny` fixture (or takes --bundle), then runs cases
through `tests.fuzz.worker` (one fork-server process per job; every step in a forked child,
under a memory limit and a time limit). Case i of kind K under seed S is generated from
(S, K, i) alone, so `--only i` rebuilds exactly that case. Failing cases are copied to
OUT/failures/KIND-INDEX-OUTCOME/ (mutated files, each step's stdout/stderr, case.json).
Exit status: 0 when no failure is new (see tests/fuzz/known.py), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.fuzz lives beside the packages, not in the wheel

from tests.fuzz.cases import KINDS  # noqa: E402
from tests.fuzz.known import known_issue, split_known  # noqa: E402
from tests.fuzz.outcomes import CaseResult, Tally, render_table  # noqa: E402
from tests.fuzz.runner import Campaign, Worker  # noqa: E402
from tests.fuzz.seeds import load_seeds  # noqa: E402


def pack_bundle(out: Path, fixture: str, quant: str) -> Path:
    """A fresh bundle from a fixture checkpoint, packed by the code under test."""
    from edgemoe_fixtures import cached_fixture
    from packager.api import PackOptions, pack

    bundle = out / "bundle"
    pack(PackOptions(src=str(cached_fixture(fixture)), out_dir=bundle, profile="laptop-16gb",
                     quant=quant, reference=False, force=True))
    return bundle


def merge(into: Tally, other: Tally) -> None:
    into.cases.update(other.cases)
    for attr in ("by_kind", "by_step", "notes"):
        mine, theirs = getattr(into, attr), getattr(other, attr)
        for key, counter in theirs.items():
            mine.setdefault(key, Counter()).update(counter)


def describe_failure(r: CaseResult) -> str:
    lines = [f"  {r.kind} #{r.index}: {r.outcome}: {r.description[:160]}"]
    for step, (outcome, detail) in r.failing_steps().items():
        issue = known_issue(step, detail)
        tag = f" (known: {issue.key}, {issue.owner})" if issue else " (NEW)"
        lines.append(f"      {step}: {outcome}: {detail[:240]}{tag}")
    lines.append(f"      saved: {r.saved}")
    return "\n".join(lines)


harness_errors: list[str] = []


def run_kind(kind: str, indices: list[int], args: argparse.Namespace, seeds, out: Path,
             lock: threading.Lock) -> tuple[Tally, list[CaseResult]]:
    """All `indices` of one kind, split over --jobs workers (threads only wait on them)."""
    tally, failures = Tally(), []
    done = Counter()
    started = time.monotonic()

    def report(r: CaseResult) -> None:
        with lock:
            done[r.outcome] += 1
            n = sum(done.values())
            if r.outcome.bad:
                print(describe_failure(r), flush=True)
            elif args.only:  # reproducing: say what every entry point did
                print(f"  {r.kind} #{r.index}: {r.outcome}: {r.description[:160]}")
                for step, (outcome, detail) in r.steps.items():
                    print(f"      {step}: {outcome}: {detail[:240]}", flush=True)
            if n % args.progress == 0 or n == len(indices):
                rate = n / max(time.monotonic() - started, 1e-9)
                counts = ", ".join(f"{k}={v}" for k, v in sorted(done.items()))
                print(f"  [{kind}] {n}/{len(indices)} cases ({rate:.1f}/s): {counts}", flush=True)

    def job(part: list[int], j: int) -> None:
        worker = Worker(out / f"worker-{kind}-{j}.log")
        c = Campaign(seeds, out / "cases" / f"{kind}-{j}", seed=args.seed, timeout=args.timeout,
                     memory=args.memory_gb << 30, real_cli=args.real_cli, quick=args.quick,
                     keep=out / "failures")
        c.workdir.mkdir(parents=True, exist_ok=True)
        try:
            c.run(kind, part, worker, report)
        except Exception:  # a harness bug: keep what was measured, say so, fail the run
            with lock:
                traceback.print_exc()
                harness_errors.append(f"{kind} job {j}")
        finally:
            worker.stop()
            with lock:
                merge(tally, c.tally)
                failures.extend(c.failures)

    parts = [indices[j :: args.jobs] for j in range(args.jobs)]
    threads = [threading.Thread(target=job, args=(p, j)) for j, p in enumerate(parts) if p]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally, sorted(failures, key=lambda r: r.index)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases-per-kind", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma list of {', '.join(KINDS)}")
    ap.add_argument("--start", type=int, default=0, help="first case index")
    ap.add_argument("--only", type=int, action="append", help="run just this case index")
    ap.add_argument("--out", type=Path, default=None, help="default: out/fuzz-seed-S")
    ap.add_argument("--bundle", type=Path, default=None, help="fuzz this bundle (not packed)")
    ap.add_argument("--fixture", default="qwen3moe-tiny")
    ap.add_argument("--quant", default="F16")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (cores are shared)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per entry point")
    ap.add_argument("--memory-gb", type=int, default=4, help="address-space limit per step")
    ap.add_argument("--real-cli", action="store_true", help="a fresh interpreter per CLI call")
    ap.add_argument("--quick", action="store_true", help="skip `run` where the API loaded fine")
    ap.add_argument("--progress", type=int, default=50, help="print counts every N cases")
    args = ap.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        ap.error(f"unknown kind(s) {unknown}; choose from {', '.join(KINDS)}")
    out = args.out or ROOT / "out" / f"fuzz-seed-{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle or pack_bundle(out, args.fixture, args.quant)
    seeds = load_seeds(bundle)
    indices = args.only or list(range(args.start, args.start + args.cases_per_kind))
    print(f"fuzzing {bundle} (seed {args.seed}, {len(indices)} case(s) per kind, "
          f"{args.jobs} job(s)); output in {out}", flush=True)

    total, failures, lock = Tally(), [], threading.Lock()
    started = time.monotonic()
    for kind in kinds:
        t0 = time.monotonic()
        tally, fails = run_kind(kind, indices, args, seeds, out, lock)
        merge(total, tally)
        failures += fails
        print(f"  [{kind}] done in {time.monotonic() - t0:.0f}s", flush=True)

    print(f"\n== outcomes per kind (a case counts as its worst entry point), seed {args.seed}")
    print(render_table(total.by_kind))
    print("\n== outcomes per entry point")
    print(render_table({f"{k}/{s}": c for (k, s), c in total.by_step.items()}, "kind/step"))
    if total.notes:
        print("\n== notes (not failures: error text that is not one line)")
        for kind, notes in total.notes.items():
            for note, n in notes.most_common():
                print(f"  {kind}: {n} x {note}")
    new, known = split_known(failures)
    print(f"\n== {len(failures)} failing case(s): {len(new)} new, "
          f"{len(failures) - len(new)} known; kept in {out / 'failures'}")
    for issue in sorted(known, key=lambda k: k.key):
        n = sum(1 for r in failures for step, (_, d) in r.failing_steps().items()
                if known_issue(step, d) is issue)
        print(f"  known {issue.key} ({issue.owner}): {n} step(s) - {issue.summary}")
    for r in new:
        print(describe_failure(r))
    summary = {
        "seed": args.seed, "cases_per_kind": len(indices), "bundle": str(bundle),
        "seconds": round(time.monotonic() - started, 1),
        "by_kind": {k: dict(c) for k, c in total.by_kind.items()},
        "by_step": {f"{k}/{s}": dict(c) for (k, s), c in total.by_step.items()},
        "notes": {k: dict(c) for k, c in total.notes.items()},
        "failures": [{"kind": r.kind, "index": r.index, "outcome": r.outcome.value,
                      "description": r.description, "saved": r.saved,
                      "steps": {s: [o.value, d] for s, (o, d) in r.failing_steps().items()}}
                     for r in failures],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\n{time.monotonic() - started:.0f}s; summary in {out / 'summary.json'}")
    if harness_errors:
        print(f"harness errors (results incomplete): {', '.join(harness_errors)}")
    return 1 if new or harness_errors else 0


if __name__ == "__main__":
    sys.exit(main())
