"""`ModelStats`: what `Model.stats()` returns, one typed record with a sub-record per optional part.

Python reads attributes (`s.hits`, `s.latency.ttft_ms_p50`, `s.speculation.acceptance_rate` when
a draft runs); JSON goes through `to_json()`, which writes the flat keys the CLI, the benches and
/metrics have always read (each sub-record's fields at the top level, a part that is off left out).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from runtime.experts.resize import BudgetChange
from runtime.generation.latency import PromptTiming


class _Record(BaseModel):
    """Frozen; a key a producer emits that no field declares is an error, so nothing is lost.
    `OMIT_NONE`: fields that, at None, are left out of JSON (the part did not report them)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True,
                              arbitrary_types_allowed=True)
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset()

    def to_json(self) -> dict[str, Any]:
        """The JSON keys (aliases), with `OMIT_NONE` fields at None left out."""
        out = self.model_dump(mode="json", by_alias=True, exclude=self._parts())
        for name in self.OMIT_NONE:
            key = type(self).model_fields[name].alias or name
            if out.get(key, 0) is None:
                del out[key]
        return out

    def _parts(self) -> set[str]:
        return set()

    def __contains__(self, key: object) -> bool:
        raise TypeError(f"{type(self).__name__} is a record: read its attributes (an optional "
                        "part is None when off), or to_json() for the JSON keys")


class IntegrityStats(_Record):
    """Weights verified against the manifest's checksums (runtime/integrity/state.py)."""

    state: str = Field(alias="integrity")  # "ok", or "corrupt" once a fault is known
    faults: int = Field(alias="integrity_faults")  # 0 or 1: a faulty model answers nothing more
    fault: str | None = Field(alias="integrity_fault")  # the first fault, said in words
    checksums: str  # what is checked and when ("off", "none in this bundle", xxh3-64 ...)
    experts_verified: int
    expert_bytes_verified: int
    expert_verify_s: float  # hashing on the request path (first reads)
    verify_cpu_s: float  # CPU seconds of hashing, background included
    dense_check: str  # the background check of the dense weights: "none", "running", "done" ...
    dense_bytes_verified: int
    dense_verify_s: float


class Histogram(_Record):
    """Cumulative buckets as Prometheus wants them: (upper bound or "+Inf", count <= bound)."""

    buckets: tuple[tuple[float | str, int], ...]
    sum: float
    count: int
    p50: float | None
    p95: float | None


class LatencyHistograms(_Record):
    ttft_seconds: Histogram
    inter_token_seconds: Histogram


class LatencyStats(_Record):
    """Time to first token and inter-token latency over every generation (recent p50/p95, ms;
    None before any), the latest prompt's breakdown, and the histograms /metrics exports."""

    ttft_ms_p50: float | None
    ttft_ms_p95: float | None
    itl_ms_p50: float | None
    itl_ms_p95: float | None
    ttft_breakdown: PromptTiming | None  # runtime/generation/latency.py says what each part is
    latency_histograms: LatencyHistograms

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        b = self.ttft_breakdown
        out["ttft_breakdown"] = b.to_dict() if b is not None else None  # compute_ms with it
        return out


class RunTimings(_Record):
    """The last generation's timings (StreamEvent.timings), absent before the first."""

    prefill_s: float
    decode_s: float
    ttft_s: float
    prefill_tok_s: float
    decode_tok_s: float


class SpeculationStats(_Record):
    """Speculative decoding (a model loaded with `draft=`), runtime/speculative/speculator.py;
    the draft model's own figures are prefixed draft_ (a draft bundle only)."""

    OMIT_NONE = frozenset({"draft_bundle", "draft_dense_bytes", "draft_kv_bytes",
                           "draft_expert_capacity_bytes", "draft_resident_expert_bytes",
                           "draft_hits", "draft_misses", "draft_bytes_loaded"})

    draft_kind: str  # "ngram" (prompt lookup) or "model"
    draft_tokens: int  # drafted per verify step, at most
    speculation_auto: bool  # switched off (and back on) by measured speed
    speculation_state: str
    speculation_active: int  # 1 while drafting, 0 while switched off
    speculation_switched_off: int
    verify_steps: int
    drafted_tokens: int
    accepted_tokens: int
    acceptance_rate: float
    tokens_per_verify_step: float
    speculative_tok_s: float
    plain_tok_s: float
    speculative_speedup: float | None
    draft_budget_bytes: int  # the part of the budget the draft model holds (0: n-gram)
    draft_bundle: str | None = None
    draft_dense_bytes: int | None = None
    draft_kv_bytes: int | None = None
    draft_expert_capacity_bytes: int | None = None
    draft_resident_expert_bytes: int | None = None
    draft_hits: int | None = None
    draft_misses: int | None = None
    draft_bytes_loaded: int | None = None


