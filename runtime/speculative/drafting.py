"""Drafters for speculative decoding: what proposes the next tokens for the target to verify.

Two kinds behind one small protocol. `NgramDrafter` (prompt lookup) copies what followed the
most recent earlier occurrence of the text's last n tokens; it needs no model and no memory,
and pays off when the answer repeats its prompt or itself (code, extraction, edits).
`ModelDrafter` runs a smaller build of the same checkpoint (low-bit or pruned) as a full
`Model`, with its own expert cache and budget share; its KV cache follows the accepted text by
truncation (`Backend.truncate`), so a rejection costs no re-prefill.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from runtime.backends.sampling import draw, sampling_distribution
from runtime.bundles.open import OpenBundle
from runtime.errors import EdgemoeError
from runtime.generation.decoding import Decoder
from runtime.generation.request import SamplingParams


class DraftFigures(Protocol):
    """The draft model's own figures the target reports (a `ModelStats` is one)."""

    budget_bytes: int
    dense_bytes: int
    kv_bytes: int
    expert_capacity_bytes: int
    resident_expert_bytes: int
    hits: int
    misses: int
    bytes_loaded: int


class DraftModel(Decoder, Protocol):
    """What a model drafter needs of the smaller model (`runtime.model.Model` is the one)."""

    @property
    def lock(self) -> threading.Lock:
        """Held while the model decodes (its own generations, and these proposals)."""
        ...

    @property
    def bundle(self) -> OpenBundle: ...

    def stats(self) -> DraftFigures: ...

    def close(self) -> None: ...

NGRAM = "ngram"  # `load(draft=...)` value that selects prompt lookup instead of a bundle
NGRAM_MAX = 4  # longest suffix looked up; longer matches predict better, shorter match more
NGRAM_MIN = 1
# DraftFigures reported by the target's stats, prefixed "draft_".
DRAFT_FIGURES = ("budget_bytes", "dense_bytes", "kv_bytes", "expert_capacity_bytes",
                 "resident_expert_bytes", "hits", "misses", "bytes_loaded")


@dataclass(frozen=True)
class Draft:
    """Proposed tokens, and the distribution each was drawn from (None: a deterministic pick)."""

    tokens: tuple[int, ...]
    probs: tuple[np.ndarray, ...] | None = None


EMPTY = Draft(())


class Drafter(Protocol):
    """Proposes up to k tokens to follow `history` (prompt + accepted output)."""

    kind: str

    def start(self, prompt: Sequence[int]) -> None:
        """A new sequence starts with `prompt`: a draft model prefills it now, within the
        request's prefill rather than its first decode step."""
        ...

    def propose(
        self, history: Sequence[int], k: int, params: SamplingParams, rng: np.random.Generator
    ) -> Draft: ...

    def stats(self) -> dict[str, Any]:
        """The drafter's own figures for Model.stats() (a draft model's memory and cache)."""
        ...

    def close(self) -> None: ...


class NgramDrafter:
    """Prompt lookup: the continuation of the longest recent n-gram match in prompt + output.

    An index maps each n-gram (n in [min_n, max_n]) to where its latest occurrence ended; it is
    extended as the history grows, so a proposal costs O(max_n) lookups, not a scan.
    """

    kind = NGRAM

    def __init__(self, max_n: int = NGRAM_MAX, min_n: int = NGRAM_MIN) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"n-gram sizes must satisfy 1 <= min_n <= max_n, got {min_n}, {max_n}")
        self.max_n, self.min_n = max_n, min_n
        self.reset()

    def start(self, prompt: Sequence[int]) -> None:
        self.reset()
        self._extend(prompt)

    def reset(self) -> None:
        self._index: dict[int, dict[tuple[int, ...], int]] = {
            n: {} for n in range(self.min_n, self.max_n + 1)
        }
        self._seen: list[int] = []  # the history indexed so far
        self._next = 1  # the next continuation start to index

    def _extend(self, history: Sequence[int]) -> None:
        """Index every n-gram that has a continuation, i.e. ends before the last token; the
        n-grams ending at the last token wait for the next call (now they could only match
        themselves)."""
        seen = self._seen
        if len(history) < len(seen) or list(history[: len(seen)]) != seen:
            self.reset()
            seen = self._seen
        seen.extend(history[len(seen) :])
        for c in range(self._next, len(seen)):  # c: where an n-gram's continuation starts
            for n, index in self._index.items():
                if c >= n:
                    index[tuple(seen[c - n : c])] = c
        self._next = max(self._next, len(seen))

    def propose(
        self, history: Sequence[int], k: int, params: SamplingParams, rng: np.random.Generator
    ) -> Draft:
        if k <= 0 or not history:
            return EMPTY
        self._extend(history)
        h = list(history)
        for n in range(min(self.max_n, len(h)), self.min_n - 1, -1):
            start = self._index[n].get(tuple(h[-n:]))
            if start is None:
                continue
            out: list[int] = []
            for j in range(k):  # an overlapping copy: a repeating tail keeps repeating
                src = start + j
                out.append(h[src] if src < len(h) else out[src - len(h)])
            return Draft(tuple(out))
        return EMPTY

    def stats(self) -> dict[str, Any]:
        return {"draft_budget_bytes": 0}

    def close(self) -> None:
        self.reset()


