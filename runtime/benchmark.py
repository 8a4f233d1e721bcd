"""`edgemoe bench`: the latency a user of one bundle would see on this machine, and its ceiling.

One generation, measured the way the runtime reports it elsewhere (`Model.stats()` latency
histograms, the same numbers /metrics exports): time to first token, inter-token latency p50 and
p95, prefill and decode speed, expert hit rate, bytes read from storage (the kernel's
/proc/self/io counter, so page-cache hits do not count), lifetime and generation peak RSS, and
whether the device profile's latency targets hold. The ceiling puts decode speed in context:
the weight bytes one token streams (dense + top_k experts per MoE layer) times tokens/s, next to
this machine's memory bandwidth measured now (a numpy copy), and, cold, its storage bandwidth.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contract.device_profile import DeviceProfile
from runtime.experts.residency import drop_file_cache
from runtime.generation.latency import PromptTiming
from runtime.options import LoadOptions
from runtime.procfs import peak_rss, peak_rss_reset

DEFAULT_PROMPT = (
    "Write a short, friendly paragraph explaining why a small device should keep only the most "
    "used parts of a large language model in memory, and what it costs when it guesses wrong."
)


@dataclass(frozen=True)
class BenchOptions:
    """What to measure: one bundle at one budget, warm or cold (page cache dropped first)."""

    bundle: Path
    profile: str | Path | None = None  # targets come from it; None: the bundle's snapshot
    prompt: str = DEFAULT_PROMPT
    max_tokens: int = 64
    load: LoadOptions = field(default_factory=LoadOptions)  # as runtime.load takes them


@dataclass(frozen=True)
class Ceiling:
    """Decode speed against what this machine's memory (and, cold, storage) could feed."""

    weight_bytes_per_token: int  # dense weights + top_k experts of every MoE layer
    streamed_gb_s: float  # weight_bytes_per_token x decode tokens/s
    memory_gb_s: float  # measured: numpy copy, bytes read + written per second
    memory_bound_tok_s: float  # memory_gb_s / weight_bytes_per_token
    storage_mb_s: float | None = None  # measured (cold): the model file read in 4 MiB chunks
    decode_storage_mb_s: float | None = None  # storage bytes read during decode per second

    @property
    def memory_share(self) -> float:
        return self.streamed_gb_s / self.memory_gb_s if self.memory_gb_s else 0.0


@dataclass(frozen=True)
class BenchReport:
    bundle: str
    profile: str
    budget_fraction: float | None
    cold: bool
    prefetch: str
    threads: int
    wait_policy: str
    prompt_tokens: int
    tokens: int
    ttft_ms: float
    itl_ms_p50: float | None
    itl_ms_p95: float | None
    prefill_tok_s: float
    decode_tok_s: float
    hit_rate: float | None
    expert_bytes_loaded: int
    load_read_bytes: int | None  # from storage while loading
    generation_read_bytes: int | None  # from storage while generating
    peak_rss_lifetime: int
    peak_rss_generation: int
    ttft_ms_target: float
    itl_ms_target: float
    ceiling: Ceiling
    load_s: float | None = None  # runtime.load, wall
    dense_read_ms: float | None = None  # a lazy load's wait for the dense weights
    # Where the time to first token went (runtime/generation/latency.py: PromptTiming).
    ttft_breakdown: PromptTiming | None = None

    @property
    def ttft_ok(self) -> bool:
        return self.ttft_ms <= self.ttft_ms_target

    @property
    def itl_ok(self) -> bool:
        """The p95 gap between tokens is what a reader notices."""
        return self.itl_ms_p95 is not None and self.itl_ms_p95 <= self.itl_ms_target

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(ttft_ok=self.ttft_ok, itl_ok=self.itl_ok)
        d["ceiling"]["memory_share"] = self.ceiling.memory_share
        if self.ttft_breakdown is not None:
            d["ttft_breakdown"] = self.ttft_breakdown.to_dict()  # compute_ms with it
        return d

    def render(self) -> str:
        return render_report(self)


