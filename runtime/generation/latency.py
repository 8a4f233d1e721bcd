"""Per-token latency of a Model: time to first token and inter-token latency, as histograms.

`Model._decode` (one engine step) calls `LatencyRecorder.step` around every step, which is all
the generation loop needs to give: a step that starts from an empty context is a prompt, and the
gap between the starts of consecutive one-token steps is the time one token took (sampling
included). Cumulative Prometheus-style buckets for /metrics plus a bounded window of recent
samples for p50/p95; recording is two clock reads and a few additions, never an allocation that
grows with the run.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field
from typing import Any

# Seconds: from sub-millisecond steps of small models to multi-second cold prompts.
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
WINDOW = 4096  # recent samples kept for percentiles


@dataclass
class Histogram:
    """Counts per upper bound (BUCKETS, then +Inf), their sum, and the recent samples."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds
        self.recent.append(seconds)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> float | None:
        """The q-quantile of the recent samples (nearest rank), None without samples."""
        if not self.recent:
            return None
        ordered = sorted(self.recent)
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]

    def to_dict(self) -> dict[str, Any]:
        """Cumulative buckets as Prometheus wants them: [(upper bound, count <= bound)]."""
        cumulative: list[tuple[float | str, int]] = []
        running = 0
        for bound, n in zip((*BUCKETS, "+Inf"), self.counts, strict=True):  # JSON-safe +Inf
            running += n
            cumulative.append((bound, running))
        p50, p95 = self.quantile(0.5), self.quantile(0.95)
        return {"buckets": cumulative, "sum": self.total, "count": running,
                "p50": p50, "p95": p95}


@dataclass
class PromptTiming:
    """Where one prompt's time to first token went (ms; None where it was not measured).

    step_ms is the engine step over the prompt batch: llama.cpp building the graph (`graph_ms`:
    from the decode call to the first node it computes), the pager at routing events
    (`experts_ms`: admissions, the expert reads it waited for, first-read checks, of which
    `verify_ms` hashing) and the rest, computing (`compute_ms`, which also holds page faults
    on weights not yet in memory: `dense_pending_bytes` says how many dense bytes were still to
    be read when the prompt started). `first_sample_ms` is what follows the step until the
    first token is sampled and handed on (the next step's start): ttft_ms = step + that."""

    tokens: int
    step_ms: float
    graph_ms: float | None
    experts_ms: float
    verify_ms: float
    expert_bytes: int
    dense_pending_bytes: int | None
    first_sample_ms: float | None = None
    ttft_ms: float | None = None

    @property
    def compute_ms(self) -> float:
        return max(0.0, self.step_ms - (self.graph_ms or 0.0) - self.experts_ms)

    def to_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__},
                "compute_ms": self.compute_ms}


class LatencyRecorder:
    """Time to first token and inter-token latency over every generation of one Model."""

    def __init__(self) -> None:
        self.ttft = Histogram()
        self.itl = Histogram()
        self._last_start: float | None = None
        self._prompt_start: float | None = None
        self.last_prompt: PromptTiming | None = None  # the latest prompt's breakdown

    def step(self, n_tokens: int, from_empty: bool, start: float,
             prompt: PromptTiming | None = None) -> None:
        """An engine step of `n_tokens` started at `start` (perf_counter seconds);
        `from_empty`: it began a new context (a prompt); `prompt`: where a prompt step's time
        went (completed with the time to first token when the next step starts)."""
        if from_empty or n_tokens > 1:
            self._prompt_start, self._last_start = start, None
            if prompt is not None:
                self.last_prompt = prompt
            return
        if self._prompt_start is not None:  # first token: prompt start to its sampling
            ttft = start - self._prompt_start
            self.ttft.observe(ttft)
            p = self.last_prompt
            if p is not None and p.ttft_ms is None:
                p.ttft_ms = ttft * 1e3
                p.first_sample_ms = max(0.0, p.ttft_ms - p.step_ms)
            self._prompt_start = None
        elif self._last_start is not None:
            self.itl.observe(start - self._last_start)
        self._last_start = start

    def stats(self) -> dict[str, Any]:
        """For Model.stats(): p50/p95 in milliseconds and the raw histograms for /metrics."""
        out: dict[str, Any] = {}
        for name, h in (("ttft", self.ttft), ("itl", self.itl)):
            for q in (50, 95):
                v = h.quantile(q / 100)
                out[f"{name}_ms_p{q}"] = None if v is None else v * 1e3
        out["ttft_breakdown"] = (self.last_prompt.to_dict() if self.last_prompt is not None
                                 else None)
        out["latency_histograms"] = {"ttft_seconds": self.ttft.to_dict(),
                                     "inter_token_seconds": self.itl.to_dict()}
        return out
