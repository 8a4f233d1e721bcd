"""Routing events -> expert cache: between what llama.cpp computes and what stays resident.

The engine calls `on_routing(event)` (a `RoutingEvent`) after a layer's router chose and
before its expert matmuls run. Experts the current batch needs are admitted (evicting others by
policy); if a prompt batch needs more experts of one layer than the whole capacity, the surplus
is "transient": its reads start at once (WILLNEED), its pages serve the matmul and are
released again at the next routing event, so the budget is exceeded by at most one layer's
experts, and only during prefill.

Hits stay out of Python when the engine can: llama.cpp's C tap (runtime/backends/llama_cpp/tap.py)
logs a one-token event whose experts are all resident instead of calling us, against a bitmap
this pager keeps equal to the cache's books; the log is replayed, in order, before any event the
pager handles itself, so the books see exactly the sequence they would have seen one by one.
The same log carries the prefetches the tap issued (runtime/experts/prefetcher.py scores them).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from contract.manifest import LayerExperts
from runtime.backends.base import MARK, PREFETCH_BASE, Backend, RoutingEvent, RoutingLog
from runtime.backends.mapping import FileMapping
from runtime.errors import ModelCorruptError
from runtime.experts.batch_prefetch import BatchPrefetch
from runtime.experts.cache import ExpertCache, ExpertState, Residency
from runtime.experts.prefetcher import (
    Prefetcher,
    PrefetchSettings,
    prefetch_settings,
    start_prefetch,
)
from runtime.experts.pregate import Pregate, RouterWeights, pregate_refusal, read_routers
from runtime.experts.quiet import QuietLayers
from runtime.experts.routing_probe import RoutingProbe

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
    routing_s: float = 0.0  # wall time in on_routing: admissions, reads waited for, checks


class ExpertReader(Protocol):
    """Brings an admitted expert in: verified on its first read, its pages mapped so a storage
    fault is an error, not SIGBUS (runtime/integrity/reads.py); raises ModelCorruptError."""

    @property
    def failed(self) -> bool: ...

    def bring_in(self, layer: int, expert: int) -> None: ...

    @property
    def state(self) -> Any: ...


class PagingResidency(Residency, Protocol):
    """The cache's hands as the pager uses them beyond the cache's own calls
    (runtime/experts/residency.py: MadviseResidency)."""

    mapping: FileMapping  # where the expert file is mapped (prefetch addresses)

    def forget(self, layer: int, expert: int) -> None:
        """Drop an expert read in vain from the page cache too (cold prefetch)."""
        ...

    def release_spans(self, spans: list[tuple[int, int]]) -> None:
        """Give back the pages inside these file ranges (neighbours a fault swept in)."""
        ...


class ExpertPager:
    """The engine's routing callback: admits each layer's experts to the cache before its matmuls
    and sweeps back pages that faults mapped beyond the books (see the module docstring)."""

    def __init__(
        self,
        cache: ExpertCache | None,
        residency: PagingResidency | None,
        expert_bytes: dict[int, int],
        top_k: int,
        record: bool = False,
        layers: dict[int, LayerExperts] | None = None,
        n_experts: int = 0,
    ) -> None:
        self._log: RoutingLog | None = None
        self._quiet: QuietLayers | None = None  # layers a one-token step need not stop at
        self.layers = layers or {}
        self.n_experts = n_experts
        self._fresh: list[tuple[int, int]] = []
        self.cache = cache
        self.residency = residency
        self.expert_bytes = expert_bytes
        self.top_k = top_k
        self.stats = PagerStats()
        self._transient: list[tuple[int, int]] = []
        self._probe = RoutingProbe() if record else None  # per-token rows, when asked
        self._base = 0  # the probe's current batch start (for replayed rows)
        self.prefetcher: Prefetcher | None = None
        self.batch_prefetch: BatchPrefetch | None = None  # prompts: the next layer's experts
        self.reader: ExpertReader | None = None  # set by the runtime when reads are checked

    # --- the engine's routing log (hits kept out of Python) ------------------------------
    @property
    def cache(self) -> ExpertCache | None:
        return self._cache

    @cache.setter
    def cache(self, cache: ExpertCache | None) -> None:
        self._cache = cache
        self._mirror()

    def attach_engine(self, engine: Backend) -> None:
        """Use the engine's routing log if it has one (llama.cpp with the C tap)."""
        if self.layers and self.n_experts:
            self.attach_log(engine.routing_log(max(self.layers) + 1, self.n_experts, self.top_k))

    def attach_log(self, log: RoutingLog | None) -> None:
        """Let the engine keep all-resident one-token events in its log (see module doc)."""
        self._log = log
        self._mirror()

    def _mirror(self) -> None:
        log = self._log
        if log is None:
            return
        if self._quiet is not None:
            self._quiet.close()
            self._quiet = None
        if self._cache is None:
            log.resident[:] = 1  # nothing is paged: every expert is in memory
            return
        log.resident[:] = 0
        resident, cache = log.resident, self._cache
        # A routing trace needs every event: then every layer stops (runtime/experts/quiet.py).
        quiet = None if self._probe is not None else QuietLayers(
            log, sum(self.expert_bytes.values()) * cache.n_experts)
        self._quiet = quiet
        pinned_state = ExpertState.PINNED

        def on_change(layer: int, expert: int, counted: bool) -> None:
            resident[layer, expert] = counted
            if quiet is not None:
                quiet.on_change(layer, expert, counted,
                                counted and cache.state(layer, expert) is pinned_state)

        cache.watch(on_change)

    def quiet_hits(self) -> tuple[int, int]:
        """(hits, pinned hits) of one-token events the engine ran through without a stop
        (runtime/experts/quiet.py); the cache's books do not hold them."""
        return self._quiet.hits(self.top_k) if self._quiet is not None else (0, 0)

    def start_prefetch(self, setting: PrefetchSettings | bool | None, cold: bool,
                       model_path: Path) -> str:
        """Let the engine's tap prefetch by pre-gating (runtime/experts/prefetcher.py) if `setting`
        asks for it (None: when cold); returns "on" or why not. Cold: unused reads are
        dropped from the page cache again."""
        settings = prefetch_settings(setting, cold)
        if settings is None:
            return "off"
        if self._cache is None or self.residency is None:
            return "off: nothing is paged (full budget)"
        if self._log is None:
            return "off: the engine has no routing tap"
        own = self._log.routers
        if isinstance(own, str):
            return f"off: {own}"
        if own is None:  # llama.cpp: its C tap reads the hidden states, the GGUF the routers
            if not self._log.sources:
                return "off: the engine has no native routing tap (llama.cpp and a C compiler)"
            refused = pregate_refusal(model_path)
            if refused is not None:
                return f"off: {refused}"
            pregate = Pregate(read_routers(model_path, sorted(self.layers)))
        else:  # the engine's own graph (ONNX): softmax routers, no biases (routers.py)
            pregate = Pregate({k: RouterWeights(k, m, gating="softmax") for k, m in own.items()})
        forget = self.residency.forget if cold else None
        self.batch_prefetch = BatchPrefetch(pregate, sorted(self.layers), self.top_k,
                                            self.residency.load, forget)
        if not self._log.sources:  # hidden states come with prompt batches only
            return "on (prompts)"
        got = start_prefetch(self._log, settings, pregate, self.layers, self.n_experts,
                             self.top_k, self.residency.mapping, forget)
        if isinstance(got, str):
            return f"off: {got}"
        self.prefetcher = got
        return "on"

    def prefetch_stats(self) -> dict[str, int]:
        out = self.prefetcher.stats() if self.prefetcher is not None else {}
        if self.batch_prefetch is not None:
            out.update(self.batch_prefetch.stats())
        return out

    def sync(self) -> None:
        """Replay what the engine logged, so books and probe are current. Call it from the
        thread that decodes (the log is appended to without a lock)."""
        if self._log is not None and len(self._log):
            self._replay(self._log.drain())

    def _replay(self, records: np.ndarray) -> None:
        """Records in the order the tap wrote them (runtime/backends/llama_cpp/tap_source.py)."""
        probe, cache, pf = self._probe, self._cache, self.prefetcher
        rows = probe.rows if probe is not None else None
        for rec in records.tolist():
            layer, n = rec[0], rec[1]
            if layer == MARK:
                if probe is not None:
                    probe.begin_batch()
                    self._base = len(probe.rows)
                continue
            ids = rec[2 : 2 + n]
            if layer <= PREFETCH_BASE:
                if pf is not None:
                    pf.issued(PREFETCH_BASE - layer, ids)
                continue
            if rows is not None:
                while len(rows) <= self._base:
                    rows.append({})
                rows[self._base][layer] = tuple(ids)
            if cache is not None:
                cache.hit(layer, ids)  # logged only when every expert was resident
            if pf is not None:
                pf.routed(layer, ids)

    @property
    def probe(self) -> RoutingProbe | None:
        """Per-position routing rows (record=True), with the engine's log replayed first."""
        self.sync()
        return self._probe

    def begin_batch(self) -> None:
        if self._quiet is not None and self._cache is not None:
            self._quiet.begin_step(self._cache.capacity_bytes)
        if self._probe is None:
            return
        if self._log is not None:
            if self._log.mark():
                return
            self.sync()  # full: replay, then start the batch directly
        self._probe.begin_batch()
        self._base = len(self._probe.rows)

    # --- residency -----------------------------------------------------------------------
    def on_routing(self, event: RoutingEvent) -> bool:
        """Admit the layer's experts; True asks the engine to stop before its matmuls (an
        expert could not be brought in whole: the fault is in the reader's state)."""
        t0 = time.perf_counter()
        try:
            return self._on_routing(event)
        finally:
            self.stats.routing_s += time.perf_counter() - t0

    def _on_routing(self, event: RoutingEvent) -> bool:
        if self._log is not None and len(self._log):
            self._replay(self._log.drain())
        if self._probe is not None:
            self._probe.on_event(event)
        if self._cache is None:
            return False
        if self.reader is not None and self.reader.failed:
            return self._stop()
        layer, flat_ids = event.layer, event.ids.ravel()
        if self._transient or self._fresh:
            self.reconcile(step_end=False)
        if flat_ids.size == self.top_k:  # one token (decode): its experts, nothing to rank
            needed = flat_ids.tolist()
        else:
            needed = [e for e, _ in Counter(flat_ids.tolist()).most_common()]
        admit, surplus = self._split(layer, needed)
        if self.prefetcher is not None and event.n_tokens == 1:
            self.prefetcher.routed(layer, needed)
        batch = self.batch_prefetch
        if batch is not None:
            batch.routed(layer, needed)
        fresh = [e for e in admit if self.cache.state(layer, e) == ExpertState.RELEASED]
        self._fresh.extend((layer, e) for e in fresh)
        self.cache.access(layer, admit)
        for e in surplus:
            if self.cache.state(layer, e) == ExpertState.RELEASED:
                fresh.append(e)
                self._transient.append((layer, e))
                self.stats.transient_loads += 1
                self.stats.transient_bytes += self.expert_bytes[layer]
                if self.residency is not None:
                    # Start reading now, all of them: the matmul would otherwise fault them
                    # in one page at a time, in its own order, with nothing read ahead.
                    self.residency.load(layer, e)
        if batch is not None and event.n_tokens > 1 and not self._transient \
                and self._log is not None:
            # After this layer's reads were asked for: storage serves them first.
            hidden = self._log.hidden(layer)
            if hidden is not None:
                batch.guess(layer, hidden, self._counted, self._slots(layer + 1))
        if self.reader is not None and not self._bring_in(layer, fresh):
            return self._stop()
        if self._log is not None:
            # Transients must go before the next layer's matmuls; neighbours a fault mapped
            # can wait for the end of the step (Model._decode reconciles after every step).
            self._log.python_needed = bool(self._transient)
        return False

    def _bring_in(self, layer: int, experts: list[int]) -> bool:
        """Read (the first time: verify) and map in what the cache just admitted, after every
        WILLNEED was issued, so storage serves them together; False on a fault."""
        assert self.reader is not None
        try:
            for e in experts:
                self.reader.bring_in(layer, e)
        except ModelCorruptError as error:
            self.reader.state.fail(error)
            return False
        return True

    def _stop(self) -> bool:
        """Every later routing event of this step comes to Python (and stops there too)."""
        if self._log is not None:
            self._log.python_needed = True
        return True

    def _counted(self, layer: int, expert: int) -> bool:
        assert self.cache is not None
        return self.cache.state(layer, expert) != ExpertState.RELEASED

    def _slots(self, layer: int) -> int:
        """Experts of `layer` (or the next MoE layer) the unpinned capacity holds."""
        assert self.cache is not None
        size = self.expert_bytes.get(layer) or next(
            (self.expert_bytes[x] for x in sorted(self.expert_bytes) if x > layer), 0)
        return (self.cache.capacity_bytes - self.cache.pinned_bytes) // size if size else 0

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

    def reconcile(self, step_end: bool = True) -> None:
        """Give back pages the books say are released: transient experts, and neighbours that
        the previous layer's loads mapped in along with the experts they were for. The engine
        calls it after each step (`step_end`), the pager itself also between layers."""
        if self._log is not None:
            self._log.python_needed = False
        if self.prefetcher is not None and step_end:
            if self.prefetcher.active:
                # The governor judges what prefetching reads from the runs it sees; when every
                # expert is resident, no event reaches Python and the log would wait for one.
                self.sync()
            self.prefetcher.tick()
        if self.cache is None or self.residency is None:
            self._transient.clear()
            self._fresh.clear()
            return
        if self.batch_prefetch is not None and step_end:
            self.batch_prefetch.settle(self._counted)
        for layer, e in self._transient:
            if self.cache.state(layer, e) == ExpertState.RELEASED:
                self.residency.release(layer, e)
        self._transient.clear()
        if self._fresh and self.layers:
            self.residency.release_spans(self._neighbour_spans(self._fresh))
        self._fresh.clear()

    def _neighbour_spans(self, loaded: list[tuple[int, int]]) -> list[tuple[int, int]]:
        assert self.cache is not None
        state, released = self.cache.state, ExpertState.RELEASED
        by_layer: dict[int, set[int]] = {}
        for layer, e in loaded:
            by_layer.setdefault(layer, set()).add(e)
        free = {layer: [state(layer, n) == released for n in range(self.n_experts)]
                for layer in by_layer}  # fmt: skip
        tensors = {layer: [(t.offset, t.stride) for t in self.layers[layer].tensors]
                   for layer in by_layer}  # fmt: skip
        return neighbour_spans(by_layer, free, tensors, self.n_experts)


