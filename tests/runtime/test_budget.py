"""Budget parsing and the dense/KV/expert split (pure)."""

from __future__ import annotations

import pytest

from runtime.budget import parse_budget, plan_budget
from runtime.errors import BudgetError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "fraction", "total"),
    [
        ("40%", 0.4, None),
        ("100%", 1.0, None),
        ("1.5GB", None, 1_500_000_000),
        ("800MiB", None, 800 * 2**20),
        ("2g", None, 2 * 10**9),
        ("800Mi", None, 800 * 2**20),
        ("512 KiB", None, 512 * 2**10),
        ("6GiB", None, 6 * 2**30),
        (12345, None, 12345),
        (1.5e9, None, 1_500_000_000),
    ],
)
def test_parse_budget(text, fraction, total):
    spec = parse_budget(text)
    assert spec.fraction == fraction and spec.total_bytes == total


@pytest.mark.parametrize("bad", ["0%", "150%", "lots", "-5", "1.5 parsecs", "1e9", 0, True])
def test_parse_budget_rejects(bad):
    with pytest.raises(BudgetError):
        parse_budget(bad)


@pytest.mark.parametrize(("bad", "message"), [
    ("lots", r"budget 'lots': expected a percentage \('40%'\), a size \('1.5GB', '800MiB'\)"),
    ("abc%", "budget 'abc%': not a percentage"),
    ("150%", r"percentage must be in \(0, 100\]"),
    (-5, "budget must be positive, got -5"),
])
def test_parse_budget_messages(bad, message):
    with pytest.raises(BudgetError, match=message):
        parse_budget(bad)


def test_fraction_applies_to_expert_bytes():
    plan = plan_budget(
        parse_budget("25%"),
        dense_bytes=100,
        kv_bytes=50,
        expert_bytes_total=1000,
        one_token_expert_bytes=100,
    )
    assert plan.expert_capacity_bytes == 250
    assert plan.budget_bytes == 400
    assert plan.offloading


def test_absolute_budget_subtracts_dense_and_kv():
    plan = plan_budget(
        parse_budget(700),
        dense_bytes=100,
        kv_bytes=50,
        expert_bytes_total=1000,
        one_token_expert_bytes=100,
    )
    assert plan.expert_capacity_bytes == 550


def test_large_budget_is_capped_at_everything_resident():
    plan = plan_budget(
        parse_budget("10GB"),
        dense_bytes=100,
        kv_bytes=50,
        expert_bytes_total=1000,
        one_token_expert_bytes=100,
    )
    assert plan.expert_capacity_bytes == 1000 and not plan.offloading


def test_budget_below_minimum_states_the_minimum():
    with pytest.raises(
        BudgetError, match=r"minimum of 250 bytes .*dense weights 100 .*KV cache 50"
    ):
        plan_budget(
            parse_budget(200),
            dense_bytes=100,
            kv_bytes=50,
            expert_bytes_total=1000,
            one_token_expert_bytes=100,
        )
