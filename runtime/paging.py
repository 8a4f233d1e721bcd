"""Putting a loaded model's experts under the pager: the ranked hot set pinned (read and checked
now), residency over the engine's mapping, the byte-budgeted cache, prefetch; and a lazy load's
dense-only read. What `Model` starts with when its budget does not hold every expert (or it may
change its budget while loaded).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from contract.manifest import LayerExperts
from runtime.backends.base import Backend
from runtime.backends.llama_cpp.lazy_load import advise_random_except, complement
from runtime.backends.mapping import FileMapping
from runtime.budget import BudgetPlan
from runtime.bundles.open import OpenBundle
from runtime.experts.cache import ExpertCache
from runtime.experts.pager import ExpertPager
from runtime.experts.pinning import pinned_set
from runtime.experts.prefetcher import PrefetchSettings
from runtime.experts.residency import MadviseResidency
from runtime.integrity import ExpertReader, IntegrityState


@dataclass(frozen=True)
class PagedExperts:
    """Where the pager reads experts: the file, each layer's experts in it, and the checksums
    each expert is verified against on its first read (None: no checksums to check)."""

    path: Path
    layers: Mapping[int, LayerExperts]
    digests: Mapping[str, tuple[str, ...]] | None

    @property
    def expert_bytes(self) -> dict[int, int]:
        return {layer: x.expert_bytes for layer, x in self.layers.items()}


def bundle_experts(opened: OpenBundle, integrity: IntegrityState) -> PagedExperts:
    """The bundle's expert file, as the manifest lays it out."""
    sums = opened.manifest.checksums.get(opened.build.expert_file)
    return PagedExperts(opened.expert_path, {x.layer: x for x in opened.build.expert_layers},
                        sums.experts if integrity.checksums and sums else None)


@dataclass
class Paging:
    """What paging started: the pinned set per layer, residency, the first-read checker (None:
    reads unchecked), the cache, and whether prefetch is "on", "off" or why not."""

    pins: dict[int, tuple[int, ...]]
    residency: MadviseResidency
    reader: ExpertReader | None
    cache: ExpertCache
    prefetch: str


def read_dense_only(engine: Backend,
                    opened: OpenBundle) -> tuple[list[tuple[int, int]], float | None]:
    """A lazy load mapped the file without reading it: no readahead on the mapping, and the dense
    weights read now; experts come in as the cache admits them. Returns the dense weights' file
    ranges and the seconds the read took ([] and None when the engine has no mapping base)."""
    base = engine.mapping_base
    if base is None:
        return [], None
    size = opened.model_path.stat().st_size
    n_experts = opened.manifest.shape.n_experts
    experts = [(t.offset, t.offset + t.stride * n_experts)
               for x in opened.build.expert_layers for t in x.tensors]
    spans = complement(experts, size)
    t0 = time.perf_counter()
    advise_random_except(base, size, spans)
    return spans, time.perf_counter() - t0


def start_paging(opened: OpenBundle, experts: PagedExperts, budget: BudgetPlan,
                 integrity: IntegrityState, check_reads: bool, pager: ExpertPager,
                 mapping: FileMapping, *, policy: str, cold: bool,
                 prefetch: PrefetchSettings | bool | None) -> Paging:
    """Pin the hot set, start residency and the cache within `budget`, attach them to `pager`
    and start prefetch. On failure what was started is closed again."""
    manifest = opened.manifest
    n_experts = manifest.shape.n_experts
    layers, expert_bytes = experts.layers, experts.expert_bytes
    pins = pinned_set(manifest.hot_experts, expert_bytes, budget.expert_capacity_bytes,
                      manifest.shape.top_k, manifest.hot_shares)
    residency = MadviseResidency(experts.path, mapping,
                                 lambda layer, e: layers[layer].ranges(e), cold=cold)
    reader: ExpertReader | None = None
    try:
        if check_reads:  # verified on first read, paged in without SIGBUS
            reader = ExpertReader(experts.path, layers, experts.digests, n_experts, integrity,
                                  residency.populate, residency.view)
        # A capacity that holds every expert (a full budget loaded resizable) holds them from
        # the start: no misses, and no layer needs the engine to stop (runtime/experts/quiet.py).
        rest: list[tuple[int, int]] = []
        if budget.expert_capacity_bytes >= budget.expert_bytes_total:
            rest = [(layer, e) for layer in sorted(layers) for e in range(n_experts)
                    if e not in pins.get(layer, ())]
        if reader is not None:  # the hot set (and the rest) is read now, so now checked
            now = [(layer, e) for layer, es in pins.items() for e in es] + rest
            # Readahead for all of them first: the mapping is MADV_RANDOM, so populating a cold
            # expert alone reads it one page per synchronous fault (seconds per load, cold).
            for layer, e in now:
                residency.load(layer, e)
            for layer, e in now:
                reader.bring_in(layer, e)
        cache = ExpertCache(expert_bytes=expert_bytes, n_experts=n_experts,
                            capacity_bytes=budget.expert_capacity_bytes, pinned=pins,
                            policy=policy, residency=residency)
        cache.warm(rest)  # release what llama.cpp populated beyond it, pin the hot set
        pager.cache, pager.residency, pager.reader = cache, residency, reader
        # Expert prefetch by pre-gating (runtime/experts/prefetcher.py): "on", "off" or why not.
        state = pager.start_prefetch(prefetch, cold, opened.model_path)
    except BaseException:
        if reader is not None:
            reader.close()
        residency.close()
        raise
    return Paging(pins, residency, reader, cache, state)
