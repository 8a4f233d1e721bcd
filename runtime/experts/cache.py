"""Expert residency bookkeeping: which experts are pinned, resident or released, within a budget.

Pure logic: the cache decides, an injected `Residency` acts on memory (runtime/experts/residency.py
for a real mapping). Accounting is a running byte total, never re-summed, so an access costs the
same whatever the number of experts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from runtime.errors import BudgetError
from runtime.experts.policy import DEFAULT_POLICY, Key, Policy, make_policy

if TYPE_CHECKING:
    pass


class ExpertState(Enum):
    """Where one expert stands in the books (its pages follow through the Residency)."""

    RELEASED = "released"  # not counted against the budget; its pages may be gone
    RESIDENT = "resident"  # counted; evictable by policy
    PINNED = "pinned"  # counted; never evicted


class Hold(Enum):
    """Which keys may not be evicted while an access is admitted."""

    ACCESS = "access"  # only the current access's experts: the runtime's case (one layer)
    STEP = "step"  # every expert the current token used so far, until the token ends


class CachePhase(Enum):
    """Open for routing, or closed: a closed cache refuses routing but stays readable."""

    OPEN = "open"
    CLOSED = "closed"


class CacheOrderError(RuntimeError):
    """A call the cache's phase does not allow (e.g. access after close)."""


class Residency(Protocol):
    """Acts on the memory behind one expert; the cache calls it after deciding."""

    def load(self, layer: int, expert: int) -> None: ...

    def release(self, layer: int, expert: int) -> None: ...

    def pin(self, layer: int, expert: int) -> None: ...

    def unpin(self, layer: int, expert: int) -> None:
        """A pinned expert demoted by a budget change: still resident, now evictable."""
        ...


