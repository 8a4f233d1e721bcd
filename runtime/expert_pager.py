"""Routing events -> expert cache: between what llama.cpp computes and what stays resident.

The engine calls `on_routing(event)` (a `RoutingEvent`) after a layer's router chose and
before its expert matmuls run. Experts the current batch needs are admitted (evicting others by
policy); if a prompt batch needs more experts of one layer than the whole capacity, the surplus
is "transient": its pages fault in for the matmul and are released again at the next routing
event, so the budget is exceeded by at most one layer's experts, and only during prefill.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from contract.manifest import LayerExperts
from runtime.backends.base import RoutingEvent
from runtime.expert_cache import ExpertCache, ExpertState, Residency
from runtime.routing_probe import RoutingProbe

# A fault maps the whole page-cache folio around the faulting page (large folios: up to a PMD),
# so experts next to a loaded one can become resident without being routed to. After each
# layer, released experts within this distance of a fresh load are swept back out.
FOLIO_WINDOW = 2 * 2**20


@dataclass
class PagerStats:
    """Loads outside the cache's books: experts a prompt batch needed beyond the capacity.

    Model.stats() adds them to the cache's misses and bytes loaded, so the totals say what
    really came from storage."""

    transient_loads: int = 0
    transient_bytes: int = 0


class ExpertPager:
    """The engine's routing callback: admits each layer's experts to the cache before its matmuls
    and sweeps back pages that faults mapped beyond the books (see the module docstring)."""

    def __init__(
        self,
        cache: ExpertCache | None,
        residency: Residency | None,
        expert_bytes: dict[int, int],
        top_k: int,
        record: bool = False,
        layers: dict[int, LayerExperts] | None = None,
        n_experts: int = 0,
    ) -> None:
        self.layers = layers or {}
        self.n_experts = n_experts
        self._fresh: list[tuple[int, int]] = []
        self.cache = cache
        self.residency = residency
        self.expert_bytes = expert_bytes
        self.top_k = top_k
        self.stats = PagerStats()
        self._transient: list[tuple[int, int]] = []
        self.probe = RoutingProbe() if record else None  # per-token rows, when asked

    def begin_batch(self) -> None:
        if self.probe is not None:
            self.probe.begin_batch()

    # --- residency -----------------------------------------------------------------------
    def on_routing(self, event: RoutingEvent) -> None:
        if self.probe is not None:
            self.probe.on_event(event)
        if self.cache is None:
            return
        layer, flat_ids = event.layer, event.ids.ravel()
        if self._transient or self._fresh:
            self.reconcile()
        if flat_ids.size == self.top_k:  # one token (decode): its experts, nothing to rank
            needed = flat_ids.tolist()
        else:
            needed = [e for e, _ in Counter(flat_ids.tolist()).most_common()]
        admit, surplus = self._split(layer, needed)
        self._fresh.extend(
            (layer, e) for e in admit if self.cache.state(layer, e) == ExpertState.RELEASED
        )
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
        """Give back pages the books say are released: transient experts, and neighbours that
        the previous layer's loads mapped in along with the experts they were for."""
        if self.cache is None or self.residency is None:
            self._transient.clear()
            self._fresh.clear()
            return
        for layer, e in self._transient:
            if self.cache.state(layer, e) == ExpertState.RELEASED:
                self.residency.release(layer, e)
        self._transient.clear()
        if self._fresh and self.layers and hasattr(self.residency, "release_spans"):
            self.residency.release_spans(self._neighbour_spans(self._fresh))
        self._fresh.clear()

    def _neighbour_spans(self, loaded: list[tuple[int, int]]) -> list[tuple[int, int]]:
        assert self.cache is not None
        spans: list[tuple[int, int]] = []
        released = ExpertState.RELEASED
        for layer, e in loaded:
            for t in self.layers[layer].tensors:
                k = -(-FOLIO_WINDOW // t.stride)
                run = None
                for n in range(max(0, e - k), min(self.n_experts, e + k + 1)):
                    if self.cache.state(layer, n) == released:
                        run = n if run is None else run
                        continue
                    if run is not None:
                        spans.append((t.offset + run * t.stride, t.offset + n * t.stride))
                        run = None
                if run is not None:
                    last = min(self.n_experts, e + k + 1)
                    spans.append((t.offset + run * t.stride, t.offset + last * t.stride))
        return _coalesce(spans)


def _coalesce(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out
