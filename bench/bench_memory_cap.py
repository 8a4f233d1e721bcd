"""When the model does not fit: prefill and decode inside a memory cgroup smaller than the model.

Run (as root, on a machine with the cgroup v1 memory controller or cgroup v2):
    .venv/bin/python bench/bench_memory_cap.py [--fixture qwen3moe-large] [--quant Q8_0]
        [--limit 70%] [--rounds 3] [--threads N] [--wait-policy P] [--prompt-tokens 256]
        [--decode 64] [--no-cap]

Every configuration runs in a fresh process, after the GGUF has been dropped from the page
cache. Baseline: stock `llama_cpp.Llama(use_mmap=False)` uncapped, the whole file in RAM.
Beside it, inside a new memory cgroup whose limit is below the file size (`--limit`, a
fraction of the GGUF or a size): stock llama.cpp as a user would run it there (mmap, the
kernel evicting and re-reading pages as it must; `use_mmap=False` would be OOM-killed), and
edgemoe at 50 % and 25 % expert budgets (cold: released experts leave the page cache). edgemoe
at the same budgets uncapped is printed too: prefill at a partial budget against stock.

Rounds are paired: each round runs the baseline and every configuration back to back (the
order reversed every other round), and each configuration's speed is divided by the baseline's
of the same round; the table prints the median of those ratios. Greedy tokens must be the same
in every edgemoe configuration. The cgroup's peak usage (page cache included), its failure
count and whether the kernel's OOM killer fired are printed with each capped run.
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
from dataclasses import dataclass
from pathlib import Path

from common import add_thread_options, resolve_bundle, thread_setup

V1_ROOT = Path("/sys/fs/cgroup/memory")
V2_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Config:
    label: str
    engine: str  # "stock" or "edgemoe"
    capped: bool
    budget: str = "100%"
    prefetch: bool | None = None  # edgemoe: None = its default (on when cold)


CONFIGS: tuple[Config, ...] = (
    Config("stock, uncapped (baseline)", "stock", False),
    Config("stock, capped (mmap)", "stock", True),
    Config("edgemoe 50% cold, uncapped", "edgemoe", False, "50%"),
    Config("edgemoe 25% cold, uncapped", "edgemoe", False, "25%"),
    Config("edgemoe 50% cold, capped", "edgemoe", True, "50%"),
    Config("edgemoe 25% cold, capped", "edgemoe", True, "25%"),
    # Below the fixtures' working set (a quarter of the experts take most routings there).
    Config("edgemoe 12.5% cold, capped", "edgemoe", True, "12.5%"),
)


# --- the cgroup ----------------------------------------------------------------------------

class MemoryCgroup:
    """A fresh memory cgroup under this process's own (v1 memory controller, else v2)."""

    def __init__(self, limit_bytes: int) -> None:
        self.v1 = (V1_ROOT / "memory.limit_in_bytes").exists()
        base = self._own_group()
        self.path = base / f"edgemoe-bench-{os.getpid()}"
        self.path.mkdir()
        if self.v1:
            (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
            # Pages a process touched before it moved in are charged here too.
            _try_write(self.path / "memory.move_charge_at_immigrate", "3")
        else:
            (self.path / "memory.max").write_text(str(limit_bytes))
            _try_write(self.path / "memory.swap.max", "0")
        self.limit = limit_bytes

    def _own_group(self) -> Path:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, rel = line.split(":", 2)
            if self.v1 and "memory" in controllers.split(","):
                return V1_ROOT / rel.lstrip("/")
            if not self.v1 and controllers == "":
                return V2_ROOT / rel.lstrip("/")
        raise RuntimeError("no memory cgroup found in /proc/self/cgroup")

    def reset_peak(self) -> None:
        if self.v1:
            _try_write(self.path / "memory.max_usage_in_bytes", "0")
            _try_write(self.path / "memory.failcnt", "0")

    def report(self) -> dict[str, int | None]:
        def read(name: str) -> int | None:
            try:
                return int((self.path / name).read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return None

        if self.v1:
            oom = (self.path / "memory.oom_control").read_text()
            kills = next((int(v) for k, v in (ln.split() for ln in oom.splitlines())
                          if k == "oom_kill"), None)
            return {"peak": read("memory.max_usage_in_bytes"), "failcnt": read("memory.failcnt"),
                    "oom_kills": kills}
        events = dict(ln.split() for ln in (self.path / "memory.events").read_text().splitlines())
        return {"peak": read("memory.peak"), "failcnt": int(events.get("max", 0)),
                "oom_kills": int(events.get("oom_kill", 0))}

    def close(self) -> None:
        try:
            self.path.rmdir()
        except OSError as err:
            print(f"note: could not remove {self.path}: {err}", file=sys.stderr)


def _try_write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError:
        pass


def cgroup_problem() -> str | None:
    """Why this machine cannot run the capped configurations, or None."""
    if os.geteuid() != 0:
        return "not root: creating a memory cgroup needs root"
    if not (V1_ROOT / "memory.limit_in_bytes").exists() and not (
            V2_ROOT / "cgroup.controllers").exists():
        return "no cgroup memory controller mounted at /sys/fs/cgroup"
    return None


# --- one measured run, in its own process --------------------------------------------------

def child(spec: dict) -> dict:
    """Prefill `prompt_ids`, then decode greedily; speeds, tokens and what it cost."""
    if spec.get("cgroup_procs"):
        Path(spec["cgroup_procs"]).write_text(str(os.getpid()))
    from runtime.threads import apply_wait_policy

    apply_wait_policy(spec.get("wait_policy"))  # before llama.cpp loads, stock or edgemoe
    gguf = Path(spec["bundle"]) / "model.gguf"
    prompt_ids, n, threads = spec["prompt_ids"], spec["decode"], spec["threads"]
    if spec["engine"] == "stock":
        return _stock(gguf, prompt_ids, n, threads, use_mmap=spec["capped"])
    return _edgemoe(Path(spec["bundle"]), prompt_ids, n, threads, spec["budget"],
                    spec["prefetch"])


def _stock(gguf: Path, prompt_ids: list[int], n: int, threads: int, use_mmap: bool) -> dict:
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(str(gguf), n_ctx=1024, n_batch=512, n_threads=threads,
                          n_threads_batch=threads, use_mmap=use_mmap, verbose=False)
    try:
        t0 = time.perf_counter()
        llm.eval(prompt_ids)
        prefill_s = time.perf_counter() - t0
        tokens: list[int] = []
        t0 = time.perf_counter()
        for i in range(n):
            logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))
            tokens.append(int(np.argmax(logits)))
            if i == 0:
                t0 = time.perf_counter()  # as edgemoe: decode speed after the first token
            if i < n - 1:
                llm.eval([tokens[-1]])
        decode_s = time.perf_counter() - t0
    finally:
        llm.close()
    return {"prefill_tok_s": len(prompt_ids) / prefill_s,
            "decode_tok_s": (n - 1) / decode_s if n > 1 else None,
            "tokens": tokens, **_process_costs()}


