"""Expert cache bookkeeping against a recording Residency: budget invariants, order, agreement."""

from __future__ import annotations

import random

import pytest

from runtime.errors import BudgetError
from runtime.experts.cache import CacheOrderError, CachePhase, ExpertCache, ExpertState, Hold
from runtime.experts.replay import simulate
from runtime.experts.routing_trace import synthetic_trace

pytestmark = pytest.mark.unit


class RecordingResidency:
    """Tracks what memory would look like: key -> 'loaded' / 'released' / 'pinned'."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []
        self.memory: dict[tuple[int, int], str] = {}

    def load(self, layer: int, expert: int) -> None:
        self.calls.append(("load", layer, expert))
        self.memory[(layer, expert)] = "loaded"

    def release(self, layer: int, expert: int) -> None:
        self.calls.append(("release", layer, expert))
        assert self.memory.get((layer, expert)) != "pinned", "released a pinned expert"
        self.memory[(layer, expert)] = "released"

    def pin(self, layer: int, expert: int) -> None:
        self.calls.append(("pin", layer, expert))
        self.memory[(layer, expert)] = "pinned"

    def unpin(self, layer: int, expert: int) -> None:
        self.calls.append(("unpin", layer, expert))
        self.memory[(layer, expert)] = "loaded"


SIZES = {0: 100, 1: 300}


def _cache(
    capacity: int = 1000, policy: str = "lru", **kw
) -> tuple[ExpertCache, RecordingResidency]:
    res = RecordingResidency()
    pinned = kw.pop("pinned", {0: [0]})
    return ExpertCache(SIZES, 8, capacity, pinned, policy, res, **kw), res


def _check_books(cache: ExpertCache, res: RecordingResidency) -> None:
    s = cache.stats()
    total = 0
    for layer, size in SIZES.items():
        for e in range(cache.n_experts):
            state = cache.state(layer, e)
            if state is not ExpertState.RELEASED:
                total += size
                assert e in s.resident_per_layer[layer]
                assert res.memory.get((layer, e)) in ("loaded", "pinned", None)
            else:
                assert res.memory.get((layer, e)) in ("released", None)
    assert s.resident_bytes == total
    assert s.resident_bytes <= s.capacity_bytes


@pytest.mark.parametrize("policy", ["lru", "lfu", "lrfu:half_life=8"])
@pytest.mark.parametrize("hold", [Hold.ACCESS, Hold.STEP])
def test_running_total_matches_states_and_capacity(policy: str, hold: Hold) -> None:
    cache, res = _cache(1600, policy, hold=hold)
    cache.warm()
    rng = random.Random(1)
    for _ in range(300):
        for layer in (0, 1):
            cache.access(layer, rng.sample(range(8), rng.randint(1, 2)))
            _check_books(cache, res)
        if rng.random() < 0.5:
            cache.end_step()
    s = cache.stats()
    assert s.hits + s.misses > 0 and s.evictions > 0
    assert s.bytes_loaded == sum(SIZES[layer] for op, layer, _ in res.calls if op == "load")


def test_access_admits_then_counts() -> None:
    cache, res = _cache(500)
    cache.access(0, [0, 1, 2])  # 0 is pinned: a hit; 1, 2 miss
    assert cache.state(0, 0) is ExpertState.PINNED
    assert cache.state(0, 1) is ExpertState.RESIDENT
    s = cache.stats()
    assert (s.hits, s.misses, s.bytes_loaded, s.resident_bytes) == (1, 2, 200, 300)
    assert res.calls == [("load", 0, 1), ("load", 0, 2)]
    cache.access(1, [3])  # needs 300 of 500 with 300 used: evicts (0, 1), the least recent
    assert cache.state(0, 1) is ExpertState.RELEASED
    assert res.calls[-2:] == [("release", 0, 1), ("load", 1, 3)]  # release before load
    assert cache.stats().resident_per_layer == {0: (0, 2), 1: (3,)}


def test_current_access_is_never_evicted() -> None:
    cache, _ = _cache(300, pinned={})
    cache.access(0, [1, 2, 3])
    cache.access(0, [1, 4])  # 1 is the LRU key but in use: 2 goes instead
    assert cache.state(0, 1) is ExpertState.RESIDENT
    assert cache.state(0, 2) is ExpertState.RELEASED


def test_one_access_over_capacity_raises_before_changing_anything() -> None:
    cache, res = _cache(300)
    cache.access(0, [1])
    before = cache.stats()
    with pytest.raises(BudgetError, match=r"layer 1: 1 experts in use need more than"):
        cache.access(1, [2])  # 100 pinned + 300 > 300
    assert cache.stats() == before and res.calls == [("load", 0, 1)]


def test_pinned_over_capacity_names_both_numbers() -> None:
    with pytest.raises(BudgetError, match=r"need 400 bytes \(2 experts\) .* capacity is 300 bytes"):
        ExpertCache(SIZES, 8, 300, {0: [0], 1: [0]})


def test_bad_keys_name_the_layer_and_expert() -> None:
    cache, _ = _cache()
    with pytest.raises(ValueError, match=r"layer 5 has no routed experts \(known: \[0, 1\]\)"):
        cache.access(5, [0])
    with pytest.raises(ValueError, match=r"layer 1: expert 8 outside 0..7"):
        cache.state(1, 8)


def test_warm_releases_pins_and_prefetches_in_order() -> None:
    cache, res = _cache(700)
    n = cache.warm(prefetch=[(1, 5), (0, 0), (0, 3), (1, 6), (0, 4)])
    # 100 pinned + 300 + (0,0) pinned, skipped + 100 -> 500; (1, 6) does not fit: stop.
    assert n == 2
    assert [c for c in res.calls if c[0] != "release"] == [
        ("pin", 0, 0), ("load", 1, 5), ("load", 0, 3),
    ]
    # What it admits is not released first (llama.cpp may have read it at load already).
    released = {(layer, e) for op, layer, e in res.calls if op == "release"}
    assert len(released) == 2 * 8 - 3
    assert not released & {(0, 0), (1, 5), (0, 3)}
    s = cache.stats()
    assert (s.resident_bytes, s.bytes_prefetched, s.bytes_loaded) == (500, 400, 0)


def test_release_all_unpinned_resets_to_pinned() -> None:
    cache, res = _cache(1000)
    cache.access(0, [1, 2])
    cache.access(1, [1])
    assert cache.release_all_unpinned() == 3
    assert cache.stats().resident_bytes == 100
    assert cache.stats().resident_per_layer == {0: (0,), 1: ()}
    assert all(v != "loaded" for v in res.memory.values())
    cache.access(0, [1])  # the policy forgot them: a fresh miss, no stale victim
    assert cache.stats().misses == 4


def test_closed_cache_refuses_routing_but_reads() -> None:
    cache, _ = _cache()
    cache.access(0, [1])
    cache.close()
    assert cache.phase is CachePhase.CLOSED
    with pytest.raises(CacheOrderError, match=r"access\(\) called on a closed expert cache"):
        cache.access(0, [1])
    with pytest.raises(CacheOrderError, match="end_step"):
        cache.end_step()
    assert cache.state(0, 1) is ExpertState.RESIDENT and cache.stats().misses == 1


def test_steps_end_implicitly_when_routing_returns_to_an_earlier_layer() -> None:
    cache, _ = _cache()
    for _ in range(3):
        cache.access(0, [1])
        cache.access(1, [1])
    assert cache.stats().steps == 2  # the third token has not ended yet
    cache.end_step()
    cache.access(0, [2])  # after an explicit end, no double count
    assert cache.stats().steps == 3


@pytest.mark.parametrize("policy", ["lru", "lfu", "lrfu:half_life=16"])
@pytest.mark.parametrize("hold", [Hold.ACCESS, Hold.STEP])
def test_replay_counts_what_the_runtime_path_counts(policy: str, hold: Hold) -> None:
    """The replay ends steps explicitly; the runtime's pager never calls end_step() and relies on
    routing returning to an earlier layer. Both must see the same tokens, hence the same counts."""
    trace = synthetic_trace(200, 8, [0, 1], 2, zipf_s=0.9, locality=0.3, phase_len=50, seed=5)
    pinned = {1: [0]}
    sim = simulate(trace, policy, 1500, SIZES, pinned, hold)
    cache = ExpertCache(SIZES, 8, 1500, pinned, policy, hold=hold)
    cache.warm()
    for step in trace.steps:
        for layer, experts in step.items():
            cache.access(layer, experts)
    s = cache.stats()
    assert (s.hits, s.misses, s.bytes_loaded, s.evictions, s.pinned_hits) == (
        sim.hits, sim.misses, sim.bytes_loaded, sim.evictions, sim.pinned_hits,
    )
    assert s.steps == len(trace) - 1  # the last token has not ended: nothing came after it