def io_read_bytes() -> int | None:
    """Bytes this process caused to be read from storage (/proc/self/io read_bytes)."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _delta(after: int | None, before: int | None) -> int | None:
    return None if after is None or before is None else after - before


def memory_bandwidth_gb_s(nbytes: int = 128 * 2**20, repeats: int = 5) -> float:
    """Bytes read + written per second by a numpy copy of `nbytes` (best of `repeats`)."""
    src = np.ones(nbytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best / 1e9


def storage_mb_s(path: Path, chunk: int = 4 * 2**20) -> float | None:
    """Read `path` after dropping it from the page cache, in `chunk`-sized reads (MB/s);
    None where the page cache cannot be dropped. The file is dropped again afterwards."""
    if not drop_file_cache(path):
        return None
    size, t0 = 0, time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(chunk):
            size += len(block)
    seconds = time.perf_counter() - t0
    drop_file_cache(path)
    return size / seconds / 1e6 if seconds > 0 else None


def _profile(opts: BenchOptions, snapshot: DeviceProfile) -> DeviceProfile:
    if opts.profile is None:
        return snapshot
    from device_profiles import load_profile

    return load_profile(opts.profile)


def run_benchmark(opts: BenchOptions) -> BenchReport:
    """Load the bundle (cold: from storage), generate once, measure (see the module doc)."""
    import runtime
    from runtime.bundles.open import open_bundle

    opened = open_bundle(opts.bundle)
    cold = opts.load.cold
    if cold:
        drop_file_cache(opened.model_path)
    read0, t0 = io_read_bytes(), time.perf_counter()
    with runtime.load(opts.bundle, options=opts.load) as model:
        load_s = time.perf_counter() - t0
        read1, lifetime = io_read_bytes(), peak_rss()
        peak_rss_reset()
        result = model.generate(opts.prompt, max_tokens=opts.max_tokens, temperature=0.0)
        read2, generation_peak = io_read_bytes(), peak_rss()
        stats = model.stats()
        profile = _profile(opts, model.manifest.profile)
        threads = model.engine.cfg.n_threads
        shape, layers = model.manifest.shape, model.build.expert_layers
        per_token = model.budget.dense_bytes + shape.top_k * sum(x.expert_bytes for x in layers)
    timings = result.timings
    lookups = stats.hits + stats.misses
    decode_s = timings.get("decode_s", 0.0)
    gen_read = _delta(read2, read1)
    mem = memory_bandwidth_gb_s()
    ceiling = Ceiling(
        weight_bytes_per_token=per_token,
        streamed_gb_s=per_token * timings["decode_tok_s"] / 1e9,
        memory_gb_s=mem,
        memory_bound_tok_s=mem * 1e9 / per_token if per_token else 0.0,
        storage_mb_s=storage_mb_s(opened.model_path) if cold else None,
        decode_storage_mb_s=(gen_read / decode_s / 1e6
                             if cold and gen_read is not None and decode_s > 0 else None),
    )
    ttft = stats.latency.ttft_ms_p50
    return BenchReport(
        bundle=str(opts.bundle),
        profile=profile.name,
        budget_fraction=stats.budget_fraction,
        cold=cold,
        prefetch=stats.prefetch.state if stats.prefetch is not None else "off",
        threads=threads,
        wait_policy=str(stats.wait_policy),
        prompt_tokens=result.usage.prompt_tokens,
        tokens=result.usage.completion_tokens,
        ttft_ms=ttft if ttft is not None else timings["ttft_s"] * 1e3,
        itl_ms_p50=stats.latency.itl_ms_p50,
        itl_ms_p95=stats.latency.itl_ms_p95,
        prefill_tok_s=timings["prefill_tok_s"],
        decode_tok_s=timings["decode_tok_s"],
        hit_rate=stats.hits / lookups if stats.offloading and lookups else None,
        expert_bytes_loaded=stats.bytes_loaded,
        load_read_bytes=_delta(read1, read0),
        generation_read_bytes=gen_read,
        peak_rss_lifetime=max(lifetime, generation_peak),
        peak_rss_generation=generation_peak,
        ttft_ms_target=profile.ttft_ms_target,
        itl_ms_target=profile.itl_ms_target,
        ceiling=ceiling,
        load_s=load_s,
        dense_read_ms=stats.dense_read_s * 1e3 if stats.dense_read_s is not None else None,
        ttft_breakdown=stats.latency.ttft_breakdown,
    )


def _mb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.1f} MB"


def _rate(v: float | None, spec: str, missing: str = "n/a") -> str:
    return missing if v is None else format(v, spec)


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f} ms"


def render_report(r: BenchReport) -> str:
    """The report as a short block of text for a terminal."""
    budget = "100%" if r.budget_fraction is None else f"{100 * r.budget_fraction:.0f}%"
    c = r.ceiling
    held = {True: "holds", False: "MISSED"}
    lines = [
        f"{r.bundle}: budget {budget}{' cold' if r.cold else ''}, {r.threads} threads "
        f"(wait policy {r.wait_policy}), prefetch {r.prefetch}; {r.prompt_tokens} prompt + "
        f"{r.tokens} generated tokens",
        f"  time to first token  {_ms(r.ttft_ms):>10}   target {r.ttft_ms_target:g} ms "
        f"({r.profile}): {held[r.ttft_ok]}",
        f"  inter-token latency  p50 {_ms(r.itl_ms_p50)}  p95 {_ms(r.itl_ms_p95)}   target "
        f"{r.itl_ms_target:g} ms (p95): {held[r.itl_ok]}",
        f"  prefill {r.prefill_tok_s:9.1f} tok/s    decode {r.decode_tok_s:9.1f} tok/s",
        f"  expert hit rate      {_rate(r.hit_rate, '.3f', 'n/a (all resident)')}"
        f"   expert bytes loaded {_mb(r.expert_bytes_loaded)}",
        f"  read from storage    load {_mb(r.load_read_bytes)}   generation "
        f"{_mb(r.generation_read_bytes)}",
        f"  peak RSS             lifetime {_mb(r.peak_rss_lifetime)}   generation "
        f"{_mb(r.peak_rss_generation)}",
        f"  ceiling: decode streams {c.streamed_gb_s:.2f} GB/s of weights "
        f"({c.weight_bytes_per_token / 1e6:.1f} MB/token) = {100 * c.memory_share:.0f}% of this "
        f"machine's memory bandwidth ({c.memory_gb_s:.1f} GB/s, numpy copy): "
        f"memory-bound limit {c.memory_bound_tok_s:.0f} tok/s",
    ]
    lines.extend(_breakdown_lines(r))
    if r.cold:
        lines.append(f"  storage: decode read {_rate(c.decode_storage_mb_s, '.1f')} MB/s; this "
                     f"machine reads {_rate(c.storage_mb_s, '.0f')} MB/s (4 MiB reads, cold)")
    return "\n".join(lines) + "\n"


def _breakdown_lines(r: BenchReport) -> list[str]:
    """Where the first token's time went, and what loading did before it."""
    out = []
    load = f"  load {r.load_s * 1e3:.0f} ms" if r.load_s is not None else "  load n/a"
    if r.dense_read_ms is not None:
        load += f" (dense weights read and waited for: {r.dense_read_ms:.1f} ms)"
    b = r.ttft_breakdown
    if b is None:
        return [load]
    graph = "n/a" if b.graph_ms is None else f"{b.graph_ms:.1f}"
    pending = b.dense_pending_bytes
    out.append(f"  first token          prompt step {b.step_ms:.1f} ms = graph build {graph} + "
               f"compute {b.compute_ms:.1f} + expert reads and checks {b.experts_ms:.1f} "
               f"(verify {b.verify_ms:.1f}; {b.expert_bytes / 1e6:.1f} MB of experts), "
               f"then first sample {_rate(b.first_sample_ms, '.1f')} ms")
    out.append(load + ("" if pending is None else
                       f"; dense bytes not yet in memory at the prompt {pending / 1e6:.1f} MB"))
    return out
