"""Assembling `Model.stats()` from a loaded model's parts: budget, memory, engine, integrity,
latency, speculation, recurrent state, expert cache and prefetch."""

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
from runtime.procfs import mapping_rss, process_rss
from runtime.recurrent import RecurrentShape
from runtime.speculative.speculator import Speculator


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


def collect_stats(model: Reporting) -> dict[str, Any]:
    """The model's figures now (the caller has replayed the engine's routing log)."""
    b = model.budget
    s: dict[str, Any] = {
        **model.integrity.stats(),
        "budget_changes": model.budget_history.count,
        "budget_history": model.budget_history.as_list(),
        "tokens_decoded": model.tokens_decoded,
        "budget_bytes": b.budget_bytes,
        "dense_bytes": b.dense_bytes,
        "kv_bytes": b.kv_bytes,
        "expert_bytes_total": b.expert_bytes_total,
        "expert_capacity_bytes": b.expert_capacity_bytes,
        "budget_fraction": b.fraction,
        "offloading": b.offloading,
        "n_ctx": model.n_ctx,
        **{k: v for k, v in model.last_timings.items()},
        "dense_read_s": model.dense_read_s,
        "transient_loads": model.pager.stats.transient_loads,
        "process_rss_bytes": process_rss(),
        "mapping_rss_bytes": mapping_rss(model.experts.path),
        "backend": model.engine.name if model.engine is not None else None,
        "threads": model.engine.cfg.n_threads if model.engine is not None else None,
        "wait_policy": model.engine.wait_policy if model.engine is not None else None,
    }
    if model.speculation is not None:
        s.update(model.speculation.stats())
    if model.speculation_off is not None:
        s["speculation_off"] = model.speculation_off
    if model.recurrent is not None:  # hybrid: the state is part of kv_bytes
        s["recurrent_state_bytes"] = model.recurrent.state_bytes(model.engine_rollback)
        s["recurrent_layers"] = len(model.recurrent.layers)
    s.update(model.latency.stats())
    if model.cache is None:
        s.update(
            resident_expert_bytes=b.expert_bytes_total,
            pinned_bytes=0,
            hits=0,
            misses=0,
            bytes_loaded=0,
            evictions=0,
            hot_experts={},
            pinned_share=None,
        )
        return s
    cs = model.cache.stats()
    quiet_hits, _ = model.pager.quiet_hits()  # layers run through without a stop
    s.update(model.pager.prefetch_stats(), prefetch=model.prefetch)
    s.update(
        resident_expert_bytes=cs.resident_bytes,
        pinned_bytes=cs.pinned_bytes,
        hits=cs.hits + quiet_hits,
        unobserved_hits=quiet_hits,
        misses=cs.misses + model.pager.stats.transient_loads,
        bytes_loaded=cs.bytes_loaded + model.pager.stats.transient_bytes,
        evictions=cs.evictions,
        hot_experts={str(k): list(v) for k, v in model.pins.items()},
        pinned_share=expected_hit_share(model.pins, model.manifest.hot_experts,
                                        model.manifest.hot_shares,
                                        model.manifest.shape.moe_layers),
    )
    return s
