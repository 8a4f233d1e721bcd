"""Routing events -> expert cache: the bridge between what llama.cpp computes and what stays resident.

The engine calls `on_routing(layer, ids)` from its eval callback, after the router chose and
before the expert matmuls run. Experts the current batch needs are admitted (evicting others by
policy); if a prompt batch needs more experts of one layer than the whole capacity, the surplus
is "transient": its pages fault in for the matmul and are released again at the next routing
event, so the budget is exceeded by at most one layer's experts, and only during prefill.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from runtime.expert_cache import ExpertCache, ExpertState, Residency


@dataclass
class PagerStats:
    transient_loads: int = 0
    transient_bytes: int = 0
    routing_events: int = 0


class ExpertPager:
    def __init__(
        self,
        cache: ExpertCache | None,
        residency: Residency | None,
        expert_bytes: dict[int, int],
        top_k: int,
        record: bool = False,
    ) -> None:
        self.cache = cache
        self.residency = residency
        self.expert_bytes = expert_bytes
        self.top_k = top_k
        self.stats = PagerStats()
        self._transient: list[tuple[int, int]] = []
        self.recording = record
        self.steps: list[dict[int, tuple[int, ...]]] = []  # one row per token position
        self._row_base = 0

    # --- trace ---------------------------------------------------------------------------
    def begin_batch(self) -> None:
        self._row_base = len(self.steps)

    def _record(self, layer: int, ids: np.ndarray) -> None:
        for i, row in enumerate(ids):
            idx = self._row_base + i
            while len(self.steps) <= idx:
                self.steps.append({})
            self.steps[idx][layer] = tuple(int(e) for e in row)

    # --- residency -----------------------------------------------------------------------
    def on_routing(self, layer: int, flat_ids: np.ndarray) -> None:
        ids = flat_ids.reshape(-1, self.top_k)
        self.stats.routing_events += 1
        if self.recording:
            self._record(layer, ids)
        if self.cache is None:
            return
        self.reconcile()
        counts = Counter(int(e) for e in ids.ravel())
        needed = [e for e, _ in counts.most_common()]
        admit, surplus = self._split(layer, needed)
        self.cache.access(layer, admit)
        for e in surplus:
            if self.cache.state(layer, e) == ExpertState.RELEASED:
                self._transient.append((layer, e))
                self.stats.transient_loads += 1
                self.stats.transient_bytes += self.expert_bytes[layer]

    def _split(self, layer: int, needed: list[int]) -> tuple[list[int], list[int]]:
        """Most-used experts first, as many as the unpinned capacity holds; pinned always fit."""
        assert self.cache is not None
        slots = (self.cache.capacity_bytes - self.cache.pinned_bytes) // self.expert_bytes[layer]
        admit, surplus = [], []
        for e in needed:
            if self.cache.state(layer, e) == ExpertState.PINNED:
                admit.append(e)
            elif slots > 0:
                admit.append(e)
                slots -= 1
            else:
                surplus.append(e)
        return admit, surplus

    def reconcile(self) -> None:
        """Give back pages of transient experts that the cache did not keep."""
        if not self._transient or self.cache is None or self.residency is None:
            self._transient.clear()
            return
        for layer, e in self._transient:
            if self.cache.state(layer, e) == ExpertState.RELEASED:
                self.residency.release(layer, e)
        self._transient.clear()
