"""Token log-probabilities as OpenAI reports them: the chosen token's and the most likely ones.

Computed from the logits the engine returned (plus any logit_bias), before temperature, top-k,
top-p and a grammar reshape the distribution: what the model itself gave each token, which is what
OpenAI reports. Engine-independent (numpy), so llama.cpp and onnxruntime answer alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class TopLogprob:
    token: int
    bytes: bytes
    logprob: float

    @property
    def text(self) -> str:
        return token_text(self.bytes)


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its log-probability and the `top` most likely alternatives."""

    token: int
    bytes: bytes
    logprob: float
    top: tuple[TopLogprob, ...] = ()

    @property
    def text(self) -> str:
        return token_text(self.bytes)


def token_text(data: bytes) -> str:
    """A token's text; a token holding part of a UTF-8 character is shown as its bytes
    (`bytes:\\xe2\\x80`), as OpenAI does, since the `bytes` field carries the exact value."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in data)


def token_logprob(
    logits: np.ndarray, token: int, top: int, token_bytes: Callable[[int], bytes]
) -> TokenLogprob:
    """The log-probability of `token` under softmax(logits), and the `top` best alternatives."""
    x = np.asarray(logits, dtype=np.float64)
    m = float(np.max(x))
    lse = m + float(np.log(np.sum(np.exp(x - m))))
    alternatives: tuple[TopLogprob, ...] = ()
    if top > 0:
        k = min(top, x.size)
        best = np.argpartition(-x, k - 1)[:k]
        best = best[np.lexsort((best, -x[best]))]  # by logit, ties by token id
        alternatives = tuple(
            TopLogprob(int(t), token_bytes(int(t)), float(x[t] - lse)) for t in best
        )
    return TokenLogprob(int(token), token_bytes(int(token)), float(x[token] - lse), alternatives)