class RecurrentStats(_Record):
    """A hybrid model's recurrent state (runtime/recurrent.py); it is part of kv_bytes."""

    recurrent_state_bytes: int  # rollback snapshots included
    recurrent_layers: int


class PrefetchStats(_Record):
    """Expert prefetch while paging: its state, the decode prefetcher's figures (when running:
    runtime/experts/prefetcher.py) and the prompt prefetch's (runtime/experts/batch_prefetch.py)."""

    OMIT_NONE = frozenset({"prefetch_width", "prefetch_calls", "prefetch_bytes",
                           "prefetch_wasted_bytes", "prefetch_used_experts",
                           "prefetch_unused_experts", "prefetch_changes",
                           "prompt_prefetch_experts", "prompt_prefetch_used_experts",
                           "prompt_prefetch_unused_experts"})

    state: str = Field(alias="prefetch")  # "on", "off", or why it cannot run
    prefetch_width: int | None = None
    prefetch_calls: int | None = None
    prefetch_bytes: int | None = None
    prefetch_wasted_bytes: int | None = None
    prefetch_used_experts: int | None = None
    prefetch_unused_experts: int | None = None
    prefetch_changes: int | None = None
    prompt_prefetch_experts: int | None = None
    prompt_prefetch_used_experts: int | None = None
    prompt_prefetch_unused_experts: int | None = None


# Parts written at the top level of the JSON, as their own keys.
_FLAT_PARTS = ("verification", "latency", "last_run", "speculation", "recurrent", "prefetch")


class ModelStats(_Record):
    """A loaded model's figures at one moment. Bytes are bytes; the cache figures are totals
    since load (at a full budget nothing is paged: every expert resident, no hits or misses)."""

    OMIT_NONE = frozenset({"unobserved_hits", "speculation_off"})

    # The budget (runtime/budget.py) and its changes while loaded (runtime/experts/resize.py).
    budget_bytes: int  # dense + KV + expert capacity
    dense_bytes: int
    kv_bytes: int  # KV cache, and a hybrid's recurrent state
    expert_bytes_total: int
    expert_capacity_bytes: int
    budget_fraction: float  # expert capacity over all expert bytes
    offloading: bool  # experts are paged (the capacity holds fewer than all)
    budget_changes: int
    budget_history: tuple[BudgetChange, ...]  # the latest changes, oldest first
    tokens_decoded: int  # prompts included: the clock of budget_history
    n_ctx: int
    # The engine (None once closed) and memory.
    backend: str | None
    threads: int | None
    wait_policy: str | None
    dense_read_s: float | None  # a lazy load's read of the dense weights
    process_rss_bytes: int | None
    mapping_rss_bytes: int | None  # resident bytes of the expert file's mapping
    # ... of which mapped by 2 MiB pages (a full budget's huge-folio read, huge_pages.py)
    huge_mapped_bytes: int | None = None
    # The expert cache (runtime/experts/cache.py, pager.py).
    resident_expert_bytes: int
    pinned_bytes: int
    hits: int  # unobserved_hits included
    unobserved_hits: int | None = None  # layers the engine ran through without a stop (paging)
    misses: int  # transient loads included
    transient_loads: int  # experts read for one step past a full cache
    bytes_loaded: int
    evictions: int
    hot_experts: dict[int, tuple[int, ...]]  # the pinned hot set, per layer
    pinned_share: float | None  # routings the pinned experts served in calibration
    # The parts.
    verification: IntegrityStats
    latency: LatencyStats
    last_run: RunTimings | None = None  # None before the first generation
    speculation: SpeculationStats | None = None  # None without a draft
    speculation_off: str | None = None  # why a draft asked for is not used
    recurrent: RecurrentStats | None = None  # None: attention layers only
    prefetch: PrefetchStats | None = None  # None when nothing is paged

    def _parts(self) -> set[str]:
        return {"budget_history", *_FLAT_PARTS}

    def to_json(self) -> dict[str, Any]:
        """The flat JSON of the CLI, benches and /metrics (hot_experts keyed by str(layer))."""
        out = super().to_json()
        out["budget_history"] = [asdict(c) for c in self.budget_history]
        for name in _FLAT_PARTS:
            part = getattr(self, name)
            if part is not None:
                out.update(part.to_json())
        return out
