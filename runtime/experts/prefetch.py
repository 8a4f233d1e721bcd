"""Expert prefetch, offline: predictors of the next MoE layers' experts and their scores on
recorded traces (why the runtime pre-gates). Pure (no engine); the prefetch that runs, with its
governor, is runtime/experts/prefetcher.py.

A prefetch is worth its bytes only for experts that are *not* resident when the guess is made:
guessing a resident expert costs nothing and saves nothing. So besides plain recall and
precision (1 and 2 MoE layers ahead, against "the previous token's experts" and uniform
guessing), `evaluate` replays the runtime's own ExpertCache and reports, per predictor, how
many of the target layer's misses the guess covered and how many bytes it would have read for
nothing (wasted bytes).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from contract.files import atomic_write_text, read_json
from runtime.experts.cache import ExpertCache, ExpertState
from runtime.experts.policy import DEFAULT_POLICY
from runtime.experts.pregate import next_layers
from runtime.experts.routing_trace import RoutingTrace, TraceError

PREFETCH_FORMAT = "edgemoe-prefetch-trace"
Guesses = dict[str, dict[int, list[dict[int, tuple[int, ...]]]]]  # source -> d -> t -> T -> ids


@dataclass
class PrefetchTrace:
    """A routing trace plus, optionally, pre-gating guesses recorded with it.

    guesses[source][d][t][target] = experts of MoE layer `target` ranked best first by
    pre-gating from the hidden state `source` (e.g. "ffn_inp") of the MoE layer d before it,
    at token position t.
    """

    trace: RoutingTrace
    top_k: int
    expert_bytes: dict[int, int]
    guesses: Guesses = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PREFETCH_FORMAT,
            "trace": self.trace.to_dict(),
            "top_k": self.top_k,
            "expert_bytes": {str(k): v for k, v in self.expert_bytes.items()},
            "guesses": {
                src: {str(d): [{str(t): list(v) for t, v in row.items()} for row in rows]
                      for d, rows in by_d.items()}
                for src, by_d in self.guesses.items()
            },
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "prefetch trace") -> PrefetchTrace:
        if not isinstance(d, dict) or d.get("format") != PREFETCH_FORMAT:
            raise TraceError(f"{where}: not an edgemoe prefetch trace")
        guesses: Guesses = {
            src: {int(k): [{int(t): tuple(v) for t, v in row.items()} for row in rows]
                  for k, rows in by_d.items()}
            for src, by_d in d.get("guesses", {}).items()
        }
        return cls(RoutingTrace.from_dict(d["trace"], where), int(d["top_k"]),
                   {int(k): int(v) for k, v in d["expert_bytes"].items()}, guesses)

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(Path(path), json.dumps(self.to_dict()) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> PrefetchTrace:
        return cls.from_dict(read_json(Path(path), TraceError, "prefetch trace"), str(path))


# --- predictors ---------------------------------------------------------------------------------
class Predictor(Protocol):
    """Guesses a later layer's experts of the current token, online (sees only the past)."""

    name: str

    def predict(self, t: int, source: int, target: int, m: int) -> Sequence[int]:
        """Up to m experts of `target` at token t, best first; `source`'s routing is known."""

    def observe(self, t: int, layer: int, experts: Sequence[int]) -> None:
        """Token t routed `layer` to `experts` (called in layer order, after predict)."""


class PreviousToken:
    """Baseline: the target layer's experts of the previous token."""

    name = "previous-token"

    def __init__(self) -> None:
        self._last: dict[int, tuple[int, ...]] = {}

    def predict(self, t: int, source: int, target: int, m: int) -> Sequence[int]:
        return self._last.get(target, ())[:m]

    def observe(self, t: int, layer: int, experts: Sequence[int]) -> None:
        self._last[layer] = tuple(experts)