class ModelDrafter:
    """A smaller model of the same vocabulary drafting token by token from its own KV cache.

    The draft's cache holds a prefix of the history; each proposal first truncates it to the
    part the target accepted, feeds what is new (usually the target's correction or bonus
    token) in one batch, then drafts greedily or by sampling with the target's parameters.
    """

    kind = "model"

    def __init__(self, model: DraftModel) -> None:
        self.model = model
        self._fed: list[int] = []  # tokens in the draft's KV cache, in order

    def start(self, prompt: Sequence[int]) -> None:
        # The draft model's lock, as its own generations would hold it: Model.stats() from
        # another thread then never replays the engine's routing log while this one decodes.
        with self.model.lock:
            self.model.engine.reset()
            self._fed = []
            if prompt:
                self._decode(list(prompt))

    def _decode(self, tokens: list[int]) -> np.ndarray:
        """The draft model's paged decode step (not timed: its tokens are not the answer's)."""
        logits = self.model.step(tokens, timed=False)
        self._fed.extend(tokens)
        return logits

    def propose(
        self, history: Sequence[int], k: int, params: SamplingParams, rng: np.random.Generator
    ) -> Draft:
        if k <= 0 or not history:
            return EMPTY
        with self.model.lock:
            return self._propose(history, k, params, rng)

    def _propose(
        self, history: Sequence[int], k: int, params: SamplingParams, rng: np.random.Generator
    ) -> Draft:
        keep = _common_prefix(self._fed, history)
        keep = min(keep, len(history) - 1)  # feed at least one token to get its logits
        self.model.engine.truncate(keep)
        del self._fed[keep:]
        logits = self._decode(list(history[keep:]))
        tokens: list[int] = []
        probs: list[np.ndarray] = []
        greedy = params.temperature <= 0
        for i in range(k):
            if greedy:
                token = int(np.argmax(logits))
            else:
                q = sampling_distribution(logits, params)
                token = draw(q, rng)
                probs.append(q)
            tokens.append(token)
            if self.model.engine.is_eog(token):
                break  # nothing the target could keep follows an end of generation
            if i + 1 < k:
                logits = self._decode([token])
        return Draft(tuple(tokens), None if greedy else tuple(probs))

    def stats(self) -> dict[str, Any]:
        s = self.model.stats()
        return {"draft_bundle": str(self.model.bundle.path)} | {
            f"draft_{key}": getattr(s, key) for key in DRAFT_FIGURES
        }

    def close(self) -> None:
        self.model.close()


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def check_vocabularies(target: DraftModel, draft: DraftModel) -> None:
    """Refuse a draft whose token ids do not mean what the target's mean: same vocabulary size,
    same bytes for every token, same end-of-sequence token."""
    t, d = target.engine, draft.engine
    where = f"draft {draft.bundle.path} does not share the vocabulary of {target.bundle.path}"
    if t.n_vocab != d.n_vocab:
        raise EdgemoeError(f"{where}: {d.n_vocab} tokens vs {t.n_vocab}")
    if t.eos_token() != d.eos_token():
        raise EdgemoeError(f"{where}: end-of-sequence token {d.eos_token()} vs {t.eos_token()}")
    for token in range(t.n_vocab):
        a, b = t.token_bytes(token), d.token_bytes(token)
        if a != b:
            raise EdgemoeError(f"{where}: token {token} is {b!r} in the draft, {a!r} in the target")
