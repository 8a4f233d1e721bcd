"""Eviction policies and their replay through the real cache: hand-computed Belady, LRU and LFU
runs, budgets, brute force."""

from __future__ import annotations

import functools
import itertools
import random

import pytest

from runtime.errors import BudgetError
from runtime.experts.cache import Hold
from runtime.experts.policy import (
    POLICIES,
    BeladyPolicy,
    LFUPolicy,
    LRFUPolicy,
    LRUPolicy,
    make_policy,
)
from runtime.experts.replay import render_replay, replay, simulate, simulate_belady
from runtime.experts.routing_trace import RoutingTrace, synthetic_trace

pytestmark = pytest.mark.unit

# One layer, one expert per token: 1 2 3 1 2 4 1 2 with room for two experts.
SEQ = [1, 2, 3, 1, 2, 4, 1, 2]
STEPS = [{0: (e,)} for e in SEQ]
SIZES = {0: 1}


def test_belady_hand_computed() -> None:
    # t2: evict 2 (next use t4) over 1 (t3); t4: evict 3 (never); t5: evict 2 (t7) over 1 (t6);
    # t6 hits 1; t7 misses 2. Hits: t3, t6.
    r = simulate_belady(STEPS, 2, SIZES)
    assert (r.hits, r.misses, r.evictions, r.bytes_loaded) == (2, 6, 4, 6)
    assert r.hit_rate == pytest.approx(2 / 8)


def test_lru_hand_computed() -> None:
    # With two slots and a reuse distance of three, LRU always evicts what comes next.
    r = simulate(STEPS, "lru", 2, SIZES)
    assert (r.hits, r.misses, r.evictions) == (0, 8, 6)


def test_lfu_hand_computed() -> None:
    # Counts survive eviction; ties go to the least recent. Only t7 (expert 2, count 2) hits.
    r = simulate(STEPS, "lfu", 2, SIZES)
    assert (r.hits, r.misses, r.evictions) == (1, 7, 5)


def test_lfu_without_history_forgets_evicted_counts() -> None:
    policy = LFUPolicy(history=False)
    for key in [(0, 1), (0, 2)]:
        policy.on_insert(key)
    policy.on_access((0, 1))
    policy.on_remove((0, 1))
    policy.on_insert((0, 1))  # back with count 1, and more recent than (0, 2)
    assert policy.victim(set()) == (0, 2)
    policy.on_access((0, 1))
    assert policy.victim(set()) == (0, 2)


def test_lrfu_follows_a_shift_that_lfu_does_not() -> None:
    # Expert 0 was hot long ago, expert 1 is hot now; one more expert arrives.
    for policy, expected in ((LRFUPolicy(half_life=2), (0, 0)), (LFUPolicy(), (0, 1))):
        policy.on_insert((0, 0))
        for _ in range(5):
            policy.on_access((0, 0))
            policy.on_step()
        policy.on_insert((0, 1))
        for _ in range(3):
            policy.on_access((0, 1))
            policy.on_step()
        for _ in range(20):
            policy.on_step()
        assert policy.victim(set()) == expected, type(policy).__name__


def test_victim_skips_excluded_and_raises_when_nothing_is_evictable() -> None:
    for name in POLICIES:
        policy = make_policy(name)
        policy.on_insert((0, 1))
        policy.on_insert((0, 2))
        assert policy.victim({(0, 1)}) == (0, 2), name
        with pytest.raises(LookupError):
            policy.victim({(0, 1), (0, 2)})


def test_pinned_are_hits_and_take_capacity() -> None:
    steps = [{0: (0, e)} for e in SEQ]  # expert 0 pinned and used by every token
    r = simulate(steps, "lru", 3, SIZES, pinned={0: {0}})
    assert (r.hits, r.misses, r.pinned_hits) == (8, 8, 8)
    b = simulate_belady(steps, 3, SIZES, pinned={0: [0]})
    assert (b.hits, b.misses, b.pinned_hits) == (8 + 2, 6, 8)


def test_pinned_over_capacity_names_both_numbers() -> None:
    with pytest.raises(BudgetError, match=r"3 bytes \(3 experts\) but the expert capacity is 2 b"):
        simulate(STEPS, "lru", 2, SIZES, pinned={0: [5, 6, 7]})


def test_capacity_below_one_access_raises() -> None:
    with pytest.raises(BudgetError, match=r"step 0, layer 0: 3 experts in use need more than the "
                       r"expert capacity of 2 bytes"):
        simulate([{0: (1, 2, 3)}], "lfu", 2, SIZES)


def test_hold_step_keeps_the_whole_token() -> None:
    steps = [{0: (1,), 1: (1,)}, {0: (2,), 1: (2,)}]
    sizes = {0: 1, 1: 1}
    assert simulate(steps, "lru", 1, sizes, hold=Hold.ACCESS).misses == 4
    with pytest.raises(BudgetError):
        simulate(steps, "lru", 1, sizes, hold=Hold.STEP)
    assert simulate(steps, "lru", 2, sizes, hold=Hold.STEP).evictions == 2


