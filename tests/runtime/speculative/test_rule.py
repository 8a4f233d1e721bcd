"""The speculative acceptance rule against exact distributions: greedy keeps the target's argmax,
and sampled output is distributed as the target's own draws, whatever the draft proposes."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest

from runtime.backends.sampling import NumpySampler, draw, sampling_distribution
from runtime.generation.request import SamplingParams
from runtime.speculative.acceptance import Verdict, accept_greedy, accept_sampled

pytestmark = pytest.mark.unit

# A 4-token Markov chain: row a is the next-token distribution after token a. The target has
# zeros where the draft has mass (and the other way round), so the residual and the
# zero-probability paths are both exercised.
TARGET = np.array(
    [
        [0.50, 0.30, 0.20, 0.00],
        [0.10, 0.00, 0.60, 0.30],
        [0.25, 0.25, 0.25, 0.25],
        [0.00, 0.70, 0.10, 0.20],
    ]
)
DRAFT = np.array(
    [
        [0.10, 0.10, 0.40, 0.40],
        [0.70, 0.10, 0.20, 0.00],
        [0.05, 0.05, 0.10, 0.80],
        [0.30, 0.30, 0.40, 0.00],
    ]
)
START, LENGTH, K = 2, 3, 2


def _chi2_critical(df: int, z: float = 3.09) -> float:
    """The chi-square quantile at the normal quantile z (3.09: alpha 0.001), Wilson-Hilferty."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _exact_joint() -> dict[tuple[int, ...], float]:
    out: dict[tuple[int, ...], float] = {(): 1.0}
    for _ in range(LENGTH):
        out = {
            seq + (x,): prob * TARGET[seq[-1] if seq else START][x]
            for seq, prob in out.items()
            for x in range(4)
        }
    return out


Rows = list[np.ndarray]
Rule = Callable[[list[int], Rows | None, Rows, np.random.Generator], Verdict]


def _speculate(rule: Rule, drafted_by_model: bool, trials: int, seed: int) -> Counter:
    """Generate LENGTH tokens `trials` times the way runtime/speculative/speculator.py does: the
    draft proposes K tokens from the last one, the target's rows follow each verified position."""
    rng = np.random.default_rng(seed)
    counts: Counter = Counter()
    for _ in range(trials):
        out: list[int] = []
        last = START
        while len(out) < LENGTH:
            draft: list[int] = []
            probs: list[np.ndarray] = []
            prev = last
            for _ in range(K):
                if drafted_by_model:
                    q = DRAFT[prev]
                    tok = draw(q, rng)
                    probs.append(q)
                else:  # a deterministic drafter (n-gram lookup): next token id, cyclically
                    tok = (prev + 1) % 4
                draft.append(tok)
                prev = tok
            rows = [TARGET[last]] + [TARGET[t] for t in draft]
            v = rule(draft, probs if drafted_by_model else None, rows, rng)
            new = draft[: v.accepted] + [v.token]
            out.extend(new)
            last = out[-1]
        counts[tuple(out[:LENGTH])] += 1
    return counts


def _fit(counts: Counter, trials: int) -> tuple[float, float, int, int]:
    """(chi-square over possible outcomes, total variation, df, count of impossible outcomes)."""
    exact = _exact_joint()
    chi2 = sum(
        (counts.get(seq, 0) - trials * p) ** 2 / (trials * p) for seq, p in exact.items() if p > 0
    )
    tv = 0.5 * sum(abs(counts.get(seq, 0) / trials - p) for seq, p in exact.items())
    impossible = sum(n for seq, n in counts.items() if exact.get(seq, 0.0) == 0.0)
    df = sum(1 for p in exact.values() if p > 0) - 1
    return chi2, tv, df, impossible


@pytest.mark.parametrize("drafted_by_model", [True, False], ids=["model-draft", "ngram-draft"])
def test_sampled_output_follows_the_target_distribution(drafted_by_model):
    trials = 30_000
    counts = _speculate(accept_sampled, drafted_by_model, trials, seed=1234)
    chi2, tv, df, impossible = _fit(counts, trials)
    assert impossible == 0, "emitted a sequence the target gives probability 0"
    assert chi2 < _chi2_critical(df), f"chi-square {chi2:.1f} over {df} df"
    assert tv < 0.02, f"total variation {tv:.4f}"


def test_the_check_detects_a_wrong_rule():
    """Keeping every drafted token (no rejection) follows the draft, and the test says so."""

    def keep_all(draft, q, p, rng):
        return Verdict(len(draft), draw(p[len(draft)], rng))

    trials = 5_000
    chi2, tv, df, impossible = _fit(_speculate(keep_all, True, trials, seed=1234), trials)
    assert chi2 > _chi2_critical(df) and tv > 0.05


def test_greedy_keeps_the_target_argmax():
    rows = np.array([[0, 5, 1], [9, 0, 0], [0, 0, 3], [1, 2, 0]], dtype=np.float32)
    assert accept_greedy([1, 0, 2], rows) == Verdict(3, 1)  # all kept, bonus from the last row
    assert accept_greedy([1, 2, 2], rows) == Verdict(1, 0)  # second rejected: target's argmax
    assert accept_greedy([0], rows[:2]) == Verdict(0, 1)
    assert accept_greedy([], rows[:1]) == Verdict(0, 1)  # no draft: a plain step


def test_distribution_is_the_numpy_samplers_chain():
    """top-k, top-p (untempered), temperature: the draws of NumpySampler match the vector."""
    logits = np.array([2.0, 1.5, 1.0, 0.2, -1.0, 0.9])
    params = SamplingParams(temperature=0.7, top_k=5, top_p=0.9, seed=5)
    p = sampling_distribution(logits, params)
    assert p.sum() == pytest.approx(1.0) and p[4] == 0.0  # cut by top-k
    sampler = NumpySampler(params)
    n = 10_000
    seen = np.bincount([sampler.sample(logits) for _ in range(n)], minlength=6) / n
    assert np.abs(seen - p).max() < 0.02
    greedy = sampling_distribution(logits, SamplingParams())
    assert greedy.tolist() == [1.0, 0, 0, 0, 0, 0]
