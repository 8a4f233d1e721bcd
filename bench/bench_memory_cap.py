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

Slow storage (`--storage-mbps 200,1000`, root, cgroup v1 blkio or v2 io): the same capped runs
with the reads of the bundle's disk throttled to a camera's eMMC (200 MB/s) or a phone's UFS
(1 GB/s); `--tight` adds edgemoe rows capped at their own budget plus `--overhead`, so no page
cache is left beyond the budget. A second table puts each throttled row against its storage
roofline: compute time per token (stock's decode fully in RAM, same round) and the bytes the
process read from storage per decoded token (/proc/self/io) over the rate, overlapped (the
larger of the two) and not (their sum), with misses per token and prefetch used/unused; and
per step (each decode step's own reads against its compute, summed: reads that bunch up in a
reply's first tokens cannot hide behind later tokens' compute).

`--decode-text`: each decode step reads the held-out text's next token instead of its greedy
pick (the fixtures are barely trained: their greedy replies soon repeat one token, whose experts
stay resident, where a real reply's routing keeps moving). `--fixture qwen3moe-xl` is the large
fixture with experts six times as wide (2.6 GB at Q8_0, 5 MB experts). `--no-stock-capped`
leaves out stock's capped rows (with text at 200 MB/s they re-read the model for minutes).

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
BLKIO_V1 = Path("/sys/fs/cgroup/blkio")


@dataclass(frozen=True)
class Config:
    label: str
    engine: str  # "stock" or "edgemoe"
    capped: bool
    budget: str = "100%"
    prefetch: bool | None = None  # edgemoe: None = its default (on when cold)
    storage_mb_s: float | None = None  # reads of the bundle's device throttled to this (MB/s)
    tight: bool = False  # the cap is this budget plus --overhead: no page cache beyond it


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
        self.path = base / f"edgemoe-bench-{os.getpid()}-{limit_bytes}"
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


class ReadThrottle:
    """A fresh blkio (v1) or io (v2) cgroup whose reads of one block device are capped at a
    rate, so the bundle is read as from a camera's eMMC (200 MB/s) or a phone's UFS (1 GB/s)."""

    def __init__(self, bundle: Path, mb_s: float) -> None:
        self.device = _whole_disk(bundle)
        self.v1 = BLKIO_V1.exists()
        rate = int(mb_s * 1e6)
        if self.v1:
            self.path = BLKIO_V1 / f"edgemoe-bench-{os.getpid()}-{int(mb_s)}"
            self.path.mkdir()
            (self.path / "blkio.throttle.read_bps_device").write_text(f"{self.device} {rate}")
        else:
            self.path = V2_ROOT / f"edgemoe-bench-{os.getpid()}-{int(mb_s)}"
            self.path.mkdir()
            (self.path / "io.max").write_text(f"{self.device} rbps={rate}")
        self.mb_s = mb_s

    def close(self) -> None:
        try:
            self.path.rmdir()
        except OSError as err:
            print(f"note: could not remove {self.path}: {err}", file=sys.stderr)


def _whole_disk(path: Path) -> str:
    """MAJ:MIN of the disk holding `path` (throttles apply to a disk, not a partition)."""
    st = path.stat()
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    sysfs = Path("/sys/dev/block") / dev
    if (sysfs / "partition").exists():
        dev = (sysfs.resolve().parent / "dev").read_text().strip()
    return dev


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
    """Prefill `prompt_ids`, then decode one token a step (greedily, or the held-out text's
    next tokens, `forced`); speeds, the greedy tokens and what it cost."""
    for procs in spec.get("cgroup_procs") or ():
        Path(procs).write_text(str(os.getpid()))
    from runtime.threads import apply_wait_policy

    apply_wait_policy(spec.get("wait_policy"))  # before llama.cpp loads, stock or edgemoe
    gguf = Path(spec["bundle"]) / "model.gguf"
    prompt_ids, n, threads = spec["prompt_ids"], spec["decode"], spec["threads"]
    forced = spec.get("forced")
    if spec["engine"] == "stock":
        return _stock(gguf, prompt_ids, n, threads, use_mmap=spec["capped"], forced=forced)
    return _edgemoe(Path(spec["bundle"]), prompt_ids, n, threads, spec["budget"],
                    spec["prefetch"], forced, step_reads=bool(spec.get("storage_mb_s")))


def _next_input(tokens: list[int], forced: list[int] | None) -> int:
    """The token the next step reads: the greedy pick, or the held-out text's next token."""
    return tokens[-1] if forced is None else forced[len(tokens) - 1]


def _stock(gguf: Path, prompt_ids: list[int], n: int, threads: int, use_mmap: bool,
           forced: list[int] | None = None) -> dict:
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
                llm.eval([_next_input(tokens, forced)])
        decode_s = time.perf_counter() - t0
    finally:
        llm.close()
    return {"prefill_tok_s": len(prompt_ids) / prefill_s,
            "decode_tok_s": (n - 1) / decode_s if n > 1 else None,
            "tokens": tokens, **_process_costs()}


def _edgemoe(bundle: Path, prompt_ids: list[int], n: int, threads: int, budget: str,
             prefetch: bool | None, forced: list[int] | None = None,
             step_reads: bool = False) -> dict:
    """edgemoe at `budget`, cold: prefill, then `n` decode steps; speeds, tokens and costs.
    `step_reads`: also read /proc/self/io after every decode step (~20 us a step, inside the
    timed loop, so only the throttled rows ask for it)."""
    import numpy as np

    import runtime
    from runtime.benchmark import io_read_bytes

    with runtime.load(bundle, budget=budget, cold=True, n_ctx=1024, threads=threads,
                      prefetch=prefetch) as model:
        t0 = time.perf_counter()
        logits = model.step(prompt_ids)
        prefill_s = time.perf_counter() - t0
        tokens: list[int] = []
        reads: list[int] = []  # bytes read from storage by each decode step
        t0 = time.perf_counter()
        for i in range(n):
            tokens.append(int(np.argmax(logits)))
            if i == 0:
                t0 = time.perf_counter()
                at_decode = _decode_counters(model)
                read_before = at_decode["read"]
            if i < n - 1:
                logits = model.step([_next_input(tokens, forced)])
                if step_reads:
                    read_now = io_read_bytes() or 0
                    reads.append(read_now - read_before)
                    read_before = read_now
        decode_s = time.perf_counter() - t0
        during = {k: v - at_decode[k] for k, v in _decode_counters(model).items()}
        stats = model.stats()
        state = model.prefetch
    lookups = stats.hits + stats.misses
    steps = max(n - 1, 1)
    return {"prefill_tok_s": len(prompt_ids) / prefill_s,
            "decode_tok_s": (n - 1) / decode_s if n > 1 else None, "tokens": tokens,
            "hit_rate": stats.hits / lookups if lookups else None, "prefetch": state,
            "decode_read_per_token": during["read"] / steps, "decode_step_reads": reads,
            "decode_misses_per_token": during["misses"] / steps,
            "prefetch_used": during["used"], "prefetch_unused": during["unused"],
            **_process_costs()}


def _decode_counters(model) -> dict[str, int]:
    """What decoding costs, counted by the process (bytes read from storage, /proc/self/io)
    and by the pager (misses, prefetched experts used and not)."""
    from runtime.benchmark import io_read_bytes

    s = model.stats()
    return {"read": io_read_bytes() or 0, "misses": s.misses,
            "used": (s.prefetch and s.prefetch.prefetch_used_experts) or 0,
            "unused": (s.prefetch and s.prefetch.prefetch_unused_experts) or 0}


def _process_costs() -> dict:
    from runtime.benchmark import io_read_bytes
    from runtime.procfs import peak_rss

    return {"peak_rss": peak_rss(), "read_bytes": io_read_bytes()}


class Groups:
    """The cgroups a run joins, made on first use and removed at the end: one memory cgroup per
    limit (--limit, or a budget plus --overhead for --tight rows), one read throttle per rate."""

    def __init__(self, bundle: Path, limit: int, tight_limits: dict[str, int]) -> None:
        self.bundle, self.limit, self.tight_limits = bundle, limit, tight_limits
        self._memory: dict[int, MemoryCgroup] = {}
        self._throttles: dict[float, ReadThrottle] = {}

    def memory(self, cfg: Config) -> MemoryCgroup:
        limit = self.tight_limits[cfg.budget] if cfg.tight else self.limit
        if limit not in self._memory:
            self._memory[limit] = MemoryCgroup(limit)
        return self._memory[limit]

    def throttle(self, mb_s: float) -> ReadThrottle:
        if mb_s not in self._throttles:
            self._throttles[mb_s] = ReadThrottle(self.bundle, mb_s)
        return self._throttles[mb_s]

    def close(self) -> None:
        for g in [*self._memory.values(), *self._throttles.values()]:
            g.close()


def storage_configs(rates: list[float], tight: bool, budgets: tuple[str, ...] = ("50%", "25%"),
                    prefetch: tuple[bool | None, ...] = (None,)) -> list[Config]:
    """Rows with the bundle's device read at `rates` MB/s, inside the memory cap: stock as a
    user would run it there, and edgemoe at `budgets` (with --tight, each capped at its own
    budget plus --overhead, so no page cache is left beyond the budget), with prefetch as
    edgemoe chooses (None) and/or forced off (False)."""
    rows = []
    for mb_s in rates:
        rows.append(Config(f"stock, capped, {mb_s:g} MB/s", "stock", True, storage_mb_s=mb_s))
        for budget in budgets:
            for pf in prefetch:
                note = "" if pf is None else f", prefetch {'on' if pf else 'off'}"
                rows.append(Config(f"edgemoe {budget} cold, capped, {mb_s:g} MB/s{note}",
                                   "edgemoe", True, budget, pf, storage_mb_s=mb_s))
                if tight:
                    rows.append(Config(f"edgemoe {budget} cold, tight, {mb_s:g} MB/s{note}",
                                       "edgemoe", True, budget, pf, storage_mb_s=mb_s,
                                       tight=True))
    return rows


def budget_bytes(bundle: Path, budgets: list[str]) -> dict[str, int]:
    """The memory each budget gives the model (weights + KV), as runtime.load plans it."""
    import runtime

    out = {}
    for b in budgets:
        with runtime.load(bundle, budget=b, n_ctx=1024) as m:
            out[b] = int(m.stats().budget_bytes)
    return out


def run_config(cfg: Config, args: argparse.Namespace, bundle: Path, prompt_ids: list[int],
               groups: Groups, forced: list[int] | None = None) -> dict:
    from runtime.experts.residency import drop_file_cache

    drop_file_cache(bundle / "model.gguf")
    group = groups.memory(cfg) if cfg.capped else None
    throttle = groups.throttle(cfg.storage_mb_s) if cfg.storage_mb_s else None
    procs = [str(g.path / "cgroup.procs") for g in (group, throttle) if g is not None]
    spec = {"bundle": str(bundle), "prompt_ids": prompt_ids, "decode": args.decode,
            "threads": args.threads, "wait_policy": args.wait_policy, "engine": cfg.engine,
            "capped": cfg.capped, "budget": cfg.budget, "prefetch": cfg.prefetch,
            "cgroup_procs": procs, "forced": forced, "storage_mb_s": cfg.storage_mb_s}
    if group:
        group.reset_peak()
        before = group.report()
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                          capture_output=True, text=True, timeout=args.timeout)
    result: dict = {}
    if done.returncode == 0:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    else:
        result = {"failed": f"exit {done.returncode}: {done.stderr.strip()[-300:]}"}
    if group:
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


def _text_ids(bundle: Path, n_prompt: int, n_decode: int, forced: bool
              ) -> tuple[list[int], list[int] | None]:
    """The held-out text's first `n_prompt` tokens, and (`forced`) the `n_decode` - 1 after
    them: what a decode reads instead of its own greedy picks."""
    import runtime
    from edgemoe_fixtures.corpus import heldout_text

    with runtime.load(bundle, budget="100%") as m:
        ids = m.tokenize(heldout_text())
    if not forced:
        return ids[:n_prompt], None
    if len(ids) < n_prompt + n_decode:
        raise SystemExit(f"--decode-text: the held-out text has {len(ids)} tokens, fewer than "
                         f"--prompt-tokens + --decode ({n_prompt + n_decode})")
    return ids[:n_prompt], ids[n_prompt:n_prompt + n_decode - 1]


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
    ap.add_argument("--decode-text", action="store_true",
                    help="each decode step reads the held-out text's next token, not its own "
                         "greedy pick (a barely trained fixture's greedy reply soon repeats one "
                         "token, whose experts stay resident; text routes as a real reply)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per run")
    ap.add_argument("--no-cap", action="store_true",
                    help="only the uncapped runs (a model too small for a cgroup to hold Python)")
    ap.add_argument("--storage-mbps", default="",
                    help="also run with the bundle's device read at these MB/s, comma-separated "
                         "(200: a camera's eMMC, 1000: a phone's UFS)")
    ap.add_argument("--tight", action="store_true",
                    help="throttled edgemoe rows also capped at their budget + --overhead")
    ap.add_argument("--overhead", default="150MB",
                    help="what a process needs beside the model's budget (Python, libraries)")
    ap.add_argument("--no-stock-capped", action="store_true",
                    help="leave out stock llama.cpp's capped rows (with --decode-text at 200 MB/s "
                         "it re-reads the model for minutes per run)")
    ap.add_argument("--storage-budgets", default="50%,25%",
                    help="the edgemoe budgets of the throttled rows")
    ap.add_argument("--storage-prefetch", default="default",
                    help="throttled rows' prefetch: default (edgemoe's choice), off, or both "
                         "as 'default,off'")
    ap.add_argument("--only-storage", action="store_true",
                    help="skip the unthrottled rows except the baseline")
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
    rates = [float(x) for x in args.storage_mbps.split(",") if x.strip()]
    base = list(CONFIGS[:1] if args.only_storage else CONFIGS)
    prefetch = tuple({"default": None, "off": False}[p.strip()]
                     for p in args.storage_prefetch.split(","))
    budgets = tuple(b.strip() for b in args.storage_budgets.split(","))
    configs = [c for c in base + storage_configs(rates, args.tight, budgets, prefetch)
               if not (c.capped and problem)
               and not (args.no_stock_capped and c.engine == "stock" and c.capped)]
    if problem:
        print(f"capped runs skipped: {problem}")
    from contract.sizes import parse_size

    tight = ({b: n + parse_size(args.overhead) for b, n in budget_bytes(
        bundle, sorted({c.budget for c in configs if c.tight})).items()} if args.tight else {})
    prompt_ids, forced = _text_ids(bundle, args.prompt_tokens, args.decode, args.decode_text)
    print(f"{bundle.name}: GGUF {file_bytes / 1e6:.0f} MB; cgroup limit {limit / 1e6:.0f} MB "
          f"({limit / file_bytes:.0%} of the file); prompt {len(prompt_ids)} tokens, "
          f"{args.decode} decoded ({'the held-out text' if forced else 'greedy'}), "
          f"{args.threads} threads; {args.rounds} paired rounds, each "
          f"run in a fresh process after the GGUF was dropped from the page cache")
    if tight:
        print("tight caps: " + ", ".join(f"{b} {n / 1e6:.0f} MB" for b, n in tight.items()))
    groups = Groups(bundle, limit, tight)
    runs: dict[str, list[dict]] = {c.label: [] for c in configs}
    try:
        for r in range(args.rounds):
            order = configs if r % 2 == 0 else list(reversed(configs))
            for cfg in order:
                runs[cfg.label].append(run_config(cfg, args, bundle, prompt_ids, groups,
                                                  forced))
                res = runs[cfg.label][-1]
                print(f"  round {r + 1}: {cfg.label}: " + (
                    res["failed"] if "failed" in res else
                    f"prefill {res['prefill_tok_s']:.1f} tok/s, decode "
                    f"{res['decode_tok_s']:.1f} tok/s"), flush=True)
    finally:
        groups.close()
    _print_table(configs, runs, args)
    _print_storage(configs, runs)
    if args.json:
        args.json.write_text(json.dumps({"limit": limit, "file_bytes": file_bytes,
                                         "runs": runs}, indent=1))


def _print_table(configs: list[Config], runs: dict[str, list[dict]],
                 args: argparse.Namespace) -> None:
    base = runs[configs[0].label]
    print(f"\n{'configuration':<36} {'prefill':>8} {'ratio':>6} {'decode':>8} {'ratio':>6} "
          f"{'hit':>6} {'peak RSS':>9} {'read':>8} {'cgroup peak':>11} {'OOM':>4}")
    reference: list[int] | None = None
    for cfg in configs:
        got = runs[cfg.label]
        ok = [(b, g) for b, g in zip(base, got, strict=True)
              if "failed" not in g and "failed" not in b]
        if not ok:
            print(f"{cfg.label:<36} failed: {got[-1].get('failed', '?')}")
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
        print(f"{cfg.label:<36} {pre:8.1f} {pre_r:6.2f} {dec:8.1f} {dec_r:6.2f} {hit:>6} "
              f"{last['peak_rss'] / 1e6:6.0f} MB {read:>8} {peak:>11} {ooms:>4}"
              + (f"  ({failed} runs failed)" if failed else ""))
    print("ratios: speed / stock uncapped of the same round, median over rounds; "
          "edgemoe greedy tokens identical in every configuration")


def _print_storage(configs: list[Config], runs: dict[str, list[dict]]) -> None:
    """The throttled rows against their storage roofline: compute time per token is stock's
    decode fully in RAM (same round); storage time per token is the bytes the process read from
    storage per decoded token over the throttled rate; overlapped, a token costs the larger of
    the two, not overlapped their sum.

    The overlapped roofline takes the run's averages, as if every read could hide behind any
    token's compute. Where the reads bunch up (a reply's first tokens route to experts the
    prompt did not use), they cannot: a token's experts are known only once the tokens before it
    are computed. So a third roofline takes each decode step's own reads: a step costs the
    larger of its compute and its reads over the rate, summed over the steps."""
    rows = [c for c in configs if c.storage_mb_s and c.engine == "edgemoe"]
    if not rows:
        return
    base = runs[configs[0].label]
    print(f"\n{'throttled configuration':<36} {'decode':>7} {'MiB/tok':>8} {'miss/tok':>8} "
          f"{'prefetch used/unused':>20} {'roofline':>9} {'(serial)':>9} {'of roofline':>11} "
          f"{'per step':>9} {'of per step':>11}")
    for cfg in rows:
        ok = [(b, g) for b, g in zip(base, runs[cfg.label], strict=True)
              if "failed" not in g and "failed" not in b]
        if not ok:
            continue
        fractions, lines, steps, step_fractions = [], [], [], []
        rate = cfg.storage_mb_s * 1e6
        for b, g in ok:
            compute_s = 1.0 / b["decode_tok_s"]
            io_s = g["decode_read_per_token"] / rate
            overlap, serial = 1.0 / max(compute_s, io_s), 1.0 / (compute_s + io_s)
            fractions.append(g["decode_tok_s"] / overlap)
            lines.append((overlap, serial))
            reads = g.get("decode_step_reads") or []
            if reads:
                per_step = len(reads) / sum(max(compute_s, r / rate) for r in reads)
                steps.append(per_step)
                step_fractions.append(g["decode_tok_s"] / per_step)
        g = ok[-1][1]
        by_step = (f"{statistics.median(steps):9.1f} {statistics.median(step_fractions):11.2f}"
                   if steps else f"{'-':>9} {'-':>11}")
        print(f"{cfg.label:<36} {statistics.median(x['decode_tok_s'] for _, x in ok):7.1f} "
              f"{g['decode_read_per_token'] / 2**20:8.3f} {g['decode_misses_per_token']:8.2f} "
              f"{g['prefetch_used']:>9}/{g['prefetch_unused']:<10} "
              f"{statistics.median(o for o, _ in lines):9.1f} "
              f"{statistics.median(s for _, s in lines):9.1f} "
              f"{statistics.median(fractions):11.2f} {by_step}")
    print("roofline: tok/s if storage reads overlapped compute (serial: if they did not; per "
          "step: if each step's reads overlapped that step's compute); MiB/tok: /proc/self/io "
          "read_bytes during decode")


if __name__ == "__main__":
    main()
