"""The numpy sampler (used by engines without their own): greedy, filters, seeded draws."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.backends.sampling import NumpySampler
from runtime.generation.request import SamplingParams

pytestmark = pytest.mark.unit

LOGITS = np.log(np.array([0.05, 0.5, 0.2, 0.15, 0.1]))


def _draws(params: SamplingParams, n: int = 4000) -> np.ndarray:
    s = NumpySampler(params)
    return np.bincount([s.sample(LOGITS) for _ in range(n)], minlength=len(LOGITS)) / n


def test_greedy_is_argmax() -> None:
    assert NumpySampler(SamplingParams(temperature=0.0)).sample(LOGITS) == 1


def test_temperature_one_follows_the_distribution() -> None:
    freq = _draws(SamplingParams(temperature=1.0, seed=7))
    assert np.allclose(freq, np.exp(LOGITS), atol=0.03)


def test_top_k_and_top_p_cut_the_tail() -> None:
    assert set(np.flatnonzero(_draws(SamplingParams(temperature=1.0, top_k=2, seed=1)))) == {1, 2}
    # cumulative 0.5, 0.7, 0.85: top_p=0.75 keeps the three most likely
    kept = np.flatnonzero(_draws(SamplingParams(temperature=1.0, top_p=0.75, seed=2)))
    assert set(kept) == {1, 2, 3}


def _sequence(seed: int, n: int = 50) -> list[int]:
    sampler = NumpySampler(SamplingParams(temperature=1.0, seed=seed))
    return [sampler.sample(LOGITS) for _ in range(n)]


def test_seed_reproduces_and_differs() -> None:
    assert _sequence(5) == _sequence(5)
    assert _sequence(5) != _sequence(6)


def test_drawing_among_allowed_tokens_is_the_masked_draw() -> None:
    """A constrained choice hands the sampler only the allowed tokens' logits (Sampler): with
    the same seed it picks what it would over the whole vocabulary with the rest at -inf."""
    rng = np.random.default_rng(3)
    for params in (SamplingParams(temperature=0.8, seed=11),
                   SamplingParams(temperature=1.0, top_k=3, top_p=0.9, seed=12)):
        whole, subset = NumpySampler(params), NumpySampler(params)
        for _ in range(200):
            logits = rng.standard_normal(64).astype(np.float32) * 3
            allowed = np.sort(rng.choice(64, int(rng.integers(1, 9)), replace=False))
            masked = np.full(64, -np.inf, dtype=np.float32)
            masked[allowed] = logits[allowed]
            assert whole.sample(masked) == allowed[subset.sample(logits[allowed])]
