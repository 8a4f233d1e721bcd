"""Speculative decoding vs the target alone: acceptance and decode tokens/s, side by side.

Run:  .venv/bin/python bench/bench_speculative.py [--fixture qwen3moe-medium] [--rounds 7]

One run packs the target (F16) and a low-bit draft (Q4_0) of the same checkpoint (and, with
--prune, a pruned draft), then at each budget loads the target alone, the target with n-gram
drafting and the target with the draft model, all at once, and alternates paired rounds: every
round runs each of them once on the same prompt, in an order that rotates, and the ratio of
each speculative run's decode tokens/s to the target-alone run of the same round is taken. The
median of those paired ratios is printed, so a neighbour's load that slows one round slows
both sides of its ratios; so is the ratio of CPU seconds, which a busy neighbour stretches
less. Drafting is forced on, except in the "auto" rows, where the auto-off switch
(runtime/speculative/switch.py) decides; greedy tokens are checked identical to the target
alone in every round. At a partial budget both models keep that fraction of their experts
(runtime/speculative/draft_budget.py), and MiB loaded per token shows what the expert union of a
verify batch costs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PROMPT_CHARS = 600


@dataclass
class Arm:
    """One configuration measured across rounds."""

    label: str
    model: object
    tok_s: list[float] = field(default_factory=list)  # wall clock
    ratios: list[float] = field(default_factory=list)
    cpu_tok_s: list[float] = field(default_factory=list)  # per CPU-second of the process
    cpu_ratios: list[float] = field(default_factory=list)
    tokens: int = 0
    loaded: int = 0


def _pack(src: str, out: Path, quant: str, prune: float = 0.0) -> Path:
    from packager.api import PackOptions, pack

    pack(PackOptions(src=src, out_dir=out, quant=quant, profile="laptop-16gb", reference=False,
                     prune=prune))
    return out


def _bytes_loaded(model) -> int:
    s = model.stats()
    return int(s.bytes_loaded) + int((s.speculation and s.speculation.draft_bytes_loaded) or 0)


def _generate(model, prompt: str, n: int) -> tuple[float, float, list[int]]:
    """(wall decode tok/s, CPU decode tok/s, tokens). CPU time runs from the first token's
    event (prefill done) to the last: on a shared machine it stays what the work costs when
    a neighbour's load stretches the wall clock."""
    first: float | None = None
    last = None
    for ev in model.stream_events(prompt, max_tokens=n):
        if first is None:
            first = time.process_time()
        last = ev
    cpu = time.process_time() - (first or 0.0)
    tokens = list(last.tokens or ())
    return last.timings["decode_tok_s"], (len(tokens) - 1) / cpu if cpu > 0 else 0.0, tokens


def _round(arms: list[Arm], order: list[int], prompt: str, n: int) -> None:
    results: dict[int, tuple[float, float, list[int]]] = {}
    for i in order:
        arm = arms[i]
        before = _bytes_loaded(arm.model)
        results[i] = _generate(arm.model, prompt, n)
        arm.loaded += _bytes_loaded(arm.model) - before
        arm.tokens += len(results[i][2])
    base, base_cpu, reference = results[0]
    arms[0].tok_s.append(base)
    arms[0].cpu_tok_s.append(base_cpu)
    for i, arm in enumerate(arms[1:], start=1):
        tok_s, cpu_tok_s, tokens = results[i]
        assert tokens == reference, f"{arm.label}: tokens differ from the target alone"
        arm.tok_s.append(tok_s)
        arm.ratios.append(tok_s / base)
        arm.cpu_tok_s.append(cpu_tok_s)
        arm.cpu_ratios.append(cpu_tok_s / base_cpu)