def neighbour_spans(loaded: Mapping[int, Collection[int]], free: Mapping[int, Sequence[bool]],
                    tensors: Mapping[int, Sequence[tuple[int, int]]], n_experts: int
                    ) -> list[tuple[int, int]]:  # fmt: skip
    """File byte ranges of released experts a load may have mapped in beside the ones loaded:
    per layer and expert tensor (offset, stride), every released (`free`) expert within
    FOLIO_WINDOW bytes' worth of experts of one `loaded` in that layer, coalesced. Pure; one
    pass over each tensor's experts (a prompt layer loads most of them)."""
    spans: list[tuple[int, int]] = []
    for layer, experts in loaded.items():
        is_free = free[layer]
        for offset, stride in tensors[layer]:
            k = -(-FOLIO_WINDOW // stride)
            reach = [0] * (n_experts + 1)  # +1 where a window opens, -1 past where it closes
            for e in experts:
                reach[max(0, e - k)] += 1
                reach[min(n_experts, e + k + 1)] -= 1
            run, depth = None, 0
            for n in range(n_experts):
                depth += reach[n]
                if depth and is_free[n]:
                    run = n if run is None else run
                elif run is not None:
                    spans.append((offset + run * stride, offset + n * stride))
                    run = None
            if run is not None:
                spans.append((offset + run * stride, offset + n_experts * stride))
    return _coalesce(spans)


def _coalesce(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out
