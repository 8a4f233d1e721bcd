"""A budget changed while the model is loaded: the paging machinery follows it between steps.

`Model.set_budget` (or the pressure follower, runtime/experts/pressure.py) resolves a new
budget plan; its expert capacity is applied at the next step boundary, never inside a step,
by `apply_budget` here: the pinned set is ranked again for the new capacity
(runtime/experts/pinning.py: the same rule as at load), newly pinned experts are brought in
(verified on their first read), the cache releases its coldest residents until the books fit
(runtime/experts/cache.py `resize`), and the prefetch width is capped at what the new capacity
holds per layer. Pages of released experts go back at once (MADV_DONTNEED, and the page cache
too when cold), so RSS follows within the step. The KV cache is allocated once for n_ctx by
the engine and does not shrink.

`BudgetHistory` keeps each change with the tokens decoded so far, for stats() and /metrics.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from contract.manifest import Manifest
from runtime.experts.cache import ExpertCache
from runtime.experts.pinning import pinned_set
from runtime.experts.prefetcher import Prefetcher

HISTORY = 64  # changes kept


class Reader(Protocol):
    def bring_in(self, layer: int, expert: int) -> None: ...


@dataclass(frozen=True)
class BudgetChange:
    at_s: float  # time.monotonic() when applied
    tokens: int  # tokens the model had decoded when applied (prompt tokens included)
    budget_bytes: int
    expert_capacity_bytes: int
    released: int  # experts released to fit
    reason: str  # "api", "admin", "pressure: ..." (who asked and why)


class BudgetHistory:
    """The last HISTORY budget changes, oldest first."""

    def __init__(self) -> None:
        self.changes: deque[BudgetChange] = deque(maxlen=HISTORY)
        self.count = 0

    def add(self, change: BudgetChange) -> None:
        self.changes.append(change)
        self.count += 1

    def as_list(self) -> list[dict[str, Any]]:
        return [asdict(c) for c in self.changes]


def apply_budget(
    capacity: int,
    manifest: Manifest,
    expert_bytes: Mapping[int, int],
    cache: ExpertCache,
    reader: Reader | None,
    prefetcher: Prefetcher | None,
) -> tuple[dict[int, tuple[int, ...]], int]:
    """Make the cache, the pins and the prefetch width follow a new expert capacity (bytes);
    returns the new pinned set and how many experts were released."""
    pins = pinned_set(manifest.hot_experts, expert_bytes, capacity, manifest.shape.top_k,
                      manifest.hot_shares)
    if reader is not None:
        for layer, experts in pins.items():
            for e in experts:
                if cache.state(layer, e).value == "released":
                    reader.bring_in(layer, e)
    released = cache.resize(capacity, pins)
    if prefetcher is not None:
        cap_width(prefetcher, capacity - cache.pinned_bytes, expert_bytes)
    return pins, released


def cap_width(prefetcher: Prefetcher, free_bytes: int, expert_bytes: Mapping[int, int]) -> None:
    """At most as many guesses per layer as unpinned experts of one layer fit beside the pins:
    guesses beyond that would be read only to be released again."""
    per_layer = max(expert_bytes.values()) * len(expert_bytes)
    slots = max(1, free_bytes // per_layer) if per_layer else 1
    if prefetcher.governor.limit(slots):
        prefetcher.log.set_prefetch(prefetcher.settings.depth, prefetcher.governor.width)


def now() -> float:
    return time.monotonic()
