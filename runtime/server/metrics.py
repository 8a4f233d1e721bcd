"""Server metrics for Prometheus, through prometheus_client and one registry per app.

Counters of the HTTP layer and of finished generations are prometheus_client instruments
(thread-safe: the event loop and the engine thread both update them). Figures that exist only at
scrape time (queue, engine, the runtime's expert cache from `Model.stats()`, the last run's
speeds) come from a collector that asks the server state when /metrics is read.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from runtime.generation.request import StreamEvent

PREFIX = "edgemoe"
# The classic text format (what generate_latest writes), understood by every Prometheus.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Model.stats().to_json() key (runtime/stats/record.py) -> (metric name, type, help). Counters
# are cumulative in the runtime.
RUNTIME_FIGURES: tuple[tuple[str, str, str, str], ...] = (
    ("budget_bytes", "budget_bytes", "gauge", "Memory budget for weights and KV cache."),
    ("dense_bytes", "dense_bytes", "gauge", "Bytes of always-resident (non-expert) weights."),
    ("kv_bytes", "kv_cache_bytes", "gauge", "Bytes of the KV cache."),
    ("expert_bytes_total", "expert_bytes_total", "gauge", "Bytes of all experts in the bundle."),
    ("expert_capacity_bytes", "expert_capacity_bytes", "gauge",
     "Bytes of experts the budget lets stay resident."),
    ("resident_expert_bytes", "resident_expert_bytes", "gauge", "Bytes of experts resident now."),
    ("pinned_bytes", "pinned_expert_bytes", "gauge", "Bytes of pinned (hot) experts."),
    ("pinned_share", "pinned_routing_share", "gauge",
     "Share of routings the pinned experts served in calibration (calibrated bundles)."),
    ("hits", "expert_cache_hits_total", "counter", "Expert lookups served from memory."),
    ("misses", "expert_cache_misses_total", "counter", "Expert lookups that loaded from storage."),
    ("bytes_loaded", "expert_bytes_loaded_total", "counter", "Expert bytes loaded from storage."),
    ("evictions", "expert_evictions_total", "counter", "Experts evicted to stay within budget."),
    ("budget_changes", "budget_changes_total", "counter",
     "Budget changes while loaded (set_budget, POST /admin/budget, --follow-pressure)."),
    ("tokens_decoded", "tokens_decoded_total", "counter",
     "Tokens the model computed (prompts included): the clock of budget_history."),
    ("experts_verified", "experts_verified_total", "counter",
     "Experts checked against the manifest's checksums on their first read."),
    ("expert_bytes_verified", "expert_bytes_verified_total", "counter",
     "Expert bytes checked against the manifest's checksums."),
    ("dense_bytes_verified", "dense_bytes_verified_total", "counter",
     "Dense (and, at a full budget, expert) bytes the background check verified."),
    ("integrity_faults", "model_corrupt", "gauge",
     "1 once the model found damaged weights or a storage fault (it answers 503)."),
    ("process_rss_bytes", "process_rss_bytes", "gauge", "Resident set size of the process."),
    ("mapping_rss_bytes", "model_mapping_rss_bytes", "gauge",
     "Resident bytes of the model file mapping."),
    # Speculative decoding (present only with a draft: runtime/speculative/speculator.py).
    ("drafted_tokens", "speculative_drafted_tokens_total", "counter",
     "Tokens a draft proposed for verification."),
    ("accepted_tokens", "speculative_accepted_tokens_total", "counter",
     "Drafted tokens the target kept."),
    ("verify_steps", "speculative_verify_steps_total", "counter",
     "Target decodes that verified a draft."),
    ("acceptance_rate", "speculative_acceptance_rate", "gauge",
     "Accepted over drafted tokens since load."),
    ("speculative_speedup", "speculative_speedup_estimate", "gauge",
     "Speculative over plain decode tokens/s, both timed since load."),
    ("speculation_active", "speculation_active", "gauge",
     "1 while drafting, 0 while switched off because it did not pay."),
    ("draft_budget_bytes", "draft_budget_bytes", "gauge",
     "Part of the memory budget held by the draft model."),
)

# StreamEvent.timings key (or "completion_tokens") -> (gauge name, help): the last generation.
LAST_RUN: tuple[tuple[str, str, str], ...] = (
    ("prefill_tok_s", "last_prefill_tokens_per_second", "Prefill speed, last run."),
    ("decode_tok_s", "last_decode_tokens_per_second", "Decode speed, last run."),
    ("ttft_s", "last_ttft_seconds", "Time to first token of the last run."),
    ("completion_tokens", "last_completion_tokens", "Tokens made by the last run."),
)


@dataclass(frozen=True)
class ServingFigures:
    """What the server state reports at scrape time."""

    model_id: str | None
    queue_depth: int
    queue_capacity: int
    busy: bool
    stats: Mapping[str, Any] | None  # Model.stats().to_json(), None until the model is loaded


class Metrics:
    """One server's metrics in its own CollectorRegistry (several apps may share a process)."""

    def __init__(self, figures: Callable[[], ServingFigures]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(f"{PREFIX}_http_requests",
                                     "HTTP requests by endpoint and status.",
                                     ["endpoint", "status"], registry=r)
        self.http_seconds = Counter(f"{PREFIX}_http_request_seconds",
                                    "Seconds spent answering HTTP requests, by endpoint.",
                                    ["endpoint"], registry=r)
        self.prompt_tokens = Counter(f"{PREFIX}_prompt_tokens", "Prompt tokens processed.",
                                     registry=r)
        self.completion_tokens = Counter(f"{PREFIX}_completion_tokens",
                                         "Tokens generated, by how the generation finished.",
                                         ["finish_reason"], registry=r)
        self.generations = Counter(
            f"{PREFIX}_generations",
            "Generations run, by how they finished (cancelled: client left or timeout).",
            ["finish_reason"], registry=r)
        self.generation_seconds = Counter(f"{PREFIX}_generation_seconds",
                                          "Seconds the engine spent generating.", registry=r)
        self.prefill_seconds = Counter(f"{PREFIX}_prefill_seconds",
                                       "Seconds spent in prompt prefill.", registry=r)
        self.decode_seconds = Counter(f"{PREFIX}_decode_seconds", "Seconds spent decoding tokens.",
                                      registry=r)
        self._scrape = _ScrapeCollector(figures)
        r.register(self._scrape)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.http_requests.labels(endpoint, str(status)).inc()
        self.http_seconds.labels(endpoint).inc(seconds)

    def observe_generation(self, final: StreamEvent, seconds: float) -> None:
        """The engine's hook for every finished generation (its final event)."""
        reason = final.finish_reason or "stop"
        timings = final.timings or {}
        self.generations.labels(reason).inc()
        self.generation_seconds.inc(seconds)
        self.prefill_seconds.inc(timings.get("prefill_s", 0.0))
        self.decode_seconds.inc(timings.get("decode_s", 0.0))
        last = {k: float(timings[k]) for k, _, _ in LAST_RUN if k in timings}
        if final.usage is not None:
            self.prompt_tokens.inc(final.usage.prompt_tokens)
            self.completion_tokens.labels(reason).inc(final.usage.completion_tokens)
            last["completion_tokens"] = final.usage.completion_tokens
        self._scrape.last = last  # one reference swap: a scrape sees one run's figures

    def render(self) -> bytes:
        """The Prometheus text exposition of everything above."""
        return generate_latest(self.registry)


class _ScrapeCollector:
    """Figures read when /metrics is scraped; families without a value are left out."""

    def __init__(self, figures: Callable[[], ServingFigures]) -> None:
        self._figures = figures
        self.last: Mapping[str, float] = {}  # the last generation's LAST_RUN figures

    def collect(self) -> Iterator[Metric]:
        f = self._figures()
        for key, name, help_text in LAST_RUN:
            if key in self.last:
                yield _gauge(name, help_text, self.last[key])
        yield _gauge("queue_depth", "Requests waiting for the engine.", f.queue_depth)
        yield _gauge("queue_capacity", "Requests allowed to wait.", f.queue_capacity)
        yield _gauge("engine_busy", "1 while a generation runs.", int(f.busy))
        if f.model_id is not None:
            info = GaugeMetricFamily(f"{PREFIX}_model_info", "The model being served.",
                                     labels=["model"])
            info.add_metric([f.model_id], 1)
            yield info
        stats = f.stats or {}
        for key, name, kind, help_text in RUNTIME_FIGURES:
            value = stats.get(key)
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                if kind == "counter":
                    yield CounterMetricFamily(f"{PREFIX}_{name}", help_text, value=value)
                else:
                    yield _gauge(name, help_text, value)
        if isinstance(stats.get("offloading"), bool):
            yield _gauge("expert_offloading", "1 when experts are paged within a budget.",
                         int(stats["offloading"]))
        hot = stats.get("hot_experts") or {}
        if isinstance(hot, Mapping) and hot:
            pinned = GaugeMetricFamily(f"{PREFIX}_pinned_experts",
                                       "Pinned (hot) experts per layer.", labels=["layer"])
            for layer, experts in sorted(hot.items(), key=lambda kv: int(kv[0])):
                pinned.add_metric([str(layer)], len(experts))
            yield pinned
        yield from _latency(stats.get("latency_histograms"))


# Model.stats().latency.latency_histograms field (runtime/stats/record.py) -> help text.
LATENCY: tuple[tuple[str, str], ...] = (
    ("ttft_seconds", "Time to first token: prompt start to the first sampled token."),
    ("inter_token_seconds", "Inter-token latency: one generated token to the next."),
)


def _latency(histograms: Any) -> Iterator[Metric]:
    """The runtime's cumulative latency buckets as Prometheus histograms."""
    if not isinstance(histograms, Mapping):
        return
    for key, help_text in LATENCY:
        h = histograms.get(key)
        if not isinstance(h, Mapping) or not h.get("buckets"):
            continue
        buckets = [(b if isinstance(b, str) else repr(float(b)), int(n)) for b, n in h["buckets"]]
        yield HistogramMetricFamily(f"{PREFIX}_{key}", help_text, buckets=buckets,
                                    sum_value=float(h["sum"]))


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", help_text, value=value)
