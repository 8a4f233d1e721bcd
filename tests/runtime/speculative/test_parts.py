"""The pure parts of speculative decoding: n-gram drafting, the budget split, the auto-off
switch, which requests speculation serves, and the figures /metrics publishes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from runtime.budget import BudgetSpec, plan_budget
from runtime.errors import BudgetError, EdgemoeError
from runtime.generation.request import PreparedRequest, SamplingParams
from runtime.speculative.draft_budget import minimum_total, split_budget
from runtime.speculative.drafting import NgramDrafter
from runtime.speculative.speculator import Speculator, check_draft_tokens
from runtime.speculative.switch import AutoSwitch, SwitchState

pytestmark = pytest.mark.unit

RNG = np.random.default_rng(0)
GREEDY = SamplingParams()


def _propose(d: NgramDrafter, history: list[int], k: int) -> list[int]:
    return list(d.propose(history, k, GREEDY, RNG).tokens)


# --- n-gram drafting ---------------------------------------------------------------------
def test_ngram_proposes_what_followed_the_longest_recent_match():
    d = NgramDrafter(max_n=3)
    # "7 8 9" occurred twice: the latest occurrence (followed by 5 6) wins over 1 2.
    history = [7, 8, 9, 1, 2, 3, 7, 8, 9, 5, 6, 4, 8, 9]
    # suffix (4, 8, 9) never occurred; (8, 9) did, latest at index 7 -> continuation 5 6 4
    assert _propose(d, history, 3) == [5, 6, 4]
    assert _propose(d, [*history, 5], 2) == [6, 4]  # (8, 9, 5) now matches: the same path


def test_ngram_copies_a_repeating_tail_beyond_the_history():
    d = NgramDrafter()
    assert _propose(d, [3, 1, 2, 1, 2], 5) == [1, 2, 1, 2, 1]
    assert _propose(d, [4, 4, 4], 4) == [4, 4, 4, 4]


def test_ngram_without_a_match_proposes_nothing():
    d = NgramDrafter(min_n=2)
    assert _propose(d, [1, 2, 3, 4], 4) == []
    assert _propose(d, [], 4) == [] and _propose(d, [1, 1], 0) == []


def test_ngram_index_grows_with_the_history_and_restarts_on_a_new_one():
    rng = np.random.default_rng(3)
    history = rng.integers(0, 6, size=300).tolist()
    grown = NgramDrafter()
    for n in range(1, len(history) + 1):
        fresh = NgramDrafter()
        assert _propose(grown, history[:n], 4) == _propose(fresh, history[:n], 4), n
    other = [5, 0, 5, 0]
    assert _propose(grown, other, 3) == _propose(NgramDrafter(), other, 3) == [5, 0, 5]


# --- budget split ------------------------------------------------------------------------
TARGET = {"dense_bytes": 1000, "kv_bytes": 500, "expert_bytes_total": 8000,
          "one_token_expert_bytes": 400}
DRAFT = {"dense_bytes": 300, "kv_bytes": 500, "expert_bytes_total": 2000,
         "one_token_expert_bytes": 200}


def test_a_fraction_keeps_that_fraction_of_both_models_experts():
    t, d = split_budget(BudgetSpec(fraction=0.5), TARGET, DRAFT)
    assert (t.expert_capacity_bytes, d.expert_capacity_bytes) == (4000, 1000)
    assert t.budget_bytes == 1000 + 500 + 4000 and d.budget_bytes == 300 + 500 + 1000


def test_a_byte_budget_is_shared_at_one_fraction():
    total = 1000 + 500 + 300 + 500 + 5000  # half of all experts after both fixed parts
    t, d = split_budget(BudgetSpec(total_bytes=total), TARGET, DRAFT)
    assert (t.expert_capacity_bytes, d.expert_capacity_bytes) == (4000, 1000)
    assert t.budget_bytes + d.budget_bytes == total
    t, d = split_budget(BudgetSpec(total_bytes=10**9), TARGET, DRAFT)  # more than needed
    assert not t.offloading and not d.offloading
    t, d = split_budget(None, TARGET, DRAFT)
    assert not t.offloading and not d.offloading


def test_too_small_for_both_is_refused_with_the_minimum():
    # The draft's one-token share (10 %) is larger than the target's (5 %): it sets the fraction.
    minimum = minimum_total(TARGET, DRAFT)
    assert minimum == 1000 + 500 + 300 + 500 + 1000
    t, d = split_budget(BudgetSpec(total_bytes=minimum), TARGET, DRAFT)
    assert d.expert_capacity_bytes >= 200 and t.expert_capacity_bytes >= 400
    with pytest.raises(BudgetError, match=f"minimum of {minimum:,} bytes for the model and its"):
        split_budget(BudgetSpec(total_bytes=minimum - 1), TARGET, DRAFT)
    # 6 % fits the target alone but not the draft: refused, stating the combined minimum.
    plan_budget(BudgetSpec(fraction=0.06), **TARGET)
    with pytest.raises(BudgetError, match=r"as a fraction: 10\.0%"):
        split_budget(BudgetSpec(fraction=0.06), TARGET, DRAFT)


# --- auto-off switch ---------------------------------------------------------------------
def _steps(switch: AutoSwitch, n: int, produced: int, seconds: float) -> None:
    for _ in range(n):
        switch.record(switch.draft_tokens(), produced if switch.draft_tokens() else 1, seconds)


def test_switch_times_plain_decoding_first_then_keeps_a_winning_draft():
    s = AutoSwitch(4, window=4, plain_tokens=3, backoff=8)
    assert s.state == SwitchState.MEASURE and s.draft_tokens() == 0
    _steps(s, 3, 1, 0.010)  # plain: 100 tok/s
    assert s.state == SwitchState.SPECULATE and s.draft_tokens() == 4
    _steps(s, 1, 3, 1.0)  # the first step after switching on (a draft's catch-up) is not judged
    _steps(s, 12, 3, 0.015)  # 200 tok/s: stays on
    assert s.state == SwitchState.SPECULATE and s.switched_off == 0


def test_switch_turns_a_losing_draft_off_and_retries_with_growing_backoff():
    s = AutoSwitch(4, window=6, early_steps=3, plain_tokens=2, backoff=8, max_backoff=16)
    _steps(s, 2, 1, 0.010)  # plain: 100 tok/s
    _steps(s, 1 + 5, 1, 0.0105)  # 95 tok/s: not a clear loss, so the whole window is awaited
    assert s.state == SwitchState.SPECULATE
    _steps(s, 1, 1, 0.0105)
    assert s.state == SwitchState.PLAIN and s.draft_tokens() == 0 and s.switched_off == 1
    _steps(s, 7, 1, 0.010)
    assert s.state == SwitchState.PLAIN
    _steps(s, 1, 1, 0.010)  # 8 plain tokens of backoff: try again
    assert s.state == SwitchState.SPECULATE
    _steps(s, 1 + 2, 1, 0.020)  # 50 tok/s: a clear loss, off after 3 judged steps
    assert s.state == SwitchState.SPECULATE
    _steps(s, 1, 1, 0.020)
    assert s.state == SwitchState.PLAIN and s.switched_off == 2
    _steps(s, 15, 1, 0.010)  # the second backoff is 16 tokens
    assert s.state == SwitchState.PLAIN
    _steps(s, 1, 1, 0.010)
    assert s.state == SwitchState.SPECULATE


def test_lifetime_speedup_compares_both_modes():
    s = AutoSwitch(4, window=4, plain_tokens=4)
    _steps(s, 4, 1, 0.010)
    _steps(s, 5, 4, 0.020)
    assert s.speedup == pytest.approx(2.0)


def test_switch_off_when_auto_is_off():
    s = AutoSwitch(3, auto=False)
    _steps(s, 20, 1, 1.0)
    assert s.draft_tokens() == 3 and s.switched_off == 0


# --- which requests speculation serves ---------------------------------------------------
@dataclass(frozen=True)
class _LaterParams(SamplingParams):
    """SamplingParams with a field added after speculation was written."""

    later: int | None = None


def test_serves_plain_sampling_and_refuses_fields_it_does_not_implement():
    spec = Speculator(NgramDrafter(), 4)
    plain = PreparedRequest("p", (1, 2), SamplingParams(max_tokens=4, temperature=0.7, top_k=5,
                                                        top_p=0.9, seed=1, stop=("x",)))
    assert spec.serves(plain)
    assert spec.serves(PreparedRequest("p", (1,), _LaterParams(max_tokens=4)))
    assert not spec.serves(PreparedRequest("p", (1,), _LaterParams(max_tokens=4, later=2)))
    for field, value in (("n", 2), ("logprobs", 0), ("logit_bias", {5: 1.0}),
                         ("grammar", 'root ::= "a"')):
        params = SamplingParams(max_tokens=4, **{field: value})
        assert not spec.serves(PreparedRequest("p", (1,), params)), field


def test_draft_tokens_must_be_a_small_positive_integer():
    assert check_draft_tokens(4) == 4
    for bad in (0, -1, 33, 2.0, True, "4"):
        with pytest.raises(EdgemoeError, match="draft_tokens must be an integer in 1..32"):
            check_draft_tokens(bad)


# --- /metrics ----------------------------------------------------------------------------
def test_metrics_publish_the_speculation_figures():
    from runtime.server.metrics import Metrics, ServingFigures

    stats = {"drafted_tokens": 40, "accepted_tokens": 30, "acceptance_rate": 0.75,
             "verify_steps": 10, "speculative_speedup": 1.6, "speculation_active": 1}
    text = Metrics(lambda: ServingFigures("m", 0, 8, False, stats)).render().decode()
    for line in ("edgemoe_speculative_drafted_tokens_total 40.0",
                 "edgemoe_speculative_accepted_tokens_total 30.0",
                 "edgemoe_speculative_verify_steps_total 10.0",
                 "edgemoe_speculative_acceptance_rate 0.75",
                 "edgemoe_speculative_speedup_estimate 1.6",
                 "edgemoe_speculation_active 1.0"):
        assert line in text, line
    # Without a draft none of them appear.
    plain = Metrics(lambda: ServingFigures("m", 0, 8, False, {})).render().decode()
    assert "speculative" not in plain