def _edgemoe(bundle: Path, prompt_ids: list[int], n: int, threads: int, budget: str,
             prefetch: bool | None) -> dict:
    import numpy as np

    import runtime

    with runtime.load(bundle, budget=budget, cold=True, n_ctx=1024, threads=threads,
                      prefetch=prefetch) as model:
        t0 = time.perf_counter()
        logits = model._decode(prompt_ids)
        prefill_s = time.perf_counter() - t0
        tokens: list[int] = []
        t0 = time.perf_counter()
        for i in range(n):
            tokens.append(int(np.argmax(logits)))
            if i == 0:
                t0 = time.perf_counter()
            if i < n - 1:
                logits = model._decode([tokens[-1]])
        decode_s = time.perf_counter() - t0
        stats = model.stats()
        state = model.prefetch
    lookups = stats["hits"] + stats["misses"]
    return {"prefill_tok_s": len(prompt_ids) / prefill_s,
            "decode_tok_s": (n - 1) / decode_s if n > 1 else None, "tokens": tokens,
            "hit_rate": stats["hits"] / lookups if lookups else None, "prefetch": state,
            **_process_costs()}


def _process_costs() -> dict:
    from runtime.benchmark import io_read_bytes
    from runtime.procfs import peak_rss

    return {"peak_rss": peak_rss(), "read_bytes": io_read_bytes()}


def run_config(cfg: Config, args: argparse.Namespace, bundle: Path, prompt_ids: list[int],
               group: MemoryCgroup | None) -> dict:
    from runtime.experts.residency import drop_file_cache

    drop_file_cache(bundle / "model.gguf")
    spec = {"bundle": str(bundle), "prompt_ids": prompt_ids, "decode": args.decode,
            "threads": args.threads, "wait_policy": args.wait_policy, "engine": cfg.engine,
            "capped": cfg.capped,
            "budget": cfg.budget, "prefetch": cfg.prefetch,
            "cgroup_procs": str(group.path / "cgroup.procs") if cfg.capped and group else None}
    if group and cfg.capped:
        group.reset_peak()
        before = group.report()
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                          capture_output=True, text=True, timeout=args.timeout)
    result: dict = {}
    if done.returncode == 0:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    else:
        result = {"failed": f"exit {done.returncode}: {done.stderr.strip()[-300:]}"}
    if group and cfg.capped:
        after = group.report()
        result["cgroup"] = {**after, "oom_kills": (after["oom_kills"] or 0)
                            - (before["oom_kills"] or 0)}
    return result


# --- the table -----------------------------------------------------------------------------

def _limit_bytes(text: str, file_bytes: int) -> int:
    if text.endswith("%"):
        return int(file_bytes * float(text[:-1]) / 100)
    from contract.sizes import parse_size

    return parse_size(text)