@dataclass(frozen=True)
class CacheStats:
    """A consistent snapshot of the books, taken under the cache lock."""

    capacity_bytes: int
    resident_bytes: int  # resident + pinned
    pinned_bytes: int
    hits: int  # pinned hits included
    pinned_hits: int
    misses: int
    bytes_loaded: int  # by misses
    bytes_prefetched: int  # by warm()
    evictions: int
    steps: int
    resident_per_layer: dict[int, tuple[int, ...]]  # pinned included

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class ExpertCache:
    """A byte-budget cache of experts over (layer, expert) keys with pinned hot experts.

    A token step ends when end_step() is called, or implicitly when routing comes back to a
    layer at or before the previous one (each forward pass visits MoE layers in order), so
    aging policies see tokens even when the caller never says where one ends.
    """

    def __init__(
        self,
        expert_bytes: Mapping[int, int],
        n_experts: int,
        capacity_bytes: int,
        pinned: Mapping[int, Iterable[int]] | None = None,
        policy: str | Policy = DEFAULT_POLICY,
        residency: Residency | None = None,
        hold: Hold = Hold.ACCESS,
    ) -> None:
        if n_experts <= 0:
            raise ValueError(f"n_experts must be positive, got {n_experts}")
        bad = {layer: b for layer, b in expert_bytes.items() if b <= 0}
        if bad:
            raise ValueError(f"expert sizes must be positive, got {bad}")
        self._sizes = dict(expert_bytes)
        self.n_experts = n_experts
        self.capacity_bytes = int(capacity_bytes)
        self._policy = make_policy(policy) if isinstance(policy, str) else policy
        self._residency = residency
        self._hold = hold
        self._watchers: list[Callable[[int, int, bool], None]] = []
        self._lock = threading.RLock()
        self._phase = CachePhase.OPEN
        self._states: dict[Key, ExpertState] = {}
        self._by_layer: dict[int, set[int]] = {layer: set() for layer in self._sizes}
        self._pinned: set[Key] = set()
        for layer, experts in (pinned or {}).items():
            for e in experts:
                self._pinned.add(self._key(layer, e))
        self.pinned_bytes = sum(self._sizes[k[0]] for k in self._pinned)
        if self.pinned_bytes > self.capacity_bytes:
            raise BudgetError(
                f"pinned experts need {self.pinned_bytes:,} bytes ({len(self._pinned)} experts) "
                f"but the expert capacity is {self.capacity_bytes:,} bytes"
            )
        for key in self._pinned:
            self._set(key, ExpertState.PINNED)
        self._used = self.pinned_bytes
        self._held: set[Key] = set()
        self._last_layer: int | None = None
        self._hits = self._misses = self._loaded = self._prefetched = self._evictions = 0
        self._pinned_hits = 0
        self._steps = 0

    # --- helpers -------------------------------------------------------------------------------
    def _key(self, layer: int, expert: int) -> Key:
        if layer not in self._sizes:
            raise ValueError(f"layer {layer} has no routed experts (known: {sorted(self._sizes)})")
        if not 0 <= expert < self.n_experts:
            raise ValueError(f"layer {layer}: expert {expert} outside 0..{self.n_experts - 1}")
        return (int(layer), int(expert))

    def _set(self, key: Key, state: ExpertState) -> None:
        if state is ExpertState.RELEASED:
            self._states.pop(key, None)
            self._by_layer[key[0]].discard(key[1])
        else:
            self._states[key] = state
            self._by_layer[key[0]].add(key[1])
        for watcher in self._watchers:
            watcher(key[0], key[1], state is not ExpertState.RELEASED)

    def watch(self, watcher: Callable[[int, int, bool], None]) -> None:
        """Call `watcher(layer, expert, counted)` now for every counted expert and then on
        every change of the books (a mirror of residency kept outside Python, e.g. the C
        routing tap's bitmap, stays exact this way)."""
        with self._lock:
            for layer, expert in list(self._states):
                watcher(layer, expert, True)
            self._watchers.append(watcher)

    def _open(self, what: str) -> None:
        if self._phase is not CachePhase.OPEN:
            raise CacheOrderError(f"{what}() called on a closed expert cache")

    def _evict(self, key: Key) -> None:
        self._policy.on_remove(key)
        self._set(key, ExpertState.RELEASED)
        self._used -= self._sizes[key[0]]
        self._evictions += 1
        if self._residency is not None:
            self._residency.release(*key)

    # --- the routing path ----------------------------------------------------------------------
    def access(self, layer: int, experts: Sequence[int]) -> None:
        """Record that `layer` routes to `experts` now: count, evict by policy, admit."""
        with self._lock:
            self._open("access")
            if self._last_layer is not None and layer <= self._last_layer:
                self._end_step()
            self._last_layer = layer
            group = list(dict.fromkeys(self._key(layer, e) for e in experts))
            keys = [k for k in group if k not in self._pinned]
            new = [k for k in keys if k not in self._states]
            need = self._sizes[layer] * len(new)
            protect = self._held | set(keys) if self._hold is Hold.STEP else set(keys)
            # What stays even if every evictable expert goes: refuse before changing anything.
            floor = self.pinned_bytes + sum(self._sizes[k[0]] for k in protect if k in self._states)
            if floor + need > self.capacity_bytes:
                raise BudgetError(
                    f"layer {layer}: {len(keys)} experts in use need more than the expert "
                    f"capacity of {self.capacity_bytes:,} bytes "
                    f"(pinned {self.pinned_bytes:,} bytes)"
                )
            while self._used + need > self.capacity_bytes:
                self._evict(self._policy.victim(protect))
            for k in keys:
                if k in self._states:
                    self._policy.on_access(k)
                else:
                    self._policy.on_insert(k)
                    self._set(k, ExpertState.RESIDENT)
                    self._used += self._sizes[layer]
                    if self._residency is not None:
                        self._residency.load(*k)
            self._hits += len(group) - len(new)
            self._pinned_hits += len(group) - len(keys)
            self._misses += len(new)
            self._loaded += need
            if self._hold is Hold.STEP:
                self._held.update(keys)

    def hit(self, layer: int, experts: Sequence[int]) -> None:
        """`access` for experts known to be resident (the C tap's logged hits, replayed):
        the same counts and policy updates without the admission work. Falls back to
        `access` if one is not resident after all."""
        with self._lock:
            keys = [(layer, e) for e in dict.fromkeys(experts)]
            states = self._states
            for key in keys:
                if key not in states:
                    self.access(layer, experts)
                    return
            self._open("hit")
            if self._last_layer is not None and layer <= self._last_layer:
                self._end_step()
            self._last_layer = layer
            on_access, pinned = self._policy.on_access, self._pinned
            self._hits += len(keys)
            for key in keys:
                if key in pinned:
                    self._pinned_hits += 1
                else:
                    on_access(key)
            if self._hold is Hold.STEP:
                self._held.update(k for k in keys if k not in pinned)

    def _end_step(self) -> None:
        self._policy.on_step()
        self._held.clear()
        self._last_layer = None
        self._steps += 1

    def end_step(self) -> None:
        """A token finished: aging policies advance, step-held experts become evictable."""
        with self._lock:
            self._open("end_step")
            self._end_step()

    # --- lifecycle -----------------------------------------------------------------------------
    def warm(self, prefetch: Iterable[tuple[int, int]] = ()) -> int:
        """Make memory match the books: release unpinned, pin pinned, then prefetch in order.

        `prefetch` lists (layer, expert) keys, most wanted first (e.g. by usage frequency);
        they are admitted while they fit, without evicting. Their pages are not released
        first (llama.cpp may have read them at load). Returns the number prefetched.
        """
        with self._lock:
            self._open("warm")
            self._release_unpinned()
            room = self.capacity_bytes - self._used
            admit: dict[Key, None] = {}
            for layer, expert in prefetch:
                key = self._key(layer, expert)
                if key in self._pinned or key in admit:
                    continue
                if self._sizes[layer] > room:
                    break
                room -= self._sizes[layer]
                admit[key] = None
            self._release_pages(keep=admit.keys())
            if self._residency is not None:
                for key in sorted(self._pinned):
                    self._residency.pin(*key)
            for key in admit:
                size = self._sizes[key[0]]
                self._policy.on_insert(key)
                self._set(key, ExpertState.RESIDENT)
                self._used += size
                self._prefetched += size
                if self._residency is not None:
                    self._residency.load(*key)
            return len(admit)

    def _release_unpinned(self) -> int:
        """The books' part of release_all_unpinned: how many were resident."""
        resident = [k for k, s in self._states.items() if s is ExpertState.RESIDENT]
        for key in resident:
            self._policy.on_remove(key)
            self._set(key, ExpertState.RELEASED)
            self._used -= self._sizes[key[0]]
        self._held.clear()
        return len(resident)

    def _release_pages(self, keep: Collection[Key] = ()) -> None:
        """Tell the Residency to release every unpinned expert not in `keep`."""
        if self._residency is None:
            return
        for layer in sorted(self._sizes):
            for e in range(self.n_experts):
                if (layer, e) not in self._pinned and (layer, e) not in keep:
                    self._residency.release(layer, e)

    def release_all_unpinned(self) -> int:
        """Release every unpinned expert; returns how many the books had resident.

        The Residency is told about every unpinned expert, not only those the books hold:
        at start-up llama.cpp may have read the whole file in, and memory must match the books.
        """
        with self._lock:
            self._open("release_all_unpinned")
            released = self._release_unpinned()
            self._release_pages()
            return released

    def resize(self, capacity_bytes: int, pinned: Mapping[int, Iterable[int]]) -> int:
        """A new budget between steps: experts no longer pinned become ordinary residents (the
        policy ranks them from now), newly pinned ones are pinned, then the coldest residents
        are released until the books fit `capacity_bytes`. Experts held by the current step
        (Hold.STEP) are never released. Returns how many were released.

        BudgetError if the new pinned set alone does not fit (the caller sizes it)."""
        with self._lock:
            self._open("resize")
            keys = {self._key(layer, e) for layer, experts in pinned.items() for e in experts}
            need = sum(self._sizes[k[0]] for k in keys)
            if need > capacity_bytes:
                raise BudgetError(f"pinned experts need {need:,} bytes but the expert capacity "
                                  f"is {capacity_bytes:,} bytes")
            for key in sorted(self._pinned - keys):  # demoted: resident, evictable
                self._set(key, ExpertState.RESIDENT)
                self._policy.on_insert(key)
                if self._residency is not None:
                    self._residency.unpin(*key)
            for key in sorted(keys - self._pinned):  # promoted: counted, locked
                if key in self._states:
                    self._policy.on_remove(key)
                else:
                    self._used += self._sizes[key[0]]
                self._set(key, ExpertState.PINNED)
                if self._residency is not None:
                    self._residency.pin(*key)
            self._pinned = keys
            self.pinned_bytes = need
            self.capacity_bytes = int(capacity_bytes)
            released = 0
            while self._used > self.capacity_bytes:
                try:
                    victim = self._policy.victim(self._held | self._pinned)
                except LookupError:  # the rest is held by this step: it goes at the next access
                    break
                self._evict(victim)
                released += 1
            return released

    def close(self) -> None:
        """No more routing; the books stay readable. Memory is the Residency owner's to free."""
        with self._lock:
            self._phase = CachePhase.CLOSED

    @property
    def phase(self) -> CachePhase:
        return self._phase

    @property
    def resident_bytes(self) -> int:
        """The running total (pinned included), without building a stats snapshot."""
        return self._used

    # --- reading -------------------------------------------------------------------------------
    def state(self, layer: int, expert: int) -> ExpertState:
        key = self._key(layer, expert)
        return self._states.get(key, ExpertState.RELEASED)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                capacity_bytes=self.capacity_bytes,
                resident_bytes=self._used,
                pinned_bytes=self.pinned_bytes,
                hits=self._hits,
                pinned_hits=self._pinned_hits,
                misses=self._misses,
                bytes_loaded=self._loaded,
                bytes_prefetched=self._prefetched,
                evictions=self._evictions,
                steps=self._steps,
                resident_per_layer={
                    layer: tuple(sorted(experts)) for layer, experts in self._by_layer.items()
                },
            )
