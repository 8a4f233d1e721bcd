"""Quiet layers: the MoE layers a one-token step runs through without stopping the engine.

The engine's tap stops llama.cpp's graph at each MoE layer's routing node so that the pager can
admit the layer's experts before its matmuls read them. Each stop splits the graph computation
(a thread-pool round trip and a callback); on a small model that is 3-5 % of decode. Where the
answer is known before the router runs, the stop buys nothing:

- level 2: every expert of the layer is pinned (never evicted, read and checked at load);
- level 1: every expert of the layer is resident and the expert capacity holds every expert of
  the model (a 100 % budget loaded resizable), so no admission can ever evict one.

The C tap (runtime/backends/llama_cpp/tap_source.py, `known`) lets a one-token step run through
such a layer when no prefetch from it could read anything and Python has not asked for every
event (a transient to release, a fault found); it counts the event instead of logging it, and
the counts come back as hits (top_k per event). Prompt batches always stop: their hit counts
need the routing, and one stop per layer is spread over the batch. A release clears its layer's
level at once; the levels are worked out again at the next step boundary after the books change.

Pinned experts carry no heat. Level-1 experts do (a budget cut later releases the coldest), so
one step in SAMPLE_EVERY still stops at level-1 layers and the policy sees it.
"""

from __future__ import annotations

import numpy as np

from runtime.backends.base import RoutingLog

SAMPLE_EVERY = 16  # steps per step that still stops at level-1 layers


def known_levels(resident: np.ndarray, pinned: np.ndarray, holds_all: bool) -> np.ndarray:
    """Per layer (rows of the [layers, experts] bitmaps): 2 when every expert is pinned, 1 when
    every expert is resident and `holds_all` (the capacity holds every expert), else 0."""
    levels = np.where(pinned.all(axis=1), 2, 0).astype(np.uint8)
    if holds_all:
        levels[(levels == 0) & resident.all(axis=1)] = 1
    return levels


class QuietLayers:
    """Keeps the tap's `known` levels equal to the books (see the module docstring)."""

    def __init__(self, log: RoutingLog, total_expert_bytes: int) -> None:
        self.log = log
        self.pinned = np.zeros_like(log.resident)
        self._total = total_expert_bytes
        self._capacity: int | None = None
        self._dirty = True
        self._steps = 0
        log.known[:] = 0
        log.use_known(True)

    def on_change(self, layer: int, expert: int, counted: bool, pinned: bool) -> None:
        """The books changed one expert (the cache's watcher, after the tap's bitmap)."""
        if not counted:
            self.log.known[layer] = 0  # at once: a release may happen between two layers
        self.pinned[layer, expert] = pinned
        self._dirty = True

    def begin_step(self, capacity_bytes: int) -> None:
        """A step starts (a step boundary: the books are settled). `capacity_bytes`: the
        cache's capacity now (a budget change moves it)."""
        if self._dirty or capacity_bytes != self._capacity:
            self._capacity = capacity_bytes
            self._dirty = False
            self.log.known[:] = known_levels(self.log.resident, self.pinned,
                                             capacity_bytes >= self._total)
        self._steps += 1
        sample = 1 if self._steps % SAMPLE_EVERY == 0 else 0
        if sample != self.log.sample:
            self.log.sample = sample

    def hits(self, top_k: int) -> tuple[int, int]:
        """(hits, of which pinned) the events not stopped at stand for: top_k distinct experts
        each, all pinned at level 2 (level-1 events are counted unpinned)."""
        resident, pinned = self.log.quiet_counts
        return (resident + pinned) * top_k, pinned * top_k

    def close(self) -> None:
        self.log.use_known(False)
