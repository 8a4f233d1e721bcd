"""Server metrics in the Prometheus text format (written by hand: no extra dependency).

Counters are updated from the event loop (requests) and the engine thread (generations), so
they sit behind one lock; the runtime's expert figures come from `Model.stats()` at scrape time.
"""

from __future__ import annotations

import numbers
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from runtime.api import StreamEvent
from runtime.server.engine import GenerationRequest

PREFIX = "edgemoe"

# model.stats() key -> (metric name, type, help). Counters are cumulative in the runtime.
RUNTIME_FIGURES: tuple[tuple[str, str, str, str], ...] = (
    ("budget_bytes", "budget_bytes", "gauge", "Memory budget for weights and KV cache."),
    ("dense_bytes", "dense_bytes", "gauge", "Bytes of always-resident (non-expert) weights."),
    ("kv_bytes", "kv_cache_bytes", "gauge", "Bytes of the KV cache."),
    ("expert_bytes_total", "expert_bytes_total", "gauge", "Bytes of all experts in the bundle."),
    ("expert_capacity_bytes", "expert_capacity_bytes", "gauge",
     "Bytes of experts the budget lets stay resident."),
    ("resident_expert_bytes", "resident_expert_bytes", "gauge", "Bytes of experts resident now."),
    ("pinned_bytes", "pinned_expert_bytes", "gauge", "Bytes of pinned (hot) experts."),
    ("hits", "expert_cache_hits_total", "counter", "Expert lookups served from memory."),
    ("misses", "expert_cache_misses_total", "counter", "Expert lookups that loaded from storage."),
    ("bytes_loaded", "expert_bytes_loaded_total", "counter", "Expert bytes loaded from storage."),
    ("evictions", "expert_evictions_total", "counter", "Experts evicted to stay within budget."),
    ("process_rss_bytes", "process_rss_bytes", "gauge", "Resident set size of the process."),
    ("mapping_rss_bytes", "model_mapping_rss_bytes", "gauge",
     "Resident bytes of the model file mapping."),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Mapping[str, str]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs.items()) + "}"


def _number(value: float) -> str:
    f = float(value)
    return str(int(f)) if f.is_integer() and abs(f) < 2**53 else repr(f)


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self, name: str, kind: str, help_text: str,
        samples: Iterable[tuple[Mapping[str, str], float]],
    ) -> None:
        full = f"{PREFIX}_{name}"
        self.lines.append(f"# HELP {full} {help_text}")
        self.lines.append(f"# TYPE {full} {kind}")
        for labels, value in samples:
            self.lines.append(f"{full}{_labels(labels)} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


class Metrics:
    """Counters of the HTTP layer and of finished generations."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = defaultdict(int)
        self.request_seconds: dict[str, float] = defaultdict(float)
        self.prompt_tokens = 0
        self.completion_tokens: dict[str, int] = defaultdict(int)
        self.generations: dict[str, int] = defaultdict(int)
        self.generation_seconds = 0.0
        self.decode_seconds = 0.0
        self.prefill_seconds = 0.0
        self.last: dict[str, float] = {}

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, str(status))] += 1
            self.request_seconds[endpoint] += seconds

    def observe_generation(
        self, request: GenerationRequest, final: StreamEvent, seconds: float
    ) -> None:
        usage, timings = final.usage, final.timings or {}
        reason = final.finish_reason or "stop"
        with self._lock:
            self.generations[reason] += 1
            self.generation_seconds += seconds
            if usage is not None:
                self.prompt_tokens += usage.prompt_tokens
                self.completion_tokens[reason] += usage.completion_tokens
                self.last["completion_tokens"] = usage.completion_tokens
            self.decode_seconds += timings.get("decode_s", 0.0)
            self.prefill_seconds += timings.get("prefill_s", 0.0)
            for key in ("prefill_tok_s", "decode_tok_s", "ttft_s"):
                if key in timings:
                    self.last[key] = float(timings[key])

    def render(
        self, *, model_id: str | None, queue_depth: int, queue_capacity: int, busy: bool,
        stats: Mapping[str, Any] | None,
    ) -> str:
        w = _Writer()
        with self._lock:
            w.family("http_requests_total", "counter", "HTTP requests by endpoint and status.",
                     [({"endpoint": e, "status": s}, n) for (e, s), n in
                      sorted(self.requests.items())])
            w.family("http_request_seconds_total", "counter",
                     "Seconds spent answering HTTP requests, by endpoint.",
                     [({"endpoint": e}, s) for e, s in sorted(self.request_seconds.items())])
            w.family("prompt_tokens_total", "counter", "Prompt tokens processed.",
                     [({}, self.prompt_tokens)])
            w.family("completion_tokens_total", "counter",
                     "Tokens generated, by how the generation finished.",
                     [({"finish_reason": r}, n) for r, n in sorted(self.completion_tokens.items())])
            w.family("generations_total", "counter",
                     "Generations run, by how they finished (cancelled: client left or timeout).",
                     [({"finish_reason": r}, n) for r, n in sorted(self.generations.items())])
            w.family("generation_seconds_total", "counter", "Seconds the engine spent generating.",
                     [({}, self.generation_seconds)])
            w.family("prefill_seconds_total", "counter", "Seconds spent in prompt prefill.",
                     [({}, self.prefill_seconds)])
            w.family("decode_seconds_total", "counter", "Seconds spent decoding tokens.",
                     [({}, self.decode_seconds)])
            for key, name, help_text in (
                ("prefill_tok_s", "last_prefill_tokens_per_second", "Prefill speed, last run."),
                ("decode_tok_s", "last_decode_tokens_per_second", "Decode speed, last run."),
                ("ttft_s", "last_ttft_seconds", "Time to first token of the last run."),
                ("completion_tokens", "last_completion_tokens", "Tokens made by the last run."),
            ):
                if key in self.last:
                    w.family(name, "gauge", help_text, [({}, self.last[key])])
        w.family("queue_depth", "gauge", "Requests waiting for the engine.", [({}, queue_depth)])
        w.family("queue_capacity", "gauge", "Requests allowed to wait.", [({}, queue_capacity)])
        w.family("engine_busy", "gauge", "1 while a generation runs.", [({}, int(busy))])
        if model_id is not None:
            w.family("model_info", "gauge", "The model being served.", [({"model": model_id}, 1)])
        for key, name, kind, help_text in RUNTIME_FIGURES:
            value = (stats or {}).get(key)
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                w.family(name, kind, help_text, [({}, value)])
        if stats and isinstance(stats.get("offloading"), bool):
            w.family("expert_offloading", "gauge", "1 when experts are paged within a budget.",
                     [({}, int(stats["offloading"]))])
        hot = (stats or {}).get("hot_experts") or {}
        if isinstance(hot, Mapping) and hot:
            w.family("pinned_experts", "gauge", "Pinned (hot) experts per layer.",
                     [({"layer": str(k)}, len(v)) for k, v in sorted(hot.items(),
                                                                    key=lambda kv: int(kv[0]))])
        return w.text()
