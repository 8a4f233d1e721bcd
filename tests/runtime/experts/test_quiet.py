"""Quiet layers: which MoE layers a one-token step may run through without the tap's stop, kept
equal to the books; on llama.cpp, a full budget loaded resizable stops at no layer but keeps
the same tokens and the same hit counts as stopping at every one, and a budget cut makes every
layer stop again."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.backends.llama_cpp import tap
from runtime.backends.llama_cpp.tap import RoutingLog
from runtime.backends.llama_cpp.tap_source import TapState
from runtime.experts import quiet
from runtime.experts.cache import ExpertCache
from runtime.experts.quiet import SAMPLE_EVERY, QuietLayers, known_levels

PROMPT = "import os\nimport sys\n\ndef main(argv):\n    "


@pytest.mark.unit
def test_levels_need_every_expert_of_a_layer():
    resident = np.array([[1, 1, 1], [1, 1, 0], [1, 1, 1]], dtype=np.uint8)
    pinned = np.array([[1, 1, 1], [1, 1, 0], [0, 1, 1]], dtype=np.uint8)
    assert known_levels(resident, pinned, holds_all=False).tolist() == [2, 0, 0]
    # Only a capacity that holds every expert makes resident ones safe: nothing is evicted.
    assert known_levels(resident, pinned, holds_all=True).tolist() == [2, 0, 1]


def _log(n_layers: int, n_experts: int) -> RoutingLog:
    return RoutingLog(TapState(), ids_tap=0, n_layers=n_layers, n_experts=n_experts, top_k=2,
                      sources={})


@pytest.mark.unit
def test_levels_follow_the_books_and_a_release_clears_at_once():
    log = _log(2, 4)
    sizes = {0: 10, 1: 10}
    cache = ExpertCache(sizes, 4, capacity_bytes=80, pinned={0: (0, 1, 2, 3)})
    q = QuietLayers(log, total_expert_bytes=80)

    def watch(layer: int, expert: int, counted: bool) -> None:
        log.resident[layer, expert] = counted
        q.on_change(layer, expert, counted, counted and layer in (0,))

    cache.watch(watch)
    q.begin_step(cache.capacity_bytes)
    assert log.known.tolist() == [2, 0]  # layer 1 has nothing resident yet
    cache.access(1, [0, 1])
    cache.access(1, [2, 3])
    q.begin_step(cache.capacity_bytes)
    assert log.known.tolist() == [2, 1]  # every expert resident, and the capacity holds all
    cache.resize(70, {0: (0, 1, 2, 3)})  # a cut: one of layer 1's goes at once
    assert log.known[1] == 0
    q.begin_step(cache.capacity_bytes)
    assert log.known.tolist() == [2, 0]


@pytest.mark.unit
def test_one_step_in_sample_every_stops_at_level_one():
    log = _log(1, 2)
    q = QuietLayers(log, total_expert_bytes=20)
    samples = []
    for _ in range(3 * SAMPLE_EVERY):
        q.begin_step(20)
        samples.append(log.sample)
    assert samples.count(1) == 3 and samples[SAMPLE_EVERY - 1] == 1
    q.close()
    assert not log._state.known  # the tap stops everywhere again


# --- on llama.cpp ---------------------------------------------------------------------------------
needs_native = pytest.mark.skipif(tap.native_library() is None,
                                  reason="no C compiler for the routing tap")


def _run(bundle, sample_every: int, monkeypatch, cut: str | None = None):
    import runtime

    monkeypatch.setattr(quiet, "SAMPLE_EVERY", sample_every)
    with runtime.load(bundle, budget="100%", threads=1, n_ctx=512, resizable=True,
                      prefetch=False) as m:
        first = m.generate(PROMPT, max_tokens=24).tokens
        before = m.engine._tap.log.quiet_counts
        if cut is not None:
            m.set_budget(cut)
        second = m.generate(PROMPT + "x = 1\n", max_tokens=24).tokens
        log = m.engine._tap.log
        return (first, second, m.stats(), log.counts, log.quiet_counts, log.known.copy(),
                before)


@pytest.mark.engine
@needs_native
def test_a_full_budget_stops_nowhere_with_the_same_tokens_and_books(bundle_factory,
                                                                    monkeypatch):
    bundle = bundle_factory("qwen3moe-trained", "Q8_0")
    import runtime

    with runtime.load(bundle, budget="100%", threads=1, n_ctx=512) as m:  # no tap at all
        reference = [m.generate(PROMPT, max_tokens=24).tokens,
                     m.generate(PROMPT + "x = 1\n", max_tokens=24).tokens]
    # SAMPLE_EVERY = 1: every step stops at every layer (the books see every event).
    stops = _run(bundle, 1, monkeypatch)
    skips = _run(bundle, 10**9, monkeypatch)
    assert [stops[0], stops[1]] == [skips[0], skips[1]] == reference
    assert stops[4] == (0, 0) and skips[4][0] > 0
    for key in ("hits", "misses", "bytes_loaded", "evictions"):
        assert getattr(skips[2], key) == getattr(stops[2], key), key
    assert skips[2].misses == 0  # every expert was admitted at load: it fits
    assert skips[2].unobserved_hits == skips[4][0] * 2  # top_k hits per event
    # One-token events all ran through; what stopped are the two prompts' layers (the second
    # prompt may share a prefix with the first, leaving a short batch).
    n_moe = len(skips[5])
    assert sum(skips[3]) <= 2 * n_moe
    assert skips[5].tolist() == [1] * n_moe


@pytest.mark.engine
@needs_native
def test_a_budget_cut_makes_every_layer_stop_again(bundle_factory, monkeypatch):
    bundle = bundle_factory("qwen3moe-trained", "Q8_0")
    import runtime

    with runtime.load(bundle, budget="50%", threads=1, n_ctx=512) as m:
        reference = m.generate(PROMPT + "x = 1\n", max_tokens=24).tokens
    first, second, stats, stopped, quiet_after, known, quiet_before = _run(
        bundle, 10**9, monkeypatch, cut="50%")
    assert second == reference
    assert known.tolist() == [0] * len(known)
    assert stats.misses > 0 and stats.resident_expert_bytes <= stats.expert_capacity_bytes
    # After the cut every one-token event stopped: no quiet event beyond the first answer's.
    assert quiet_before[0] > 0 and quiet_after == quiet_before
    assert sum(stopped) >= 23 * len(known)
