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


class LatencyRecorder:
    """Time to first token and inter-token latency over every generation of one Model."""

    def __init__(self) -> None:
        self.ttft = Histogram()
        self.itl = Histogram()
        self._last_start: float | None = None
        self._prompt_start: float | None = None

    def step(self, n_tokens: int, from_empty: bool, start: float) -> None:
        """An engine step of `n_tokens` started at `start` (perf_counter seconds);
        `from_empty`: it began a new context (a prompt)."""
        if from_empty or n_tokens > 1:
            self._prompt_start, self._last_start = start, None
            return
        if self._prompt_start is not None:  # first token: prompt start to its sampling
            self.ttft.observe(start - self._prompt_start)
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
        out["latency_histograms"] = {"ttft_seconds": self.ttft.to_dict(),
                                     "inter_token_seconds": self.itl.to_dict()}
        return out
