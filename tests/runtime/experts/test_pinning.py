"""The hot set is one ranked concept from the planner to the pins: one trim rule, hottest first."""

from __future__ import annotations

import pytest

from device_profiles import load_profile
from packager.plan.expert_usage import ExpertUsage
from packager.plan.search import make_plan
from runtime.experts.pinning import expected_hit_share, pinned_set, ranked, take
from tests.packager.test_plan import tiny, with_budget

pytestmark = pytest.mark.unit

# Expert 7 carries most of layer 0's routings and expert 0 almost none (the shape of the trained
# fixture's busiest layer, where the two lowest ids carried 4 % of what the two hottest did).
HOT_LAST = (0.01, 0.02, 0.03, 0.04, 0.05, 0.10, 0.25, 0.50)


def _plan(usage: ExpertUsage, budget: int | None = None):
    shape = tiny(n_layers=2, n_experts=8, top_k=1)
    profile = load_profile("laptop-16gb") if budget is None else with_budget("laptop-16gb", budget)
    return make_plan(shape, profile, usage, quant="Q8_0")


def test_a_smaller_budget_pins_the_hottest_planned_expert_not_the_lowest_numbered():
    usage = ExpertUsage({0: HOT_LAST, 1: tuple(reversed(HOT_LAST))}, n_tokens=1000)
    plan = _plan(usage)
    assert plan.resident  # the plan keeps all 16; the device's budget will hold fewer
    assert plan.hot_experts[0][:2] == (7, 6) and plan.hot_experts[1][:2] == (0, 1)
    per = plan.expert_bytes_per_layer
    # Room for two pinned experts (half the capacity, one token's experts left over).
    capacity = 4 * per[0]
    pins = pinned_set(plan.hot_experts, per, capacity, 1, plan.hot_shares)
    assert pins == {0: (7,), 1: (0,)}
    assert expected_hit_share(pins, plan.hot_experts, plan.hot_shares, (0, 1)) == (
        pytest.approx(0.5))


def test_trimming_follows_share_per_byte_across_layers():
    hot = {0: (3, 1), 1: (2, 0)}
    shares = {0: (0.6, 0.1), 1: (0.3, 0.2)}
    order = ranked(hot, shares, {0: 10, 1: 10})
    assert order == [(0, 3), (1, 2), (1, 0), (0, 1)]
    assert take(order, {0: 10, 1: 10}, 30) == {0: (3,), 1: (2, 0)}
    # Layer 1's experts are half the size: its 0.3 per 5 bytes beats layer 0's 0.6 per 20.
    assert ranked(hot, shares, {0: 20, 1: 5})[:2] == [(1, 2), (1, 0)]


def test_an_expert_too_big_for_what_is_left_is_passed_over_for_smaller_ones():
    assert take([(0, 1), (1, 4), (1, 5)], {0: 8, 1: 3}, 10) == {0: (1,)}
    assert take([(1, 4), (0, 1), (1, 5)], {0: 8, 1: 3}, 10) == {1: (4, 5)}


def test_without_shares_the_list_order_is_the_rank_round_robin_across_layers():
    """Bundles packed before shares were recorded keep pinning as they did."""
    hot = {0: (0, 1, 2), 1: (5, 6)}
    assert pinned_set(hot, {0: 10, 1: 10}, 60, 1) == {0: (0, 1), 1: (5,)}
    assert expected_hit_share({0: (0,)}, hot, None, (0, 1)) is None


def test_a_budget_without_room_for_one_tokens_experts_pins_nothing():
    assert pinned_set({0: (0, 1)}, {0: 10, 1: 10}, 30, 2) == {}


def test_the_planner_forecast_is_the_same_rule_over_every_expert():
    """What the plan keeps at a small budget is what the runtime would pin from a full plan."""
    usage = ExpertUsage({0: HOT_LAST, 1: (0.125,) * 8}, n_tokens=1000)
    full = _plan(usage)
    per = full.expert_bytes_per_layer[0]
    small = _plan(usage, full.dense_bytes + full.kv_bytes + 2 * per + 3 * per)
    assert not small.resident
    order = ranked(full.hot_experts, full.hot_shares, full.expert_bytes_per_layer)
    assert small.hot_experts == take(order, full.expert_bytes_per_layer, 3 * per)
    assert small.hot_experts == {0: (7, 6), 1: (0,)}
    assert small.hot_shares == {0: (0.5, 0.25), 1: (0.125,)}