def bench_budget(bundles: dict[str, Path], budget: str, args, prompt: str) -> None:
    import runtime

    common = {"budget": budget, "threads": args.threads, "n_ctx": 1024}
    arms = [Arm("target alone", runtime.load(bundles["target"], **common))]
    q = args.draft_quant
    for label, draft, auto in (("n-gram", "ngram", False), (f"{q} draft", bundles["draft"], False),
                               ("pruned draft", bundles.get("pruned"), False),
                               ("n-gram auto", "ngram", True),
                               (f"{q} draft auto", bundles["draft"], True)):
        if draft is None:
            continue
        m = runtime.load(bundles["target"], draft=draft, draft_tokens=args.draft_tokens, **common)
        m.speculation.auto = auto
        arms.append(Arm(label, m))
    try:
        for a in arms:  # warm-up: first faults, caches, graph shapes
            a.model.generate(prompt, max_tokens=8)
        for r in range(args.rounds):
            order = list(range(len(arms)))
            order = order[r % len(order):] + order[: r % len(order)]
            _round(arms, order if r % 2 == 0 else order[::-1], prompt, args.decode)
        _report(arms, budget)
    finally:
        for a in arms:
            a.model.close()


def _report(arms: list[Arm], budget: str) -> None:
    base = arms[0]
    s0 = base.model.stats()
    print(f"\nbudget {budget}: target alone holds {s0.budget_bytes / 2**20:.1f} MiB "
          f"(experts {s0.expert_capacity_bytes / 2**20:.1f} of "
          f"{s0.expert_bytes_total / 2**20:.1f} MiB)")
    print(f"{'':>14} {'tok/s':>7} {'ratio':>6} {'(min..max)':>12} {'cpu tok/s':>9} "
          f"{'ratio':>6} {'accept':>7} {'tok/step':>8} {'MiB/tok':>8} {'memory MiB':>10}")
    med = statistics.median
    for a in arms:
        s = a.model.stats()
        memory = (s.budget_bytes + (s.speculation.draft_budget_bytes if s.speculation else 0)
                  ) / 2**20
        per_tok = a.loaded / max(a.tokens, 1) / 2**20
        if a is base:
            print(f"{a.label:>14} {med(a.tok_s):7.1f} {1.0:6.2f} {'':>12} "
                  f"{med(a.cpu_tok_s):9.1f} {1.0:6.2f} {'':>7} {1.0:8.2f} {per_tok:8.2f} "
                  f"{memory:10.1f}")
            continue
        lo, hi = min(a.ratios), max(a.ratios)
        print(f"{a.label:>14} {med(a.tok_s):7.1f} {med(a.ratios):6.2f} "
              f"{f'{lo:.2f}..{hi:.2f}':>12} {med(a.cpu_tok_s):9.1f} {med(a.cpu_ratios):6.2f} "
              f"{s.speculation.acceptance_rate:7.1%} {s.speculation.tokens_per_verify_step:8.2f} "
              f"{per_tok:8.2f} {memory:10.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixture", default="qwen3moe-medium")
    ap.add_argument("--target-quant", default="F16")
    ap.add_argument("--draft-quant", default="Q4_0")
    ap.add_argument("--prune", type=float, default=0.0,
                    help="also a draft pruned by this fraction (at --draft-quant)")
    ap.add_argument("--draft-tokens", type=int, default=4)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", action="append", help="repeatable; default 100%% and 50%%")
    ap.add_argument("--prompt-file", type=Path, help="default: the fixtures' held-out text")
    args = ap.parse_args()

    from edgemoe_fixtures import cached_fixture
    from edgemoe_fixtures.corpus import heldout_text

    src = str(cached_fixture(args.fixture))
    work = Path(tempfile.mkdtemp(prefix="edgemoe-bench-spec-"))
    try:
        bundles = {
            "target": _pack(src, work / "target", args.target_quant),
            "draft": _pack(src, work / "draft", args.draft_quant),
        }
        if args.prune:
            bundles["pruned"] = _pack(src, work / "pruned", args.draft_quant, args.prune)
        text = args.prompt_file.read_text() if args.prompt_file else heldout_text()
        prompt = text[:PROMPT_CHARS]
        print(f"{args.fixture}: target {args.target_quant}, draft {args.draft_quant}"
              f"{f', pruned {args.prune:.0%}' if args.prune else ''}; K={args.draft_tokens}, "
              f"{args.decode} tokens, {args.threads} threads, "
              f"median of {args.rounds} paired rounds")
        for budget in args.budget or ["100%", "50%"]:
            bench_budget(bundles, budget, args, prompt)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # three builds of the checkpoint: ~300 MB


if __name__ == "__main__":
    main()
