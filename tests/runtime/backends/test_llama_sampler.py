"""llama.cpp's sampler chain over part of the vocabulary (a constrained choice's allowed tokens)."""

from __future__ import annotations

import numpy as np
import pytest

import runtime
from runtime.generation.request import SamplingParams

pytestmark = pytest.mark.engine


def test_drawing_among_allowed_tokens_is_the_masked_draw(tiny_bundle) -> None:
    """Given only the allowed tokens' logits, the chain returns the index of the token it
    picks over the whole vocabulary with the others at -inf, draw for draw (same seed)."""
    rng = np.random.default_rng(5)
    with runtime.load(tiny_bundle, backend="llama.cpp", n_ctx=64, threads=1) as model:
        n = model.engine.n_vocab
        for params in (SamplingParams(temperature=0.7, seed=21),
                       SamplingParams(temperature=1.0, top_k=4, top_p=0.95, seed=22),
                       SamplingParams(temperature=0.0)):
            whole, subset = model.engine.sampler(params), model.engine.sampler(params)
            try:
                for _ in range(100):
                    logits = rng.standard_normal(n).astype(np.float32) * 3
                    allowed = np.sort(rng.choice(n, int(rng.integers(1, 12)), replace=False))
                    masked = np.full(n, -np.inf, dtype=np.float32)
                    masked[allowed] = logits[allowed]
                    picked = whole.sample(masked)
                    assert picked in allowed
                    assert picked == allowed[subset.sample(logits[allowed])]
            finally:
                whole.close()
                subset.close()