class Uniform:
    """Baseline: m experts drawn uniformly (expected recall and precision m/E and k/E)."""

    name = "uniform"

    def __init__(self, n_experts: int, seed: int = 0) -> None:
        self.n_experts = n_experts
        self._rng = random.Random(seed)

    def predict(self, t: int, source: int, target: int, m: int) -> Sequence[int]:
        return self._rng.sample(range(self.n_experts), min(m, self.n_experts))

    def observe(self, t: int, layer: int, experts: Sequence[int]) -> None:
        pass


class Temporal:
    """(a) Recent tokens' experts at the target layer, each token worth decay**age."""

    name = "temporal"

    def __init__(self, n_experts: int, decay: float = 0.6) -> None:
        self.decay = decay
        self._score: dict[int, np.ndarray] = {}
        self.n_experts = n_experts

    def predict(self, t: int, source: int, target: int, m: int) -> Sequence[int]:
        s = self._score.get(target)
        return [] if s is None else _top(s, m)

    def observe(self, t: int, layer: int, experts: Sequence[int]) -> None:
        s = self._score.setdefault(layer, np.zeros(self.n_experts))
        s *= self.decay
        s[list(experts)] += 1.0


class Frequency(Temporal):
    """(b) The cache policy's view: decayed use counts (LRFU's, half-life in tokens). The same
    mechanism as `Temporal`, with a slow decay instead of a fast one."""

    name = "frequency"

    def __init__(self, n_experts: int, half_life: float = 32.0) -> None:
        super().__init__(n_experts, decay=2.0 ** (-1.0 / half_life))


class Transition:
    """(d) Co-activation: experts that followed this token's source-layer experts before."""

    name = "transition"

    def __init__(self, n_experts: int) -> None:
        self.n_experts = n_experts
        self._counts: dict[tuple[int, int], np.ndarray] = {}
        self._current: dict[int, tuple[int, ...]] = {}
        self._t = -1

    def predict(self, t: int, source: int, target: int, m: int) -> Sequence[int]:
        c = self._counts.get((source, target))
        src = self._current.get(source) if t == self._t else None
        if c is None or not src:
            return []
        return _top(c[list(src)].sum(axis=0), m)

    def observe(self, t: int, layer: int, experts: Sequence[int]) -> None:
        if t != self._t:
            self._t, self._current = t, {}
        for src, ids in self._current.items():
            c = self._counts.setdefault((src, layer), np.zeros((self.n_experts, self.n_experts)))
            c[np.ix_(list(ids), list(experts))] += 1.0
        self._current[layer] = tuple(experts)


class Traced:
    """(c) Pre-gating guesses recorded with the trace: the guess for `target` made from the
    hidden state `source` of the MoE layer `d` before it (`PrefetchTrace.guesses`)."""

    def __init__(self, rows: list[dict[int, tuple[int, ...]]], source: str, d: int) -> None:
        self.name = f"pregate:{source}"
        self._rows = rows

    def predict(self, t: int, source: int, target: int, m: int) -> Sequence[int]:
        return self._rows[t].get(target, ())[:m] if t < len(self._rows) else ()

    def observe(self, t: int, layer: int, experts: Sequence[int]) -> None:
        pass


def _top(scores: np.ndarray, m: int) -> list[int]:
    """The m best-scoring ids, best first, ties to the lower id; zero scores never count."""
    order = np.lexsort((np.arange(scores.size), -scores))[:m]
    return [int(e) for e in order if scores[e] > 0]


# --- evaluation ---------------------------------------------------------------------------------
@dataclass
class Score:
    """One predictor at one distance over a trace."""

    predictor: str
    distance: int
    width: int
    guesses: int = 0  # (token, target layer) pairs scored
    correct: int = 0  # guessed experts the target really used
    guessed: int = 0
    used: int = 0  # experts the targets used
    missed: int = 0  # used experts that were not resident when the guess was made
    covered: int = 0  # of those, guessed
    fetched_bytes: int = 0  # non-resident guessed bytes: what a prefetch reads
    wasted_bytes: int = 0  # of those, not used by the target

    @property
    def recall(self) -> float:
        return self.correct / self.used if self.used else 0.0

    @property
    def precision(self) -> float:
        return self.correct / self.guessed if self.guessed else 0.0

    @property
    def coverage(self) -> float:
        return self.covered / self.missed if self.missed else 0.0