def _prompt_ids(bundle: Path, n_tokens: int) -> list[int]:
    import runtime
    from edgemoe_fixtures.corpus import heldout_text

    with runtime.load(bundle, budget="100%") as m:
        ids = m.tokenize(heldout_text())
    return ids[:n_tokens]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixture", default="qwen3moe-large")
    ap.add_argument("--bundle", default=None, help="a packed bundle instead of --fixture")
    ap.add_argument("--quant", default="Q8_0")
    ap.add_argument("--limit", default="70%",
                    help="the cgroup's memory limit: a fraction of the GGUF ('70%%') or a size")
    ap.add_argument("--rounds", type=int, default=3)
    add_thread_options(ap)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per run")
    ap.add_argument("--no-cap", action="store_true",
                    help="only the uncapped runs (a model too small for a cgroup to hold Python)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child))))
        return
    print(f"bench_memory_cap: {thread_setup(args)}", flush=True)

    bundle = resolve_bundle(args, Path(tempfile.mkdtemp(prefix="edgemoe-bench-cap-")),
                            quant=args.quant)
    file_bytes = (bundle / "model.gguf").stat().st_size
    limit = _limit_bytes(args.limit, file_bytes)
    problem = "--no-cap" if args.no_cap else cgroup_problem()
    configs = [c for c in CONFIGS if not (c.capped and problem)]
    if problem:
        print(f"capped runs skipped: {problem}")
    prompt_ids = _prompt_ids(bundle, args.prompt_tokens)
    print(f"{bundle.name}: GGUF {file_bytes / 1e6:.0f} MB; cgroup limit {limit / 1e6:.0f} MB "
          f"({limit / file_bytes:.0%} of the file); prompt {len(prompt_ids)} tokens, "
          f"{args.decode} decoded, {args.threads} threads; {args.rounds} paired rounds, each "
          f"run in a fresh process after the GGUF was dropped from the page cache")
    group = None if problem else MemoryCgroup(limit)
    runs: dict[str, list[dict]] = {c.label: [] for c in configs}
    try:
        for r in range(args.rounds):
            order = configs if r % 2 == 0 else list(reversed(configs))
            for cfg in order:
                runs[cfg.label].append(run_config(cfg, args, bundle, prompt_ids, group))
                res = runs[cfg.label][-1]
                print(f"  round {r + 1}: {cfg.label}: " + (
                    res["failed"] if "failed" in res else
                    f"prefill {res['prefill_tok_s']:.1f} tok/s, decode "
                    f"{res['decode_tok_s']:.1f} tok/s"), flush=True)
    finally:
        if group:
            group.close()
    _print_table(configs, runs, args)
    if args.json:
        args.json.write_text(json.dumps({"limit": limit, "file_bytes": file_bytes,
                                         "runs": runs}, indent=1))


def _print_table(configs: list[Config], runs: dict[str, list[dict]],
                 args: argparse.Namespace) -> None:
    base = runs[configs[0].label]
    print(f"\n{'configuration':<28} {'prefill':>8} {'ratio':>6} {'decode':>8} {'ratio':>6} "
          f"{'hit':>6} {'peak RSS':>9} {'read':>8} {'cgroup peak':>11} {'OOM':>4}")
    reference: list[int] | None = None
    for cfg in configs:
        got = runs[cfg.label]
        ok = [(b, g) for b, g in zip(base, got, strict=True)
              if "failed" not in g and "failed" not in b]
        if not ok:
            print(f"{cfg.label:<28} failed: {got[-1].get('failed', '?')}")
            continue
        if cfg.engine == "edgemoe":
            for _, g in ok:
                reference = reference or g["tokens"]
                assert g["tokens"] == reference, f"tokens changed: {cfg.label}"
        pre = statistics.median(g["prefill_tok_s"] for _, g in ok)
        dec = statistics.median(g["decode_tok_s"] for _, g in ok)
        pre_r = statistics.median(g["prefill_tok_s"] / b["prefill_tok_s"] for b, g in ok)
        dec_r = statistics.median(g["decode_tok_s"] / b["decode_tok_s"] for b, g in ok)
        last = ok[-1][1]
        hit = f"{last['hit_rate']:.3f}" if last.get("hit_rate") is not None else "-"
        cg = last.get("cgroup") or {}
        peak = f"{cg['peak'] / 1e6:.0f} MB" if cg.get("peak") else "-"
        ooms = str(sum((g.get("cgroup") or {}).get("oom_kills") or 0 for g in got)) \
            if cfg.capped else "-"
        read = f"{last['read_bytes'] / 1e6:.0f} MB" if last.get("read_bytes") else "-"
        failed = len(got) - len(ok)
        print(f"{cfg.label:<28} {pre:8.1f} {pre_r:6.2f} {dec:8.1f} {dec_r:6.2f} {hit:>6} "
              f"{last['peak_rss'] / 1e6:6.0f} MB {read:>8} {peak:>11} {ooms:>4}"
              + (f"  ({failed} runs failed)" if failed else ""))
    print("ratios: speed / stock uncapped of the same round, median over rounds; "
          "edgemoe greedy tokens identical in every configuration")


if __name__ == "__main__":
    main()
