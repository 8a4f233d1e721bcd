"""The hot set pinned by rank against the same set pinned by expert id, at a partial budget.

Run:  .venv/bin/python bench/bench_pinning.py [--fixture qwen3moe-trained] [--budget 25%]

Packs the fixture calibrated on one text (its hot set ranked, with each expert's share), then
copies the bundle with the manifest as packagers before the ranked hot set wrote it (each
layer's hot experts sorted by id, no shares), so the runtime trims to the lowest ids. Both are
measured side by side on held-out text: the hit rate of the runtime's cache policy replaying
one routing trace with each pinned set (deterministic), then generation at the budget in paired
rounds (hit rate, decode tok/s, cold: every miss reads storage), printed as ratios.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

from common import add_thread_options, thread_setup


def by_id_copy(bundle: Path, dest: Path) -> Path:
    """`bundle` with each layer's hot experts sorted by id and no shares (the old manifest)."""
    shutil.copytree(bundle, dest)
    path = dest / "manifest.json"
    m = json.loads(path.read_text())
    m["hot_experts"] = {k: sorted(v) for k, v in m["hot_experts"].items()}
    m.pop("hot_shares", None)
    path.write_text(json.dumps(m, indent=2))
    return dest


def generate(bundle: Path, prompt: str, budget: str, n: int, threads: int) -> tuple[float, float,
                                                                                     list[int]]:
    import runtime

    with runtime.load(bundle, budget=budget, cold=True, n_ctx=1024, threads=threads) as model:
        r = model.generate(prompt, max_tokens=n)
        s = model.stats()
    total = s.hits + s.misses
    return s.hits / total if total else 1.0, r.timings["decode_tok_s"], r.tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixture", default="qwen3moe-trained")
    ap.add_argument("--quant", default="Q8_0")
    ap.add_argument("--budget", default="25%")
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    add_thread_options(ap)
    args = ap.parse_args()
    print(f"bench_pinning: {thread_setup(args)}", flush=True)

    from edgemoe_fixtures import cached_fixture
    from edgemoe_fixtures.corpus import heldout_text, training_text
    from packager.api import PackOptions, pack
    from runtime.experts.pinning import expected_hit_share, pinned_set
    from runtime.tracing import record_trace, replay_budgets

    work = Path(tempfile.mkdtemp(prefix="edgemoe-bench-"))
    ranked = work / "ranked"
    pack(PackOptions(src=str(cached_fixture(args.fixture)), out_dir=ranked, quant=args.quant,
                     profile="laptop-16gb", reference=False,
                     calibration=(training_text()[:40_000],)))
    by_id = by_id_copy(ranked, work / "by-id")
    text = heldout_text()
    trace = record_trace(ranked, text, max_tokens=2048)

    print(f"{args.fixture} {args.quant} at {args.budget}, calibrated on 40 KB of training text, "
          f"measured on held-out text ({len(trace)} tokens traced)")
    rates = {}
    for name, bundle in (("by id", by_id), ("ranked", ranked)):
        report = replay_budgets(bundle, trace, [args.budget], ["lrfu"], pin_hot=True)
        rates[name] = {r.policy: r.result for r in report.rows}
    m = json.loads((ranked / "manifest.json").read_text())
    shares = {int(k): v for k, v in m["hot_shares"].items()}
    hot = {int(k): v for k, v in m["hot_experts"].items()}
    sizes = {int(k): v for k, v in m["sizes"]["expert_bytes_per_layer"].items()}
    cap = int(float(args.budget.rstrip("%")) / 100 * m["sizes"]["expert_bytes_total"])
    by_id_hot = {k: sorted(v) for k, v in hot.items()}
    top_k, layers = m["shape"]["top_k"], m["shape"]["moe_layers"]
    pins = {"ranked": pinned_set(hot, sizes, cap, top_k, shares),
            "by id": pinned_set(by_id_hot, sizes, cap, top_k)}
    print(f"\n{'pinned by':>10} {'calibrated share':>16} {'replay: pinned hits':>19} "
          f"{'hit rate (lrfu)':>15}")
    for name in ("by id", "ranked"):
        share = expected_hit_share(pins[name], hot, shares, layers)
        r = rates[name]["lrfu"]
        pinned = r.pinned_hits / (r.hits + r.misses)
        print(f"{name:>10} {share:16.3f} {pinned:19.3f} {r.hit_rate:15.3f}")

    prompt = text[:1500]
    hits: dict[str, list[float]] = {"by id": [], "ranked": []}
    ratios: list[float] = []
    speeds: dict[str, list[float]] = {"by id": [], "ranked": []}
    for _ in range(args.rounds):
        h0, d0, t0 = generate(by_id, prompt, args.budget, args.decode, args.threads)
        h1, d1, t1 = generate(ranked, prompt, args.budget, args.decode, args.threads)
        assert t0 == t1, "pinning changed the tokens"
        hits["by id"].append(h0)
        hits["ranked"].append(h1)
        speeds["by id"].append(d0)
        speeds["ranked"].append(d1)
        ratios.append(d1 / d0)
    print(f"\ngeneration at {args.budget}, cold, {args.decode} tokens, median of {args.rounds} "
          "paired rounds (tokens identical):")
    for name in ("by id", "ranked"):
        print(f"{name:>10}: hit rate {statistics.median(hits[name]):.3f}, "
              f"decode {statistics.median(speeds[name]):.1f} tok/s")
    print(f"decode ranked / by id: x{statistics.median(ratios):.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
