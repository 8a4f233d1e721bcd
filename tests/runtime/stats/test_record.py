"""ModelStats: one typed record, its optional parts, and the flat JSON its consumers read."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from runtime.experts.resize import BudgetChange
from runtime.generation.latency import LatencyRecorder, PromptTiming
from runtime.stats import (
    IntegrityStats,
    LatencyStats,
    ModelStats,
    PrefetchStats,
    RunTimings,
    SpeculationStats,
)

pytestmark = pytest.mark.unit

INTEGRITY = {"integrity": "ok", "integrity_faults": 0, "integrity_fault": None,
             "checksums": "xxh3-64", "experts_verified": 3, "expert_bytes_verified": 300,
             "expert_verify_s": 0.1, "verify_cpu_s": 0.2, "dense_check": "ok",
             "dense_bytes_verified": 900, "dense_verify_s": 0.3}


def _latency() -> LatencyStats:
    rec = LatencyRecorder()
    return LatencyStats.model_validate({**rec.stats(), "ttft_breakdown": PromptTiming(
        tokens=4, step_ms=10.0, graph_ms=1.0, experts_ms=2.0, verify_ms=0.5, expert_bytes=64,
        dense_pending_bytes=None, first_sample_ms=1.0, ttft_ms=11.0)})


def _stats(**parts: object) -> ModelStats:
    return ModelStats(
        budget_bytes=100, dense_bytes=40, kv_bytes=10, expert_bytes_total=100,
        expert_capacity_bytes=50, budget_fraction=0.5, offloading=True, budget_changes=1,
        budget_history=(BudgetChange(1.0, 7, 100, 50, 2, "api"),), tokens_decoded=7, n_ctx=256,
        backend="llama.cpp", threads=2, wait_policy="passive", dense_read_s=None,
        process_rss_bytes=1, mapping_rss_bytes=2, resident_expert_bytes=50, pinned_bytes=20,
        hits=5, unobserved_hits=1, misses=3, transient_loads=0, bytes_loaded=30, evictions=1,
        hot_experts={3: (1, 2)}, pinned_share=0.4,
        verification=IntegrityStats.model_validate(INTEGRITY), latency=_latency(), **parts)


def test_the_json_is_flat_with_each_part_at_the_top_level() -> None:
    s = _stats(last_run=RunTimings(prefill_s=1.0, decode_s=2.0, ttft_s=0.5, prefill_tok_s=4.0,
                                   decode_tok_s=8.0),
               prefetch=PrefetchStats(state="on", prefetch_width=2))
    out = json.loads(json.dumps(s.to_json()))  # JSON-safe as it is
    assert out["integrity"] == "ok" and out["integrity_fault"] is None
    assert out["decode_tok_s"] == 8.0 and out["prefetch"] == "on" and out["prefetch_width"] == 2
    assert "prefetch_calls" not in out  # the prefetcher did not report it
    assert out["hot_experts"] == {"3": [1, 2]} and out["unobserved_hits"] == 1
    assert out["budget_history"] == [{"at_s": 1.0, "tokens": 7, "budget_bytes": 100,
                                      "expert_capacity_bytes": 50, "released": 2,
                                      "reason": "api"}]
    assert out["ttft_breakdown"]["compute_ms"] == pytest.approx(7.0)  # step - graph - experts
    assert out["latency_histograms"]["ttft_seconds"]["count"] == 0
    assert out["dense_read_s"] is None  # a figure that is None stays, as null
    for part in ("verification", "latency", "last_run", "speculation", "recurrent"):
        assert part not in out


def test_a_part_that_is_off_leaves_its_keys_out() -> None:
    out = _stats().to_json()
    for key in ("decode_tok_s", "verify_steps", "draft_kind", "recurrent_state_bytes",
                "prefetch", "speculation_off"):
        assert key not in out
    s = _stats(speculation=SpeculationStats.model_validate({
        "draft_kind": "ngram", "draft_tokens": 4, "speculation_auto": True,
        "speculation_state": "measure", "speculation_active": 1, "speculation_switched_off": 0,
        "verify_steps": 2, "drafted_tokens": 8, "accepted_tokens": 4, "acceptance_rate": 0.5,
        "tokens_per_verify_step": 3.0, "speculative_tok_s": 0.0, "plain_tok_s": 0.0,
        "speculative_speedup": None, "draft_budget_bytes": 0}))
    out = s.to_json()
    assert out["verify_steps"] == 2 and out["draft_budget_bytes"] == 0
    assert "draft_bundle" not in out  # n-gram drafting has no draft model
    assert s.speculation is not None and s.speculation.acceptance_rate == 0.5


def test_a_key_no_field_declares_is_refused() -> None:
    with pytest.raises(ValidationError, match="integrity_new"):
        IntegrityStats.model_validate({**INTEGRITY, "integrity_new": 1})


def test_the_record_is_read_by_attribute_not_by_key() -> None:
    s = _stats()
    with pytest.raises(TypeError, match="read its attributes"):
        _ = "hits" in s
    with pytest.raises(TypeError):
        _ = s["hits"]  # type: ignore[index]
    with pytest.raises(ValidationError):
        s.hits = 0  # frozen
