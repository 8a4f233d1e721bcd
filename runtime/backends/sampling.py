"""The one sampling chain over a logits vector, for engines without a sampler of their own and
for speculative acceptance.

llama.cpp samples with its own chain; onnxruntime only returns logits, so the ONNX backend uses
this one, and speculative decoding computes the target's distribution with it. Same parameters
(`SamplerSettings`) and the same order as llama.cpp's chain: greedy at temperature 0, else
top-k, then top-p on the untempered softmax, then temperature, then a seeded draw. A seed makes
a sampled answer reproducible, and since offloading never changes logits, at every budget. A
request's seed is resolved once, when it is prepared (`fresh_seed` when none was given).
logit_bias is added by the runtime before either sampler sees the logits, and a constrained
choice (runtime/structured/guide.py) hands a sampler the logits of the allowed tokens only; a
sampler returns the index of its pick in the vector it was given.
"""

from __future__ import annotations

import os

import numpy as np

from runtime.backends.base import SamplerSettings


def fresh_seed() -> int:
    """A seed for a request that gave none (32 bits, from the OS)."""
    return int.from_bytes(os.urandom(4), "little")


def sampling_distribution(logits: np.ndarray, params: SamplerSettings) -> np.ndarray:
    """The probabilities the chain draws from for these logits, over the whole vocabulary
    (tokens the chain cuts get 0; temperature 0 is a point mass on the argmax)."""
    x = np.asarray(logits, dtype=np.float64)
    out = np.zeros(x.shape[0], dtype=np.float64)
    if params.temperature <= 0:
        out[int(np.argmax(x))] = 1.0
        return out
    order = np.argsort(-x, kind="stable")
    if params.top_k > 0:
        order = order[: params.top_k]
    z = x[order] - x[order[0]]
    if params.top_p < 1.0:
        probs = np.exp(z)
        probs /= probs.sum()
        keep = int(np.searchsorted(np.cumsum(probs), params.top_p) + 1)
        order, z = order[:keep], z[:keep]
    probs = np.exp(z / params.temperature)
    out[order] = probs / probs.sum()
    return out


def draw(probs: np.ndarray, rng: np.random.Generator) -> int:
    """One token from a probability vector (inverse CDF: one uniform, no re-normalising copy)."""
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(probs) - 1))


class NumpySampler:
    """The chain as an engine's Sampler (the `Backend.sampler` of the ONNX backend)."""

    def __init__(self, params: SamplerSettings) -> None:
        self.params = params
        seed = params.seed if params.seed is not None else fresh_seed()
        self._rng = np.random.default_rng(seed % 2**32)

    def sample(self, logits: np.ndarray) -> int:
        if self.params.temperature <= 0:
            return int(np.argmax(logits))
        return draw(sampling_distribution(logits, self.params), self._rng)

    def close(self) -> None:
        """Nothing to free; present for the Backend's Sampler protocol."""
