"""Assembling `Model.stats()` (a `ModelStats`, runtime/stats/record.py) from a loaded model's
parts: budget, memory, engine, integrity, latency, speculation, recurrent state, expert cache
and prefetch."""

from __future__ import annotations

from typing import Any, Protocol

from contract.manifest import Manifest
from runtime.backends.base import Backend
from runtime.budget import BudgetPlan
from runtime.experts.cache import ExpertCache
from runtime.experts.pager import ExpertPager
from runtime.experts.pinning import expected_hit_share
from runtime.experts.resize import BudgetHistory
from runtime.generation.latency import LatencyRecorder
from runtime.integrity import IntegrityState
from runtime.paging import PagedExperts
from runtime.procfs import mapping_huge_bytes, mapping_rss, process_rss
from runtime.recurrent import RecurrentShape
from runtime.speculative.speculator import Speculator
from runtime.stats.record import (
    IntegrityStats,
    LatencyStats,
    ModelStats,
    PrefetchStats,
    RecurrentStats,
    RunTimings,
    SpeculationStats,
)


class Reporting(Protocol):
    """What the figures are read from (`runtime.model.Model` is the one): its parts as loaded."""

    experts: PagedExperts
    manifest: Manifest
    budget: BudgetPlan
    budget_history: BudgetHistory
    n_ctx: int
    tokens_decoded: int
    last_timings: dict[str, float]
    dense_read_s: float | None
    engine: Backend | None
    engine_rollback: int
    integrity: IntegrityState
    latency: LatencyRecorder
    pager: ExpertPager
    cache: ExpertCache | None
    pins: dict[int, tuple[int, ...]]
    prefetch: str
    speculation: Speculator | None
    speculation_off: str | None
    recurrent: RecurrentShape | None


def collect_stats(model: Reporting) -> ModelStats:
    """The model's figures now (the caller has replayed the engine's routing log)."""
    b, engine, pager = model.budget, model.engine, model.pager
    return ModelStats(
        budget_bytes=b.budget_bytes,
        dense_bytes=b.dense_bytes,
        kv_bytes=b.kv_bytes,
        expert_bytes_total=b.expert_bytes_total,
        expert_capacity_bytes=b.expert_capacity_bytes,
        budget_fraction=b.fraction,
        offloading=b.offloading,
        budget_changes=model.budget_history.count,
        budget_history=tuple(model.budget_history.changes),
        tokens_decoded=model.tokens_decoded,
        n_ctx=model.n_ctx,
        backend=engine.name if engine is not None else None,
        threads=engine.cfg.n_threads if engine is not None else None,
        wait_policy=engine.wait_policy if engine is not None else None,
        dense_read_s=model.dense_read_s,
        process_rss_bytes=process_rss(),
        mapping_rss_bytes=mapping_rss(model.experts.path),
        huge_mapped_bytes=mapping_huge_bytes(model.experts.path),
        transient_loads=pager.stats.transient_loads,
        **_cache_figures(model),
        verification=IntegrityStats.model_validate(model.integrity.stats()),
        latency=LatencyStats.model_validate(_latency(model.latency)),
        last_run=RunTimings.model_validate(model.last_timings) if model.last_timings else None,
        speculation=(SpeculationStats.model_validate(model.speculation.stats())
                     if model.speculation is not None else None),
        speculation_off=model.speculation_off,
        recurrent=(RecurrentStats(
            recurrent_state_bytes=model.recurrent.state_bytes(model.engine_rollback),
            recurrent_layers=len(model.recurrent.layers)) if model.recurrent is not None
            else None),
        prefetch=(PrefetchStats.model_validate({**pager.prefetch_stats(),
                                                "prefetch": model.prefetch})
                  if model.cache is not None else None),
    )


def _latency(recorder: LatencyRecorder) -> dict[str, Any]:
    """The recorder's figures, with the latest prompt's breakdown as its own record."""
    return {**recorder.stats(), "ttft_breakdown": recorder.last_prompt}


def _cache_figures(model: Reporting) -> dict[str, Any]:
    """The expert cache's totals since load (hits the engine ran through without a stop and
    experts read for one step only included); at a full budget every expert is resident."""
    if model.cache is None:
        b = model.budget
        return {"resident_expert_bytes": b.expert_bytes_total, "pinned_bytes": 0, "hits": 0,
                "misses": 0, "bytes_loaded": 0, "evictions": 0, "hot_experts": {},
                "pinned_share": None}
    cs, pager, m = model.cache.stats(), model.pager, model.manifest
    quiet_hits, _ = pager.quiet_hits()  # layers run through without a stop
    return {
        "resident_expert_bytes": cs.resident_bytes,
        "pinned_bytes": cs.pinned_bytes,
        "hits": cs.hits + quiet_hits,
        "unobserved_hits": quiet_hits,
        "misses": cs.misses + pager.stats.transient_loads,
        "bytes_loaded": cs.bytes_loaded + pager.stats.transient_bytes,
        "evictions": cs.evictions,
        "hot_experts": dict(model.pins),
        "pinned_share": expected_hit_share(model.pins, m.hot_experts, m.hot_shares,
                                           m.shape.moe_layers),
    }
