"""Token sampling over a logits vector, for engines that have no sampler of their own.

llama.cpp samples with its own chain; onnxruntime only returns logits, so the ONNX backend uses
this one. Same parameters (`SamplerSettings`) and the same order as llama.cpp's chain: greedy at
temperature 0, else top-k, then top-p, then temperature, then a seeded draw. A seed makes a
sampled answer reproducible, and since offloading never changes logits, at every budget.
logit_bias is added by the runtime before either sampler sees the logits, and a constrained
choice's mask (runtime/structured/guide.py) sets the tokens its grammar refuses to -inf.
"""

from __future__ import annotations

import os

import numpy as np

from runtime.backends.base import SamplerSettings


class NumpySampler:
    def __init__(self, params: SamplerSettings) -> None:
        self.params = params
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(4), "little")
        self._rng = np.random.default_rng(seed % 2**32)

    def sample(self, logits: np.ndarray) -> int:
        p = self.params
        x = np.asarray(logits, dtype=np.float64)
        if p.temperature <= 0:
            return int(np.argmax(x))
        order = np.argsort(-x, kind="stable")
        if p.top_k > 0:
            order = order[: p.top_k]
        z = x[order] - x[order[0]]
        probs = np.exp(z)
        probs /= probs.sum()
        if p.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), p.top_p) + 1)
            order, z = order[:keep], z[:keep]
        probs = np.exp(z / p.temperature)
        probs /= probs.sum()
        return int(order[self._rng.choice(len(order), p=probs)])

    def close(self) -> None:
        """Nothing to free; present for the Backend's Sampler protocol."""