def standard_predictors(ptrace: PrefetchTrace, distance: int, seed: int = 0) -> list[Predictor]:
    """Baselines, (a) temporal, (b) frequency, (d) transition and (c) any recorded pre-gating."""
    n = ptrace.trace.n_experts
    out: list[Predictor] = [PreviousToken(), Uniform(n, seed), Temporal(n), Frequency(n),
                            Transition(n)]
    for source, by_d in sorted(ptrace.guesses.items()):
        if distance in by_d:
            out.append(Traced(by_d[distance], source, distance))
    return out


def evaluate(
    ptrace: PrefetchTrace,
    distances: Sequence[int] = (1, 2),
    width: int | None = None,
    capacity_bytes: int | None = None,
    pinned: Mapping[int, Sequence[int]] | None = None,
    policy: str = DEFAULT_POLICY,
) -> list[Score]:
    """Score every standard predictor at each distance, guessing `width` experts (top_k).

    With `capacity_bytes`, the runtime's ExpertCache (books only) is replayed alongside, so
    each score also says which guesses would have been prefetches (non-resident experts) and
    how many of those bytes were wasted.
    """
    m = width or ptrace.top_k
    trace, sizes = ptrace.trace, ptrace.expert_bytes
    scores: list[Score] = []
    for d in distances:
        preds = standard_predictors(ptrace, d)
        cache = None
        if capacity_bytes is not None:
            cache = ExpertCache(sizes, trace.n_experts, capacity_bytes, pinned, policy)
        rows = {p.name: Score(p.name, d, m) for p in preds}
        for t, step in enumerate(trace.steps):
            for layer in [x for x in trace.moe_layers if x in step]:
                experts = list(dict.fromkeys(step[layer]))
                if cache is not None:
                    cache.access(layer, experts)
                for p in preds:  # the source layer's routing is known when the guess is made
                    p.observe(t, layer, experts)
                targets = next_layers(trace.moe_layers, layer, d)
                if len(targets) == d and targets[-1] in step:
                    _score(rows, preds, cache, sizes, t, layer, targets[-1], step, m)
            if cache is not None:
                cache.end_step()
        scores += rows.values()
    return scores


def _score(rows: dict[str, Score], preds: list[Predictor], cache: ExpertCache | None,
           sizes: Mapping[int, int], t: int, layer: int, target: int,
           step: Mapping[int, Sequence[int]], m: int) -> None:
    actual = set(step[target])
    resident = (
        {e for e in range(cache.n_experts) if cache.state(target, e) is not ExpertState.RELEASED}
        if cache is not None else set()
    )
    for p in preds:
        guess = list(dict.fromkeys(p.predict(t, layer, target, m)))[:m]
        s = rows[p.name]
        s.guesses += 1
        s.guessed += len(guess)
        s.used += len(actual)
        s.correct += len(actual.intersection(guess))
        if cache is None:
            continue
        fetch = [e for e in guess if e not in resident]
        s.missed += len(actual - resident)
        s.covered += len(actual.intersection(fetch))
        s.fetched_bytes += len(fetch) * sizes[target]
        s.wasted_bytes += len([e for e in fetch if e not in actual]) * sizes[target]


def render_scores(scores: Sequence[Score]) -> str:
    """One line per predictor and distance: recall, precision, miss coverage, wasted bytes."""
    head = (f"{'predictor':<18} {'ahead':>5} {'recall':>7} {'precision':>9} {'misses':>7} "
            f"{'covered':>8} {'fetched MiB':>11} {'wasted MiB':>10}")
    lines = [head]
    for s in scores:
        lines.append(
            f"{s.predictor:<18} {s.distance:>5} {s.recall:7.3f} {s.precision:9.3f} "
            f"{s.missed:>7} {s.coverage:8.3f} {s.fetched_bytes / 2**20:11.1f} "
            f"{s.wasted_bytes / 2**20:10.1f}"
        )
    return "\n".join(lines) + "\n"
