"""Where a prompt step's time went: the counters read before and after the step, and the
`PromptTiming` (runtime/generation/latency.py) their difference makes, for `Model.step`."""

from __future__ import annotations

import time
from dataclasses import dataclass

from runtime.backends.base import Backend
from runtime.backends.llama_cpp.lazy_load import pending_bytes
from runtime.experts.cache import ExpertCache
from runtime.experts.pager import ExpertPager
from runtime.generation.latency import PromptTiming
from runtime.integrity import IntegrityState


@dataclass(frozen=True)
class PromptCounters:
    """Cumulative figures at one moment: llama.cpp's graph building (None: not measured), the
    pager's time at routing events, first-read hashing, expert bytes read; and the dense bytes
    not in memory then (None: not asked for, or nothing mapped lazily)."""

    graph_s: float | None
    routing_s: float
    verify_s: float
    expert_bytes: int
    dense_pending_bytes: int | None


def prompt_counters(engine: Backend, pager: ExpertPager, cache: ExpertCache | None,
                    integrity: IntegrityState,
                    dense_spans: list[tuple[int, int]] | None = None) -> PromptCounters:
    """The counters now; with `dense_spans`, also how many of those file bytes are not in
    memory (mincore over the engine's mapping)."""
    base = engine.mapping_base if dense_spans else None
    loaded = cache.stats().bytes_loaded if cache is not None else 0
    return PromptCounters(
        graph_s=engine.graph_build_s,
        routing_s=pager.stats.routing_s,
        verify_s=integrity.expert_verify_s,
        expert_bytes=loaded + pager.stats.transient_bytes,
        dense_pending_bytes=(pending_bytes(base, dense_spans)
                             if base is not None and dense_spans else None),
    )


def prompt_timing(before: PromptCounters, after: PromptCounters, n_tokens: int,
                  start: float) -> PromptTiming:
    """The step that started at `start` (perf_counter) and just ended, broken down."""
    step_ms = (time.perf_counter() - start) * 1e3
    graph = (None if before.graph_s is None or after.graph_s is None
             else (after.graph_s - before.graph_s) * 1e3)
    return PromptTiming(
        tokens=n_tokens,
        step_ms=step_ms,
        graph_ms=graph or None,
        experts_ms=(after.routing_s - before.routing_s) * 1e3,
        verify_ms=(after.verify_s - before.verify_s) * 1e3,
        expert_bytes=after.expert_bytes - before.expert_bytes,
        dense_pending_bytes=before.dense_pending_bytes,
    )