def test_bytes_not_count_decide_evictions() -> None:
    # Layer 1's experts are three times layer 0's: admitting one evicts as many bytes as needed.
    sizes = {0: 10, 1: 30}
    steps = [{0: (0,)}, {0: (1,)}, {0: (2,)}, {1: (0,)}, {0: (0,)}]
    r = simulate(steps, "lru", 40, sizes)
    # t3 needs 30 with 30 used: two of layer 0's evicted; t4 needs 10: (0, 2) goes.
    assert (r.misses, r.evictions, r.bytes_loaded) == (5, 3, 70)


def test_belady_is_exact_against_brute_force() -> None:
    rng = random.Random(7)
    for _ in range(60):
        n_steps, n_experts, k = rng.randint(4, 10), rng.randint(3, 5), rng.randint(1, 2)
        cap = rng.randint(k, n_experts)
        steps = [{0: tuple(rng.sample(range(n_experts), k))} for _ in range(n_steps)]
        assert simulate_belady(steps, cap, SIZES).misses == _fewest_misses(steps, cap)


def _fewest_misses(steps: list[dict[int, tuple[int, ...]]], cap: int) -> int:
    """Every demand-paging schedule, by exhaustive search (one layer, unit sizes)."""

    @functools.cache
    def best(t: int, resident: frozenset[int]) -> int:
        if t == len(steps):
            return 0
        want = set(steps[t][0])
        new = want - resident
        spare = cap - len(resident)
        evictable = sorted(resident - want)
        n_out = max(0, len(new) - spare)
        return len(new) + min(
            best(t + 1, frozenset((resident - set(out)) | want))
            for out in itertools.combinations(evictable, n_out)
        )

    return best(0, frozenset())


@pytest.mark.parametrize("seed", range(25))
def test_belady_bounds_every_policy(seed: int) -> None:
    rng = random.Random(seed)
    n_experts, top_k = rng.choice([(8, 2), (16, 4), (12, 1)])
    trace = synthetic_trace(150, n_experts, [0, 1, 2], top_k, zipf_s=rng.uniform(0.3, 1.5),
                            locality=rng.uniform(0, 0.6), phase_len=rng.choice([0, 40]),
                            seed=seed)
    sizes = {0: 1, 1: 1, 2: 1}
    pinned = {1: {0, 1}} if seed % 2 else None
    cap = rng.randint(top_k + 2, 3 * n_experts - 1)
    best = simulate_belady(trace, cap, sizes, pinned)
    for name in ["lru", "lfu", "lfu:history=false", "lrfu:half_life=4", "lrfu:half_life=64"]:
        assert best.hits >= simulate(trace, name, cap, sizes, pinned).hits, name


def test_belady_refuses_a_different_order() -> None:
    policy = BeladyPolicy([(0, 1), (0, 2)])
    with pytest.raises(RuntimeError, match="out of order"):
        policy.on_insert((0, 2))


def test_make_policy_options_and_errors() -> None:
    assert isinstance(make_policy("LRU"), LRUPolicy)
    p = make_policy("lrfu:half_life=16")
    assert isinstance(p, LRFUPolicy) and p.half_life == 16
    assert make_policy("lfu: history=false").history is False  # type: ignore[attr-defined]
    known = r"\(known: lfu, lrfu, lru\)"
    with pytest.raises(ValueError, match=r"unknown cache policy 'fifo' " + known):
        make_policy("fifo")
    with pytest.raises(ValueError, match="bad option 'half_life'"):
        make_policy("lrfu:half_life")
    with pytest.raises(ValueError, match="cache policy 'lru:size=3'"):
        make_policy("lru:size=3")
    with pytest.raises(ValueError, match="half_life must be positive"):
        make_policy("lrfu:half_life=0")


def test_replay_rows_and_table() -> None:
    trace = RoutingTrace.from_steps(STEPS, n_experts=5)
    rows = replay(trace, ["lru", "lfu"], [2, 3], SIZES)
    assert [(r.capacity_bytes, r.policy) for r in rows] == [
        (2, "belady"), (2, "lru"), (2, "lfu"), (3, "belady"), (3, "lru"), (3, "lfu"),
    ]
    assert rows[0].ratio_to_belady == 1.0
    assert rows[2].ratio_to_belady == pytest.approx(rows[2].result.hit_rate / (2 / 8))
    table = render_replay(rows)
    lines = table.splitlines()
    assert lines[0].split() == ["capacity", "belady", "lru", "lfu"]
    assert lines[1].split()[:3] == ["2", "B", "25.0%"]
    assert "12.5% (0.500)" in lines[1]
